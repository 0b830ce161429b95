"""Training checkpoints: one ``.npz`` file a TorchRec model can load, written atomically.

A checkpoint holds three kinds of entries, told apart by their key:

- the model's parameters, keyed exactly by TorchRec's ``state_dict()`` names
  (``sparse_arch.embedding_bag_collection.embedding_bags.<table>.weight``,
  ``dense_arch.model._mlp.0._linear.weight``, …), so a TorchRec model of the same
  configuration loads them with ``torch.from_numpy``;
- the optimizer state, prefixed ``optim.`` (``optim.<group>.<param key>.<state name>``, the
  flat keys of :meth:`refimpl.train.optim.CombinedOptimizer.state_dict`);
- ``meta.json``: the run's configuration, its position (epoch, batch, step, the running sums
  of the epoch) and its history, as one JSON text.

The file is written to a temporary file in the same directory, flushed to disk and renamed
over the old one: a crash or Ctrl-C while saving leaves the previous checkpoint whole, never a
half-written one. Loading checks everything (format, keys, shapes, dtypes, the model kind and
dtype of the run) before anything is changed.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.npz"
>>> save_checkpoint(path, {"w": np.ones(2)}, {"dense.w.step": np.array(3)}, {"position": {}})
>>> ckpt = load_checkpoint(path)
>>> ckpt.params, ckpt.optimizer_state, ckpt.meta["format"]
({'w': array([1., 1.])}, {'dense.w.step': array(3)}, 'refimpl-train-checkpoint/1')
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

FORMAT = "refimpl-train-checkpoint/1"
OPTIM_PREFIX = "optim."
META_KEY = "meta.json"
FILENAME = "checkpoint.npz"


class Checkpoint(NamedTuple):
    """What a checkpoint file holds (see the module docstring)."""

    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    meta: dict


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows: readers see the old file or the new one, never
    a part. On any error the temporary file is removed and the old file is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for text (UTF-8)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    optimizer_state: Mapping[str, np.ndarray],
    meta: Mapping,
) -> None:
    """Write ``params``, ``optimizer_state`` (prefixed ``optim.``) and ``meta`` (as JSON, with
    the format added) to ``path`` atomically."""
    arrays = {key: np.asarray(value) for key, value in params.items()}
    for key in arrays:
        if key.startswith(OPTIM_PREFIX) or key == META_KEY:
            raise ValueError(f"params: key {key!r} collides with the checkpoint's own keys")
    arrays.update({OPTIM_PREFIX + k: np.asarray(v) for k, v in optimizer_state.items()})
    text = json.dumps({"format": FORMAT, **meta}, allow_nan=True)
    arrays[META_KEY] = np.array(text)  # a 0-d unicode array: no pickle needed to read it
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not such a checkpoint (not an ``.npz``, no ``meta.json``, another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ValueError(f"checkpoint: {path} is not a readable .npz file ({error})") from None
    if META_KEY not in arrays:
        raise ValueError(f"checkpoint: {path} has no {META_KEY}: not a training checkpoint")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint: {path}: {META_KEY} is not JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"checkpoint: {path} has format {found!r}, expected {FORMAT!r}")
    optimizer_state = {
        key[len(OPTIM_PREFIX) :]: value
        for key, value in arrays.items()
        if key.startswith(OPTIM_PREFIX)
    }
    params = {key: value for key, value in arrays.items() if not key.startswith(OPTIM_PREFIX)}
    return Checkpoint(params, optimizer_state, meta)


def restore(checkpoint: Checkpoint, model, optimizer) -> None:
    """Load a checkpoint's parameters into ``model`` and its state into ``optimizer``.

    Every parameter must be present with the model's shape and dtype (a float32 checkpoint is
    not silently cast into a float64 model), and the optimizer state must fit the optimizer;
    otherwise a ``ValueError`` lists every problem and neither is changed.
    """
    params = model.params
    problems = []
    missing = [k for k in params if k not in checkpoint.params]
    unexpected = [k for k in checkpoint.params if k not in params]
    if missing:
        problems.append(f"missing parameters {missing}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected}")
    for key, value in checkpoint.params.items():
        if key not in params:
            continue
        if value.shape != params[key].shape:
            problems.append(f"{key}: expected shape {params[key].shape}, got {value.shape}")
        elif value.dtype != params[key].dtype:
            problems.append(f"{key}: expected dtype {params[key].dtype}, got {value.dtype}")
    if problems:
        raise ValueError(
            f"checkpoint does not fit {model!r}: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        )
    try:  # checks all of it, changes nothing on error
        optimizer.load_state_dict(checkpoint.optimizer_state)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"checkpoint: its optimizer state does not fit the optimizer: {error}"
        ) from None
    model.load_state_dict(checkpoint.params)  # cannot fail now: keys and shapes were checked
