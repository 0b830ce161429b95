"""The training loop: one step, resumption bit for bit, checkpoints, reports, stopping safely,
and clear errors that lose nothing."""

import itertools
import json
import os
import signal

import numpy as np
import pytest

import refimpl
from refimpl.data.synthetic import SyntheticCriteo
from refimpl.layers.loss import BCEWithLogitsLoss
from refimpl.train import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    build_model,
    build_optimizer,
    load_checkpoint,
    save_checkpoint,
    train_step,
)
from refimpl.train.checkpoint import atomic_write, restore
from refimpl.train.cli import main

TINY = {"embedding_dim": 4, "dense_arch_layer_sizes": [8, 4], "over_arch_layer_sizes": [8, 1]}


def tiny_data(**kw):
    args = {"num_train": 600, "num_validation": 300, "num_test": 300, "seed": 1}
    return SyntheticCriteo([20, 30, 25, 15], pair_strengths=[2.0, 1.5], **(args | kw))


def tiny_config(**kw):
    return TrainConfig(**({"epochs": 2, "batch_size": 64, "dtype": "float64"} | TINY | kw))


def quiet(*_):
    pass


def run(out, config=None, source=None, plot=False, **options):
    source = source or tiny_data()
    trainer = Trainer(config or tiny_config(), out, source=source, log=quiet, plot=plot)
    return trainer.run(progress=False, **options)


def resume(out, source=None, **options):
    trainer = Trainer.resume(out, source=source or tiny_data(), log=quiet, plot=False)
    return trainer.run(progress=False, **options)


def saved(out):
    return load_checkpoint(out / "checkpoint.npz")


def test_the_public_names():
    assert refimpl.optim.RowWiseAdagrad is refimpl.train.RowWiseAdagrad
    assert refimpl.metrics.auc is refimpl.train.auc
    assert refimpl.train.train_step is train_step


def test_the_loss_falls_on_a_small_run(tmp_path):
    config = tiny_config(epochs=4, dense_lr=0.01, embedding_lr=0.1)
    result = run(tmp_path, config, tiny_data(num_train=2000))
    records = result.history.epochs
    assert result.status == "done" and len(records) == 4
    losses = [record["train_loss"] for record in records]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.6 < losses[0]
    assert records[-1]["validation"]["ne"] < 0.95  # better than knowing the click rate only


@pytest.mark.parametrize(
    "model", ["dlrm", "dcn", "projection", "baseline", "transformer", "deepfm"]
)
def test_a_step_updates_every_parameter_group_and_returns_the_logits(model):
    data = tiny_data()
    config = tiny_config(model=model, dcn_num_layers=1, dcn_low_rank_dim=2).resolved()
    net = build_model(config, data)
    before = net.state_dict()
    optimizer = build_optimizer(net, "sgd", 0.1, "sgd", 0.1)
    batch = next(data.batches("train", 32))
    logits = net(batch.dense, batch.sparse())
    result = train_step(net, BCEWithLogitsLoss(), optimizer, batch)
    np.testing.assert_array_equal(result.logits, logits)  # from before the update
    changed = {k for k, v in net.params.items() if not np.array_equal(v, before[k])}
    assert changed == set(before)  # every parameter moved (sgd: exactly by −lr · gradient)


def test_a_nonfinite_loss_changes_nothing():
    data = tiny_data()
    net = build_model(tiny_config().resolved(), data)
    optimizer = build_optimizer(net, "adam", 0.1, "rowwise-adagrad", 0.1)
    batch = next(data.batches("train", 32))
    dense = batch.dense.copy()
    dense[3, 0] = np.inf
    before, state = net.state_dict(), optimizer.state_dict()
    with (
        pytest.raises(NonFiniteLossError, match=r"the loss is (nan|inf)"),
        np.errstate(invalid="ignore"),
    ):
        train_step(net, BCEWithLogitsLoss(), optimizer, batch._replace(dense=dense))
    for key, value in net.params.items():
        np.testing.assert_array_equal(value, before[key])
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_resume_gives_exactly_the_parameters_of_an_uninterrupted_run(tmp_path):
    whole = run(tmp_path / "whole")
    parts = tmp_path / "parts"
    assert run(parts, stop_after=7).status == "paused"  # 10 batches per epoch
    assert saved(parts).meta["position"]["batch"] == 7
    assert resume(parts, stop_after=6).status == "paused"  # across the end of epoch 1
    assert saved(parts).meta["position"]["epoch"] == 1
    assert resume(parts).status == "done"
    a, b = saved(tmp_path / "whole"), saved(parts)
    assert a.params.keys() == b.params.keys()
    assert a.optimizer_state.keys() == b.optimizer_state.keys()
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)
    for key in a.optimizer_state:
        np.testing.assert_array_equal(a.optimizer_state[key], b.optimizer_state[key], err_msg=key)
    history = json.loads((parts / "history.json").read_text())
    assert history["curve"] == [dict(p) for p in whole.history.curve]
    for ours, theirs in zip(history["epochs"], whole.history.epochs, strict=True):
        for key in ("epoch", "step", "samples", "train_loss", "validation"):
            assert ours[key] == theirs[key], key
    assert history["test"] == whole.history.test


def test_resume_can_add_epochs_and_recomputes_the_test_metrics(tmp_path):
    first = run(tmp_path, tiny_config(epochs=1))
    trainer = Trainer.resume(tmp_path, epochs=2, source=tiny_data(), log=quiet, plot=False)
    assert trainer.history.test is None
    second = trainer.run(progress=False)
    assert len(second.history.epochs) == 2 and second.history.test != first.history.test


def test_the_output_directory_holds_the_reports(tmp_path):
    result = run(tmp_path, plot=True)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"checkpoint.npz", "metrics.csv", "history.json", "curves.png"}
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,samples,train_loss,validation_auc,validation_log_loss")
    assert len(rows) == 3 and rows[2].startswith("2,20,1200,")
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["config"]["model"] == "dlrm" and len(history["epochs"]) == 2
    assert set(history["test"]) == {"auc", "log_loss", "ne", "calibration", "accuracy"}
    assert history["bayes_auc"]["test"] == pytest.approx(tiny_data().bayes_auc("test"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.position.epoch == 2


class Hooked:
    """A data source that calls ``hook(batch index)`` as it hands out training batches of one
    epoch, and may poison one batch (a NaN feature)."""

    def __init__(self, source, epoch_seed, hook=None, nan_at=None):
        self.source, self.epoch_seed, self.hook, self.nan_at = source, epoch_seed, hook, nan_at
        for name in ("splits", "keys", "num_embeddings", "dense_in_features", "num_samples"):
            setattr(self, name, getattr(source, name))

    def batches(self, split, batch_size, shuffle_seed=None, start=0):
        for index, batch in enumerate(self.source.batches(split, batch_size, shuffle_seed, start)):
            if split == "train" and shuffle_seed == self.epoch_seed:
                if self.hook:
                    self.hook(start + index)
                if self.nan_at == start + index:
                    dense = batch.dense.copy()
                    dense[0, 0] = np.nan
                    batch = batch._replace(dense=dense)
            yield batch


class NoClicksInValidation(Hooked):
    """The validation split with every label 0: its AUC and calibration are undefined."""

    def __init__(self, source):
        super().__init__(source, epoch_seed=None)

    def batches(self, split, batch_size, shuffle_seed=None, start=0):
        for batch in self.source.batches(split, batch_size, shuffle_seed, start):
            yield batch._replace(labels=0 * batch.labels) if split == "validation" else batch


def test_history_json_writes_an_undefined_metric_as_null_strict_json(tmp_path):
    run(tmp_path, source=NoClicksInValidation(tiny_data()))

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    history = json.loads((tmp_path / "history.json").read_text(), parse_constant=refuse)
    validation = history["epochs"][-1]["validation"]
    assert validation["auc"] is None and validation["calibration"] is None
    assert validation["log_loss"] > 0 and history["test"]["auc"] > 0.5


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from refimpl.train.loop import shuffle_seed

    source = Hooked(tiny_data(), shuffle_seed(0, 1), nan_at=4)  # epoch 2, batch 5
    with pytest.raises(NonFiniteLossError) as caught:
        run(tmp_path, source=source)
    message = str(caught.value)
    assert "the loss is nan at epoch 2, batch 5 (step 15)" in message
    assert "before that step changed anything" in message and "is kept" in message
    assert saved(tmp_path).meta["position"]["epoch"] == 1  # the end of epoch 1, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sigint_stops_between_steps_and_saves(tmp_path):
    from refimpl.train.loop import shuffle_seed

    def interrupt(index):
        if index == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    result = run(tmp_path, source=Hooked(tiny_data(), shuffle_seed(0, 0), hook=interrupt))
    assert result.status == "interrupted" and signal.getsignal(signal.SIGINT) is handler
    position = saved(tmp_path).meta["position"]
    assert (position["epoch"], position["batch"], position["step"]) == (0, 3, 3)
    resumed = resume(tmp_path)
    whole = run(tmp_path / "whole")
    assert resumed.history.test == whole.history.test


def test_checkpoint_round_trip_and_atomic_writes(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a.weight": np.arange(3.0)}, {"dense.a.step": np.array(2)}, {"x": 1})
    ckpt = load_checkpoint(path)
    assert ckpt.meta == {"format": "refimpl-train-checkpoint/1", "x": 1}
    np.testing.assert_array_equal(ckpt.params["a.weight"], np.arange(3.0))
    before = path.read_bytes()

    def fail(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a zip", "not a readable .npz"),
        (None, "has no meta.json"),
        ("other", "has format 'other'"),
    ],
)
def test_a_malformed_checkpoint_is_refused(tmp_path, content, message):
    path = tmp_path / "c.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        np.savez(path, w=np.ones(2))
    else:
        np.savez(path, **{"meta.json": np.array(json.dumps({"format": content}))})
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_checkpoint(tmp_path / "absent.npz")


def test_a_checkpoint_of_another_model_or_dtype_is_refused_and_nothing_changes(tmp_path):
    run(tmp_path, tiny_config(epochs=1))
    ckpt = saved(tmp_path)
    data = tiny_data()
    for config in (
        tiny_config(model="dcn", dcn_num_layers=1, dcn_low_rank_dim=2),
        tiny_config(dtype="float32"),
    ):
        config = config.resolved()
        net = build_model(config, data)
        optimizer = build_optimizer(net, "adam", 0.1, "rowwise-adagrad", 0.1)
        before, state = net.state_dict(), optimizer.state_dict()
        expected = "missing parameters" if config.model == "dcn" else "expected dtype float32"
        with pytest.raises(ValueError, match=expected):
            restore(ckpt, net, optimizer)
        for key, value in net.params.items():
            np.testing.assert_array_equal(value, before[key])
        assert optimizer.state_dict().keys() == state.keys()
    for field, value in (("model", "dcn"), ("dtype", "float32"), ("embedding_lr", 0.5)):
        with pytest.raises(ValueError, match=f"trained with {field} = "):
            Trainer.resume(tmp_path, expect={field: value}, source=data, log=quiet)


def test_a_used_output_directory_is_not_overwritten(tmp_path):
    run(tmp_path, tiny_config(epochs=1))
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny_config(), tmp_path, source=tiny_data(), log=quiet)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"model": "wide"}, ValueError, "model: expected one of"),
        ({"dense_optimizer": "lbfgs"}, ValueError, "dense_optimizer: expected one of"),
        ({"embedding_optimizer": "adam"}, ValueError, "embedding_optimizer: expected one of"),
        ({"dense_lr": 0.0}, ValueError, "dense_lr: expected a learning rate > 0, got 0.0"),
        ({"embedding_lr": -1.0}, ValueError, "embedding_lr: expected a learning rate > 0"),
        ({"dense_lr": float("nan")}, ValueError, "dense_lr"),
        ({"data": "imagenet"}, ValueError, "data: expected 'synthetic', 'movielens-100k' or"),
        ({"dtype": "float16"}, ValueError, "dtype: expected"),
        ({"epochs": 0}, ValueError, "epochs: expected an integer >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"dense_arch_layer_sizes": [8, 5]}, ValueError, "must equal the embedding_bag"),
    ],
)
def test_bad_configurations_are_refused_before_writing(tmp_path, changes, error, message):
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        Trainer(tiny_config(**changes), out, source=tiny_data(), log=quiet)
    assert not out.exists()


def test_the_cli_refuses_bad_input_with_status_2_and_writes_nothing(tmp_path, capsys):
    from test_criteo import random_lines

    out = tmp_path / "run"
    corrupt = tmp_path / "cache"
    (corrupt / "movielens-100k").mkdir(parents=True)
    (corrupt / "movielens-100k" / "ml-100k.zip").write_bytes(b"PK not the archive")
    criteo = tmp_path / "train.txt"
    criteo.write_text("\n".join(random_lines(60)) + "\n")
    cases = [
        (["--dense-lr", "0", "--out", str(out)], "dense_lr: expected a learning rate > 0"),
        (["--data", f"criteo:{tmp_path / 'absent.tsv'}", "--out", str(out)], "no Criteo file"),
        (["--data", "movielens-100k", "--data-dir", str(tmp_path), "--out", str(out)], "no Movie"),
        (["--stop-after", "0", "--out", str(out)], "--stop-after: expected an integer >= 1"),
        (["--resume", str(out)], "checkpoint: no file"),
        (["--data", "movielens-100k", "--data-dir", str(corrupt), "--out", str(out)],
         "the cached copy is corrupt; fetch it with `python -m refimpl data movielens-100k`"),
        (["--data", f"criteo:{criteo},{criteo}", "--criteo-holdout", "10", "--out", str(out)],
         "criteo_holdout: holds out lines of a single file"),
        (["--data", f"criteo:{criteo}", "--criteo-holdout", "60", "--out", str(out)],
         "60 lines; holding out 60 leaves none to train on"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
        assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: an unknown model or optimizer
        main(["--model", "wide"])
    assert "invalid choice: 'wide'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--embedding-optimizer", "adam"])
    assert "invalid choice: 'adam'" in capsys.readouterr().err


def test_the_cli_resumes_only_its_own_run(tmp_path, capsys):
    argv = ["--synthetic-tables", "3", "--synthetic-rows", "10", "--synthetic-train", "256"]
    argv += ["--embedding-dim", "4", "--dense-arch", "8,4", "--over-arch", "8,1"]
    argv += ["--epochs", "1", "--batch-size", "64", "--out", str(tmp_path), "--stop-after", "2"]
    argv += ["--eval-batch-size", "50000", "--no-progress"]
    assert main(argv) == 0
    before = (tmp_path / "checkpoint.npz").read_bytes()
    assert main(["--resume", str(tmp_path), "--model", "dcn"]) == 2
    assert "trained with model = 'dlrm', not 'dcn'" in capsys.readouterr().err
    assert main(["--resume", str(tmp_path), "--dtype", "float64"]) == 2
    assert "trained with dtype = 'float32'" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_movielens_multi_hot_genres_train_through_the_loop(tmp_path):
    from test_movielens import write_grouplens  # the tiny ml-100k those tests write

    from refimpl.data.movielens import MovieLens100k, read_archive

    tables = read_archive(write_grouplens(tmp_path / "ml-100k.zip"), "grouplens")
    data = MovieLens100k(tables)
    config = tiny_config(data="movielens-100k", batch_size=4, epochs=3, dense_lr=0.01)
    result = run(tmp_path / "run", config, data)
    assert result.status == "done" and len(result.history.epochs) == 3
    assert result.history.test is not None and result.history.bayes_auc is None


def test_criteo_with_held_out_lines_trains_and_evaluates(tmp_path, capsys):
    from test_criteo import random_lines

    criteo = tmp_path / "train.txt"
    criteo.write_text("\n".join(random_lines(300, seed=7)) + "\n")
    argv = ["--data", f"criteo:{criteo}", "--criteo-holdout", "100", "--criteo-rows", "50"]
    argv += ["--embedding-dim", "4", "--dense-arch", "8,4", "--over-arch", "8,1"]
    argv += ["--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run")]
    assert main([*argv, "--no-progress"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["config"]["criteo_holdout"] == 100
    assert history["epochs"][0]["samples"] == 200  # the lines before the last 100
    assert set(history["test"]) == {"auc", "log_loss", "ne", "calibration", "accuracy"}
    assert "test metrics:" in capsys.readouterr().out
