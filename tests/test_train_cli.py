"""``python -m refimpl train`` as a user runs it: a whole run, and Ctrl-C in the middle of one."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from refimpl.train import TrainConfig, Trainer, load_checkpoint

pytestmark = pytest.mark.slow

SMALL = {
    "synthetic_tables": 3, "synthetic_rows": 10, "embedding_dim": 4,
    "dense_arch_layer_sizes": [8, 4], "over_arch_layer_sizes": [8, 1], "batch_size": 64,
    "synthetic_eval": 2000,
}  # fmt: skip


def argv(config: dict, out) -> list[str]:
    """The command line for a TrainConfig's fields."""
    args = [sys.executable, "-m", "refimpl", "train", "--out", str(out)]
    flags = {"dense_arch_layer_sizes": "--dense-arch", "over_arch_layer_sizes": "--over-arch"}
    for key, value in config.items():
        flag = flags.get(key, "--" + key.replace("_", "-"))
        args += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return args


def quiet(*_):
    pass


def test_a_whole_run_from_the_command_line(tmp_path):
    config = SMALL | {"synthetic_train": 1000, "epochs": 2, "model": "dcn"}
    command = [*argv(config, tmp_path), "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("DLRM_DCN(F=3, D=4") and "epoch 2/2: train loss" in out
    assert "test metrics:" in out and "(planted Bayes-optimal AUC 0." in out
    for name in ("auc", "log_loss", "ne", "calibration", "accuracy"):
        assert f"\n  {name} " in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "checkpoint.npz", "metrics.csv", "history.json", "curves.png",
    }  # fmt: skip


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    config = SMALL | {"synthetic_train": 400_000, "epochs": 1}
    proc = subprocess.Popen(
        [*argv(config, tmp_path / "cli"), "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        seen = b""
        while b"loss=" not in seen:  # the progress bar's running loss: training is under way
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, seen
            seen += chunk
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        stdout, stderr = stdout.decode(), (seen + stderr).decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted (SIGINT) at epoch 1, batch" in stdout and "--resume" in stdout
    stopped = load_checkpoint(tmp_path / "cli" / "checkpoint.npz")
    position = stopped.meta["position"]
    assert 0 < position["batch"] < 400_000 // 64 and position["step"] == position["batch"]
    assert not [p for p in (tmp_path / "cli").iterdir() if p.name.endswith(".tmp")]

    # Finish both the interrupted run and an uninterrupted one for a few more steps.
    more = position["step"] + 5
    resumed = Trainer.resume(tmp_path / "cli", log=quiet, plot=False)
    resumed.run(progress=False, stop_after=5)
    whole = Trainer(TrainConfig(**config), tmp_path / "whole", log=quiet, plot=False)
    whole.run(progress=False, stop_after=more)
    assert resumed.position.step == whole.position.step == more
    for key, value in whole.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[key], value, err_msg=key)


def test_help():
    proc = subprocess.run(
        [sys.executable, "-m", "refimpl", "train", "--help"],
        capture_output=True, text=True, timeout=60, env=os.environ,
    )  # fmt: skip
    assert proc.returncode == 0
    for flag in ("--model", "--data", "--dense-optimizer", "--embedding-lr", "--resume"):
        assert flag in proc.stdout
