"""The fast encoder layer (refimpl.fast.transformer) against the textbook form it claims to
compute, in both dtypes, with blocks small enough that several threads share the work."""

import numpy as np
import pytest

from refimpl.fast import threads
from refimpl.fast import transformer as fast
from refimpl.layers import transformer as textbook
from refimpl.layers.transformer import TransformerEncoderLayer

TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("sequences", "length", "width", "heads", "hidden"), [(3, 4, 8, 2, 16), (2, 5, 4, 1, 2048)]
)
def test_fast_encoder_layer_equals_the_textbook_form(
    monkeypatch, rng, dtype, sequences, length, width, heads, hidden
):
    monkeypatch.setattr(threads, "BLOCK_BYTES", 256)  # many blocks, spread over threads
    monkeypatch.setattr(fast, "FF_BLOCK_BYTES", 5 * hidden * np.dtype(dtype).itemsize)  # 5 rows
    layer = TransformerEncoderLayer(width, heads, hidden, batch_first=True, seed=0, dtype=dtype)
    for value in layer.params.values():
        value += (0.3 * rng.standard_normal(value.shape)).astype(dtype)
    params = layer.params
    x = rng.standard_normal((sequences, length, width)).astype(dtype)
    out, cache = fast.encoder_layer_forward_fast(params, x, heads, 1e-5)
    out_textbook, cache_textbook = textbook.encoder_layer_forward(params, x, heads, 1e-5)
    np.testing.assert_allclose(out, out_textbook, rtol=TOL[dtype], atol=TOL[dtype])
    upstream = rng.standard_normal(out.shape).astype(dtype)
    d_x, d_params = fast.encoder_layer_backward_fast(params, upstream, cache)
    d_x_textbook, d_params_textbook = textbook.encoder_layer_backward(
        params, upstream, cache_textbook
    )
    assert d_x.dtype == dtype and all(v.dtype == dtype for v in d_params.values())
    np.testing.assert_allclose(d_x, d_x_textbook, rtol=TOL[dtype], atol=TOL[dtype])
    assert list(d_params) and set(d_params) == set(d_params_textbook)
    for key, value in d_params.items():
        scale = np.abs(d_params_textbook[key]).max()
        np.testing.assert_allclose(
            value, d_params_textbook[key], rtol=TOL[dtype], atol=TOL[dtype] * scale, err_msg=key
        )


def test_blocks_cover_every_row_once():
    blocks = threads.row_blocks(10, 3, 8)
    rows = np.concatenate([np.arange(10)[b] for b in blocks])
    np.testing.assert_array_equal(rows, np.arange(10))
