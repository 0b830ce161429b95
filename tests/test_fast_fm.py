"""The fast factorization machine (refimpl.fast.fm) against the textbook form it claims to
compute: flattening, forward and backward, in both dtypes, with many blocks on threads."""

import numpy as np
import pytest

from refimpl.fast import fm as fast
from refimpl.fast import threads
from refimpl.layers import fm as textbook

TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [0, 1, 7])
def test_fast_fm_equals_the_textbook_form(monkeypatch, rng, dtype, batch):
    monkeypatch.setattr(threads, "BLOCK_BYTES", 64)  # a block per row or two, over threads
    embeddings = [
        rng.standard_normal((batch, 4)).astype(dtype),
        rng.standard_normal((batch, 3, 4)).astype(dtype),
    ]
    out, flat_fast, total = fast.fm_scalar_pairs_forward_fast(embeddings)
    flat = textbook.flatten_embeddings(embeddings)
    out_textbook, cache_textbook = textbook.fm_scalar_pairs_forward(flat)
    np.testing.assert_array_equal(flat_fast, flat)
    np.testing.assert_allclose(out, out_textbook, rtol=TOL[dtype], atol=TOL[dtype])
    upstream = rng.standard_normal((batch, 1)).astype(dtype)
    d_flat = fast.fm_scalar_pairs_backward_fast(upstream, flat_fast, total)
    expected = textbook.fm_scalar_pairs_backward(upstream, cache_textbook)
    assert out.dtype == d_flat.dtype == dtype and d_flat.shape == flat.shape
    np.testing.assert_allclose(d_flat, expected, rtol=TOL[dtype], atol=TOL[dtype])
