"""An empty batch, B = 0: each layer does what TorchRec does with it.

TorchRec (1.8.0) returns an empty output for InteractionArch, every cross network and every
MLP; its InteractionDCNArch and InteractionProjectionArch fail, their ``reshape(B, -1)``
having nothing to infer -1 from. refimpl returns the empty outputs and gradients, and refuses
the two with an error that says why.
"""

import numpy as np
import pytest

import refimpl

D, F = 4, 2
N = (F + 1) * D  # 12

LAYERS = [
    ("InteractionArch", lambda: refimpl.InteractionArch(F), D + F * (F + 1) // 2),
    (
        "InteractionArch diag tril",
        lambda: refimpl.InteractionArch(F, self_interaction=True, pair_order="tril"),
        D + 6,
    ),
    ("InteractionArch F=0", lambda: refimpl.InteractionArch(0), D),
    ("CrossNet", lambda: refimpl.CrossNet(N, 2), N),
    ("LowRankCrossNet", lambda: refimpl.LowRankCrossNet(N, 2, low_rank=2), N),
    ("VectorCrossNet", lambda: refimpl.VectorCrossNet(N, 2), N),
    ("mixture K=3", lambda: refimpl.LowRankMixtureCrossNet(N, 2, num_experts=3, low_rank=2), N),
    ("mixture K=1", lambda: refimpl.LowRankMixtureCrossNet(N, 2), N),
    ("Linear", lambda: refimpl.Linear(N, 3), 3),
    ("MLP", lambda: refimpl.MLP(N, [3, 2]), 2),
    ("DenseArch", lambda: refimpl.DenseArch(N, [3, 2]), 2),
    ("OverArch", lambda: refimpl.OverArch(N, [3, 1]), 1),
    ("InteractionDCNArch F=0", lambda: refimpl.InteractionDCNArch(0, refimpl.CrossNet(D, 1)), D),
]


def _empty_inputs(layer):
    if layer.input_names == ("dense", "sparse"):
        return np.zeros((0, D)), np.zeros((0, layer.num_sparse_features, D))
    return (np.zeros((0, layer.in_features)),)


@pytest.mark.parametrize(("name", "make", "width"), LAYERS, ids=[n for n, _, _ in LAYERS])
def test_an_empty_batch_gives_empty_outputs_and_gradients(name, make, width):
    layer = make()
    inputs = _empty_inputs(layer)
    out, cache = layer.forward(*inputs)
    assert out.shape == (0, width)
    *d_inputs, d_params = layer.backward(np.zeros_like(out), cache)
    assert [d.shape for d in d_inputs] == [x.shape for x in inputs]
    assert list(d_params) == list(layer.params)
    for key, value in layer.params.items():  # no sample: every parameter gradient is 0
        assert d_params[key].shape == value.shape and not d_params[key].any()
    assert layer.kink_distance(*inputs) == np.inf


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("InteractionDCNArch", lambda: refimpl.InteractionDCNArch(F, refimpl.CrossNet(N, 1))),
        (
            "InteractionProjectionArch",
            lambda: refimpl.InteractionProjectionArch(
                F, refimpl.DenseArch(N, [8]), refimpl.DenseArch(N, [12])
            ),
        ),
    ],
)
def test_the_two_layers_torchrec_cannot_run_empty_are_refused(name, make):
    with pytest.raises(ValueError, match=rf"dense: expected B >= 1 samples, got B = 0 .*{name}"):
        make().forward(np.zeros((0, D)), np.zeros((0, F, D)))
