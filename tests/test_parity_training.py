"""Training step by step against TorchRec, in float64: every model, every optimizer pair.

Each case trains a model with refimpl's optimizers and TorchRec's twin with torch.optim /
torchrec.optim (``RowWiseAdagrad`` through ``torchrec.optim.keyed.KeyedOptimizerWrapper``; the
fused FBGEMM path keeps float32 tables and cannot be compared in float64) on the same batches;
the logits of every step and every parameter after the last step agree to 1e-9 relative. A
checkpoint written by ``python -m refimpl train`` loads into TorchRec's model.

Skipped unless PyTorch and TorchRec are installed (requirements-parity.txt).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchrec")

from refimpl.data.synthetic import SyntheticCriteo  # noqa: E402
from refimpl.tools.check.cases.models import MODELS, build_model  # noqa: E402
from refimpl.tools.check.cases.training import (  # noqa: E402
    LEARNING_RATES,
    STEPS,
    TRAINING_TOL,
    training_batches,
)
from refimpl.tools.parity import (  # noqa: E402
    compare_training_with_torch,
    keep_table_dtype,
    torch_keyed_jagged,
    torch_model_like,
)
from refimpl.train import RowWiseAdagrad, TrainConfig, Trainer, loop  # noqa: E402

pytestmark = pytest.mark.parity

PAIRS = [(d, e) for d in ("sgd", "adagrad", "adam") for e in ("sgd", "rowwise-adagrad")]


def worst(errors):
    key = max(errors, key=errors.get)
    return errors[key], key


def train_both(model, batches, dense, embedding, **lrs):
    rates = {"dense_lr": LEARNING_RATES[dense], "embedding_lr": LEARNING_RATES[embedding]} | lrs
    return compare_training_with_torch(
        model, batches, dense, rates["dense_lr"], embedding, rates["embedding_lr"]
    )


@pytest.mark.slow  # 24 cases of 50 steps, about 10 s
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize(("dense", "embedding"), PAIRS)
def test_fifty_steps_equal_torchrec(kind, dense, embedding):
    rng = np.random.default_rng([len(kind), len(dense), len(embedding)])
    model = build_model(kind, "sum, t1 shared by f1 f3", seed=rng)
    batches = training_batches(rng, model, STEPS)
    error, where = worst(train_both(model, batches, dense, embedding))
    assert error < TRAINING_TOL, (error, where)


@pytest.mark.parametrize(
    ("kind", "collection", "sizes", "dense", "embedding"),
    [
        ("DLRM", "mean t1, sum t2", (1, 9), "adam", "rowwise-adagrad"),  # B = 1 batches too
        ("DLRM_DCN", "weighted sum", (2, 6), "adagrad", "sgd"),
        ("DLRM_Projection", "one table per feature, D=3", (3, 7), "sgd", "rowwise-adagrad"),
    ],
)
def test_odd_shapes_and_batches_of_changing_size(kind, collection, sizes, dense, embedding):
    rng = np.random.default_rng(7)
    if kind == "DLRM_Projection":  # D = 3: branch outputs 6 and 9 make F1 = 2, F2 = 3
        from refimpl import DLRM_Projection
        from refimpl.tools.check.cases.embedding import build_collection

        ebc = build_collection(collection, seed=rng)
        model = DLRM_Projection(ebc, 5, [6, 3], [7, 1], [6], [4, 9], seed=rng)
    else:
        model = build_model(kind, collection, seed=rng)
    batches = training_batches(rng, model, 20, sizes)
    if kind == "DLRM_DCN":  # the other form of a batch: (dense, features, labels), float32 dense
        batches = [(b.dense.astype(np.float32), b.sparse(), b.labels[:, None]) for b in batches]
    error, where = worst(train_both(model, batches, dense, embedding))
    assert error < TRAINING_TOL, (error, where)


def test_a_wrong_optimizer_rule_fails(monkeypatch):
    class LargestRowWiseAdagrad(RowWiseAdagrad):  # the row's largest g², not its mean
        def _update(self, param, grad, state, step):
            total = state["sum"] + (grad**2).max(axis=1, keepdims=True)  # (rows, 1)
            return param + -self.lr * grad / (np.sqrt(total) + self.eps), {"sum": total}

    monkeypatch.setitem(loop.EMBEDDING_OPTIMIZERS, "rowwise-adagrad", LargestRowWiseAdagrad)
    rng = np.random.default_rng(3)
    model = build_model("DLRM", "sum, t1 shared by f1 f3", seed=rng)
    error, _ = worst(train_both(model, training_batches(rng, model, 5), "sgd", "rowwise-adagrad"))
    assert error > 1e-3


def test_a_wrong_backward_fails(monkeypatch):
    from refimpl.layers import loss

    def halved(d_loss, cache):  # a factor lost in the loss's backward
        return 0.5 * original(d_loss, cache)

    original = loss.bce_with_logits_backward
    monkeypatch.setattr(loss, "bce_with_logits_backward", halved)
    rng = np.random.default_rng(4)
    model = build_model("DLRM_DCN", "sum, t1 shared by f1 f3", seed=rng)
    error, where = worst(train_both(model, training_batches(rng, model, 3), "sgd", "sgd"))
    assert error > 1e-3 and where != "logits step 1"  # step 1's logits come before any update


def test_a_checkpoint_loads_into_torchrec(tmp_path):
    data = SyntheticCriteo(
        [20, 30, 25], num_train=256, num_validation=64, num_test=64, dtype="float32"
    )
    config = TrainConfig(
        model="dcn", epochs=1, batch_size=64, embedding_dim=4, dense_arch_layer_sizes=[8, 4],
        over_arch_layer_sizes=[8, 1], dcn_num_layers=2, dcn_low_rank_dim=3,
    )  # fmt: skip
    trainer = Trainer(config, tmp_path, source=data, log=lambda *_: None, plot=False)
    trainer.run(progress=False)

    # What a user does: the model's entries of the .npz, by TorchRec's names, into TorchRec.
    checkpoint = np.load(tmp_path / "checkpoint.npz")
    state = {
        key: torch.from_numpy(checkpoint[key])
        for key in checkpoint.files
        if not key.startswith(("optim.", "meta."))
    }
    module = torch_model_like(trainer.model)  # float32, as the run
    module.load_state_dict(state)  # strict: every key, every shape
    keep_table_dtype(module.sparse_arch.embedding_bag_collection)
    batch = next(data.batches("test", 64))
    theirs = module(torch.from_numpy(batch.dense), torch_keyed_jagged(batch.sparse()))
    ours = trainer.model(batch.dense, batch.sparse())
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert any(key.startswith("optim.embedding.") for key in checkpoint.files)


def _tiny_run(out, model="dlrm", dtype="float64"):
    data = SyntheticCriteo(
        [20, 30, 25], num_train=640, num_validation=128, num_test=128, seed=2, dtype=dtype
    )
    config = TrainConfig(
        model=model, epochs=2, batch_size=64, embedding_dim=4, dense_arch_layer_sizes=[8, 4],
        over_arch_layer_sizes=[8, 1], dcn_num_layers=1, dcn_low_rank_dim=2, dtype=dtype,
        dense_lr=0.01, embedding_lr=0.1,
    )  # fmt: skip
    Trainer(config, out, source=data, log=lambda *_: None, plot=False).run(progress=False)
    return data


@pytest.mark.slow  # a whole (tiny) run, then its replay
@pytest.mark.parametrize("model", ["baseline", "dcn"])
def test_a_whole_run_replayed_in_torchrec_agrees(tmp_path, model):
    from refimpl.tools.parity import replay_run_in_torchrec

    data = _tiny_run(tmp_path, model)
    report = replay_run_in_torchrec(tmp_path, source=data)
    assert report["steps"] == 20 and report["samples"] == 1280 and len(report["epochs"]) == 2
    assert report["agree"], (report["worst_metric"], report["worst_parameter"])
    assert report["worst_metric"] < 1e-12 and report["worst_parameter"] < 1e-12
    assert report["test"]["refimpl"]["auc"] == pytest.approx(report["test"]["torchrec"]["auc"])


def test_the_replay_refuses_a_float32_run(tmp_path, capsys):
    from refimpl.tools.parity import replay_run_in_torchrec
    from refimpl.train.cli import main

    data = _tiny_run(tmp_path / "run", dtype="float32")
    with pytest.raises(TypeError, match="float64 only"):
        replay_run_in_torchrec(tmp_path / "run", source=data)
    assert main(["--torchrec-check", "--out", str(tmp_path / "new")]) == 2  # float32 default
    assert "train with --dtype float64" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow  # a whole (tiny) run, then its replay
def test_a_run_with_a_wrong_backward_disagrees_with_its_replay(tmp_path, monkeypatch):
    from refimpl.layers import loss
    from refimpl.tools.parity import replay_run_in_torchrec

    original = loss.bce_with_logits_backward

    def shifted(d_loss, cache):  # a stray 1e-3 in every logit's gradient (Adam and row-wise
        return original(d_loss, cache) + 1e-3  # Adagrad would not notice a scale factor)

    with monkeypatch.context() as patch:  # the run has the wrong backward, the replay not
        patch.setattr(loss, "bce_with_logits_backward", shifted)
        data = _tiny_run(tmp_path)
    report = replay_run_in_torchrec(tmp_path, source=data)
    assert not report["agree"] and report["worst_parameter"] > 1e-4


@pytest.mark.slow  # a whole (tiny) run, then its replay
def test_the_cli_replays_a_run_in_torchrec(tmp_path, capsys):
    import json

    from refimpl.train.cli import main

    argv = ["--synthetic-tables", "3", "--synthetic-rows", "10", "--synthetic-train", "256"]
    argv += ["--synthetic-eval", "128", "--embedding-dim", "4", "--dense-arch", "8,4"]
    argv += ["--over-arch", "8,1", "--epochs", "1", "--batch-size", "64", "--dtype", "float64"]
    assert main([*argv, "--out", str(tmp_path), "--no-progress", "--torchrec-check"]) == 0
    out = capsys.readouterr().out
    assert "TorchRec replay: 4 steps on the same batches" in out and "they agree" in out
    report = json.loads((tmp_path / "torchrec_check.json").read_text())
    assert report["agree"] and report["test"]["torchrec"]["auc"] > 0.5
