"""TorchRec parity for DLRM_Transformer and SimpleDeepFMNN (float64): logits and every gradient,
TorchRec's state_dict loaded unchanged, step-by-step training; and two findings about TorchRec's
models, each a test that fails if TorchRec changes.

Skipped unless PyTorch and TorchRec are installed (requirements-parity.txt).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchrec")

from refimpl import DLRM_Transformer, SimpleDeepFMNN  # noqa: E402
from refimpl.tools.check import PARITY_TOL  # noqa: E402
from refimpl.tools.check.cases import dlrm_transformer, simple_deepfm  # noqa: E402
from refimpl.tools.check.cases.embedding import build_collection  # noqa: E402
from refimpl.tools.check.cases.models import draw_model_inputs  # noqa: E402
from refimpl.tools.check.cases.training import TRAINING_TOL  # noqa: E402
from refimpl.tools.parity import (  # noqa: E402
    compare_sparse_with_torch,
    torch_keyed_jagged,
    torch_model_like,
)

pytestmark = pytest.mark.parity


def worst(errors):
    key = max(errors, key=errors.get)
    return errors[key], key


@pytest.mark.parametrize("mode", ["features", "batch"])
def test_transformer_model_matches_torchrec(mode):
    model, inputs = dlrm_transformer.parity_builder("weighted sum", mode, 5)(
        np.random.default_rng(1)
    )
    error, where = worst(dlrm_transformer.parity_errors(model, inputs))
    assert error < PARITY_TOL, (error, where)


@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_deepfm_model_matches_torchrec(output):
    model, inputs = simple_deepfm.builder("mean t1, sum t2", 5, False, output=output)(
        np.random.default_rng(1)
    )
    module = torch_model_like(model)
    assert isinstance(module.over_arch.model[1], torch.nn.Sigmoid) == (output == "probabilities")
    error, where = worst(compare_sparse_with_torch(model, module, inputs, seed=2))
    assert error < PARITY_TOL, (error, where)


def test_torchrec_state_dicts_load_unchanged():
    rng = np.random.default_rng(2)
    for model in (
        dlrm_transformer.build_transformer_model("sum, t1 shared by f1 f3", "batch",
                                                 dim_feedforward=2048, seed=rng),
        simple_deepfm.build_deepfm_model("weighted sum", seed=rng),
    ):  # fmt: skip
        module = torch_model_like(model)
        state = module.state_dict()
        assert list(state) == list(model.params)  # TorchRec's keys, in TorchRec's order
        model.load_state_dict({k: v.numpy() for k, v in state.items()})
        assert all(np.array_equal(model.params[k], v.double().numpy()) for k, v in state.items())


def test_torchrec_deepfm_returns_probabilities_and_its_wrapper_applies_a_second_sigmoid():
    from torchrec.distributed.test_utils.model_input import ModelInput
    from torchrec.models.deepfm import SimpleDeepFMNNWrapper

    model = simple_deepfm.build_deepfm_model("sum, t1 shared by f1 f3", seed=0)
    reference = torch_model_like(simple_deepfm.build_deepfm_model(
        "sum, t1 shared by f1 f3", output="probabilities", seed=0
    ))  # fmt: skip
    wrapper = SimpleDeepFMNNWrapper(5, reference.sparse_arch.embedding_bag_collection, 6, 3)
    wrapper.load_state_dict(reference.state_dict())
    wrapper.double()
    model.load_state_dict({k: v.numpy() for k, v in wrapper.state_dict().items()})
    dense, features = draw_model_inputs(np.random.default_rng(3), model, 6, False)
    labels = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    batch = ModelInput(
        torch.tensor(dense), torch_keyed_jagged(features), None, torch.tensor(labels)
    )
    wrapper.train()
    loss, prediction = wrapper(batch)
    logits = model(dense, features)[:, 0]  # (B,)
    sigmoid = 1 / (1 + np.exp(-logits))
    # TorchRec's model returns σ(z) (its over arch ends in nn.Sigmoid) …
    np.testing.assert_allclose(prediction.detach().numpy()[:, 0], sigmoid, rtol=1e-12)
    # … and its wrapper scores it with the logits loss: σ is applied twice.
    twice = np.mean(np.logaddexp(0, sigmoid) - labels * sigmoid)  # BCE-with-logits of σ(z)
    once = np.mean(np.logaddexp(0, logits) - labels * logits)  # of z: the intended loss
    assert loss.item() == pytest.approx(twice, rel=1e-12)
    assert abs(loss.item() - once) > 1e-3
    # A perfect model would still score log(1 + e⁻¹) ≈ 0.31 on a positive, log 2 on a negative.
    assert np.all(np.logaddexp(0, sigmoid) - labels * sigmoid > np.log1p(np.exp(-1.0)))


def test_torchrec_transformer_model_leaks_across_the_batch_and_refimpl_reproduces_it(rng):
    model = DLRM_Transformer(build_collection("sum, t1 shared by f1 f3", seed=rng), 5, [6, 4],
                             [7, 1], nhead=2, ntransformer_layers=1, attend_across="batch",
                             seed=rng)  # fmt: skip
    module = torch_model_like(model).double()  # TorchRec's model as it ships, in eval mode
    model.load_state_dict({k: v.numpy() for k, v in module.state_dict().items()})
    dense, features = draw_model_inputs(rng, model, 4, away_from_kinks=False)
    moved = dense.copy()
    moved[1] += 1.0  # sample 1 only
    with torch.no_grad():
        theirs = [
            module(torch.tensor(x), torch_keyed_jagged(features)).numpy() for x in (dense, moved)
        ]
    leak = np.abs(theirs[1] - theirs[0])[[0, 2, 3]].max()  # samples whose input did not move
    assert leak > 1e-4  # TorchRec: the other samples' logits move
    for x, logits in zip((dense, moved), theirs, strict=True):  # refimpl, number for number
        np.testing.assert_allclose(model(x, features), logits, rtol=1e-10)


@pytest.mark.slow  # about 6 s under load
@pytest.mark.parametrize("mode", ["features", "batch"])
def test_transformer_model_trains_like_torchrec(mode):
    error, where = worst(dlrm_transformer.training_errors(mode, "adam", "rowwise-adagrad"))
    assert error < TRAINING_TOL, (error, where)


@pytest.mark.slow  # about 1.5 s
@pytest.mark.parametrize(("dense", "embedding"), [("adam", "rowwise-adagrad"), ("sgd", "sgd")])
def test_deepfm_model_trains_like_torchrec(dense, embedding):
    error, where = worst(simple_deepfm.training_errors(dense, embedding))
    assert error < TRAINING_TOL, (error, where)


def test_a_wrong_backward_fails_training_parity(monkeypatch):
    from refimpl.layers import sequential

    def halved(self, d_out, cache):  # a factor lost in the dense arch's ReLU
        d_input, d_params = original(self, d_out, cache)
        return 0.5 * d_input, d_params

    original = sequential.ReLU.backward
    monkeypatch.setattr(sequential.ReLU, "backward", halved)
    error, where = worst(simple_deepfm.training_errors("sgd", "sgd", steps=3))
    assert error > 1e-3 and where != "logits step 1"  # step 1's logits come before any update


def test_refimpl_refuses_what_torchrec_cannot_compare():
    with pytest.raises(TypeError, match="feed-forward width of 2048"):
        torch_model_like(dlrm_transformer.build_transformer_model("mean t1, sum t2", "batch"))
    with pytest.raises(TypeError, match="no TorchRec counterpart"):
        torch_model_like(SimpleDeepFMNN(5, build_collection("mean t1, sum t2"), 6, 3,
                                        fm_pairs="features"))  # fmt: skip
