"""TorchRec's factorization machine, fast: :func:`refimpl.layers.fm.fm_scalar_pairs_forward`
and :func:`refimpl.layers.fm.fm_scalar_pairs_backward`, with the flattening in front.

The FM is a few passes over the (B, N) flattened input — copy it in, sum it, sum its squares;
backward ``d · (s − x)`` — so its time is memory traffic. Here each pass runs on blocks of rows,
on threads, into arrays allocated once: the squares are summed by ``np.vecdot`` (no (B, N)
temporary), and the gradient is written in place into its one output array.
"""

from __future__ import annotations

import numpy as np

from refimpl.fast.threads import on_threads, row_blocks


def fm_scalar_pairs_forward_fast(embeddings):
    """Equals :func:`refimpl.layers.fm.flatten_embeddings` followed by
    :func:`refimpl.layers.fm.fm_scalar_pairs_forward`: returns ``(out, x, s)``, the output
    (B, 1) and what its cache holds, the flattened input x (B, N) and its sum s (B, 1)."""
    batch = embeddings[0].shape[0]
    pieces = [
        e.reshape(batch, -1) if batch else e.reshape(0, int(np.prod(e.shape[1:])))
        for e in embeddings
    ]
    widths = np.cumsum([0] + [p.shape[1] for p in pieces])
    flat = np.empty((batch, widths[-1]), embeddings[0].dtype)  # x, (B, N)
    total, out = np.empty((batch, 1), flat.dtype), np.empty((batch, 1), flat.dtype)

    def block(rows: slice) -> None:
        for piece, lo, hi in zip(pieces, widths[:-1], widths[1:], strict=True):
            flat[rows, lo:hi] = piece[rows]
        part = flat[rows]
        total[rows, 0] = part.sum(axis=1)  # s
        out[rows, 0] = (total[rows, 0] * total[rows, 0] - np.vecdot(part, part)) / 2

    on_threads(block, row_blocks(*flat.shape, flat.itemsize))
    return out, flat, total


def fm_scalar_pairs_backward_fast(d_out: np.ndarray, flat: np.ndarray, total: np.ndarray):
    """Equals :func:`refimpl.layers.fm.fm_scalar_pairs_backward` with the cache's x (B, N) and
    s (B, 1): ``d · (s − x)``."""
    d_flat = np.empty_like(flat)  # (B, N)

    def block(rows: slice) -> None:
        part = d_flat[rows]
        np.subtract(total[rows], flat[rows], out=part)
        part *= d_out[rows]

    on_threads(block, row_blocks(*flat.shape, flat.itemsize))
    return d_flat
