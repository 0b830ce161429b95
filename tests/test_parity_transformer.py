"""torch/TorchRec parity for LayerNorm, MultiheadAttention, TransformerEncoderLayer and
InteractionTransformerArch (torch in eval mode), and the finding that TorchRec's
InteractionTransformerArch attends across the batch (skipped unless requirements-parity.txt is
installed)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformerdlrm = pytest.importorskip("torchrec.models.experimental.transformerdlrm")

import refimpl  # noqa: E402
from refimpl.layers import transformer  # noqa: E402
from refimpl.tools.check import run_check  # noqa: E402
from refimpl.tools.check.cases import transformer as cases  # noqa: E402
from refimpl.tools.parity import load_from_torch  # noqa: E402

pytestmark = pytest.mark.parity

PARITY_CHECKS = [c for c in cases.checks() if c.witness == "parity"]


@pytest.mark.parametrize("check", PARITY_CHECKS, ids=lambda c: f"{c.layer} {c.config}")
def test_matches_torch(check):
    outcome = run_check(check)
    assert outcome.status == "pass", outcome.note or outcome.error


def _torchrec_arch(features, dim, nhead, layers):
    torch.manual_seed(0)  # torch's own initialisation, made repeatable
    with warnings.catch_warnings():  # its hint that batch_first=True would be faster
        warnings.simplefilter("ignore", UserWarning)
        return transformerdlrm.InteractionTransformerArch(features, dim, nhead, layers)


def test_torchrec_reads_the_batch_as_the_sequence():
    module = _torchrec_arch(3, 8, 2, 1)
    layer = module.interarch_TE.layers[0]
    assert layer.self_attn.batch_first is False and layer.norm_first is False


def test_torchrec_transformer_arch_leaks_across_the_batch_in_eval_mode(rng):
    # The finding: in eval mode (no dropout), sample 0's output moves when sample 1's dense
    # input moves by 1.0. refimpl's attend_across="batch" reproduces the leak number for number;
    # the per-sample default has none.
    module = _torchrec_arch(3, 8, 2, 2).double().eval()
    dense, sparse = rng.standard_normal((4, 8)), rng.standard_normal((4, 3, 8))
    changed = dense.copy()
    changed[1] += 1.0
    with torch.no_grad():
        before = module(torch.tensor(dense), torch.tensor(sparse)).numpy()
        after = module(torch.tensor(changed), torch.tensor(sparse)).numpy()
    leak = np.abs(after[0] - before[0]).max()
    assert leak > 0.01  # 0.06 here; per-sample attention moves by exactly 0
    ours = refimpl.InteractionTransformerArch(3, 8, 2, 2, attend_across="batch")
    load_from_torch(ours, module)
    np.testing.assert_allclose(
        ours(changed, sparse) - ours(dense, sparse), after - before, atol=1e-12
    )
    per_sample = refimpl.InteractionTransformerArch(3, 8, 2, 2)
    load_from_torch(per_sample, module)
    np.testing.assert_array_equal(per_sample(changed, sparse)[0], per_sample(dense, sparse)[0])


def test_torchrec_output_width_is_not_its_docstring_s(rng):
    features, dim = 3, 8
    module = _torchrec_arch(features, dim, 2, 1).double().eval()
    with torch.no_grad():
        out = module(
            torch.tensor(rng.standard_normal((5, dim))),
            torch.tensor(rng.standard_normal((5, features, dim))),
        )
    promised = dim + features + features * (features - 1) // 2  # "B X (D + F + F choose 2)"
    assert "B X (D + F + F choose 2)" in transformerdlrm.InteractionTransformerArch.forward.__doc__
    assert tuple(out.shape) == (5, (features + 1) * dim) and out.shape[1] != promised


def _softmax_backward_without_centering(probs, d_probs):
    return probs * d_probs


def _scores_backward_without_scale(d_scores, q, k, scale):
    return d_scores @ k, d_scores.swapaxes(-1, -2) @ q


def _layer_norm_backward_without_mean_term(params, d_out, cache):
    normalized, inv_std = cache
    d_normalized = d_out * params["weight"]
    d_spread = (d_normalized * normalized).mean(axis=-1, keepdims=True)
    return inv_std * (d_normalized - normalized * d_spread), {
        "weight": transformer.sum_tokens(d_out * normalized),
        "bias": transformer.sum_tokens(d_out),
    }


@pytest.mark.parametrize(
    ("name", "mutant"),
    [
        ("softmax_backward", _softmax_backward_without_centering),
        ("scores_backward", _scores_backward_without_scale),
        ("layer_norm_backward", _layer_norm_backward_without_mean_term),
    ],
)
def test_each_broken_step_fails_parity(monkeypatch, rng, name, mutant):
    layer = refimpl.TransformerEncoderLayer(8, 2, 16, seed=0)
    module = cases.torch_module_like(layer)
    inputs = (rng.standard_normal((3, 2, 8)),)
    assert max(cases.parity_errors(layer, module, inputs).values()) < 1e-10
    monkeypatch.setattr(transformer, name, mutant)
    errors = cases.parity_errors(layer, module, inputs)
    assert errors["input"] > 1e-3 and errors["out"] < 1e-10, errors
