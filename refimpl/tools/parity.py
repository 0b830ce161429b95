"""TorchRec parity: run a TorchRec module and a refimpl layer on the same weights and inputs.

Needs PyTorch and TorchRec (``requirements-parity.txt``); importing this module does not, so
refimpl stays NumPy-only. The module is cast to float64, the refimpl layer loads its
``state_dict()`` unchanged, and torch autograd supplies the reference gradients.
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import Layer, as_rng
from refimpl.tools.gradcheck import rel_error


class ParityUnavailable(RuntimeError):
    """PyTorch or TorchRec is not installed."""


def require_torchrec():
    """Import and return ``(torch, torchrec)``, or raise :class:`ParityUnavailable`."""
    try:
        import torch
        import torchrec
    except Exception as exc:  # ImportError, or a broken binary extension
        raise ParityUnavailable(
            "TorchRec parity needs the optional requirements: pip install -r "
            "requirements-parity.txt && pip install --no-deps torchrec==1.8.0"
        ) from exc
    return torch, torchrec


def load_from_torch(layer: Layer, module) -> None:
    """Copy a TorchRec module's ``state_dict()`` into ``layer`` (no renaming needed)."""
    layer.load_state_dict({k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})


def load_into_torch(module, layer: Layer):
    """Copy ``layer``'s parameters into the TorchRec module (copies, not views); returns it."""
    import torch

    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.params.items()})
    return module


def compare_with_torch(
    layer: Layer, module, inputs: tuple[np.ndarray, ...], seed=0
) -> dict[str, float]:
    """Relative errors between refimpl and TorchRec: output, every input and parameter gradient.

    ``module`` is cast to float64 in place and its weights are loaded into ``layer``. The same
    random upstream gradient drives both backward passes.

    Returns
    -------
    dict
        ``"out"``, then one entry per input name, then one per parameter key.
    """
    ours, theirs = paired_results(layer, module, inputs, seed)
    return {name: rel_error(ours[name], theirs[name]) for name in ours}


def paired_results(
    layer: Layer, module, inputs: tuple[np.ndarray, ...], seed=0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """refimpl's and TorchRec's output and gradients, as two dicts with the same keys.

    What :func:`compare_with_torch` compares, for checks that need the arrays themselves.
    """
    torch, _ = require_torchrec()
    module.double()
    module.zero_grad(set_to_none=True)  # a reused module must not accumulate old gradients
    load_from_torch(layer, module)
    torch_inputs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    torch_out = module(*torch_inputs)
    out, cache = layer.forward(*[np.asarray(x, dtype=np.float64) for x in inputs])
    upstream = as_rng(seed).standard_normal(out.shape)
    torch_out.backward(torch.tensor(upstream))
    *d_inputs, d_params = layer.backward(upstream, cache)

    ours, theirs = {"out": out}, {"out": torch_out.detach().numpy()}
    names = getattr(layer, "input_names", None) or [f"input {i}" for i in range(len(inputs))]
    for name, mine, tensor in zip(names, d_inputs, torch_inputs, strict=True):
        ours[name] = mine
        theirs[name] = tensor.grad.numpy() if tensor.grad is not None else np.zeros_like(mine)
    # remove_duplicate=False: a tensor shared by two submodules (tied branches) is listed under
    # both names, as refimpl's params are.
    torch_params = dict(module.named_parameters(remove_duplicate=False))
    for key, mine in d_params.items():
        grad = torch_params[key].grad
        ours[key] = mine
        theirs[key] = np.zeros_like(mine) if grad is None else grad.numpy()
    return ours, theirs


# ----------------------------------------------------------- embedding bags and whole models


def torch_keyed_jagged(features):
    """A TorchRec ``KeyedJaggedTensor`` holding a :class:`~refimpl.KeyedJaggedArray`'s data."""
    torch, _ = require_torchrec()
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    weights = None if features.weights is None else torch.tensor(features.weights)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(features.keys),
        values=torch.tensor(features.values, dtype=torch.int64),
        lengths=torch.tensor(features.lengths, dtype=torch.int64),
        weights=weights,
    )


def keep_table_dtype(torch_ebc):
    """Make a TorchRec ``EmbeddingBagCollection`` pool in its tables' dtype.

    TorchRec's ``forward`` casts every pooled bag to float32 (``.float()``), whatever the
    tables' dtype, so a float64 module cannot be compared with refimpl to 1e-10. This replaces
    the instance's ``forward`` by the same lookups (one ``nn.EmbeddingBag`` call per feature,
    table by table, concatenated into a ``KeyedTensor``) without the cast. Models that hold
    the collection inherit the change. Test-side only: refimpl never imports it.
    """
    torch, _ = require_torchrec()
    from torchrec.sparse.jagged_tensor import KeyedTensor

    def forward(features):
        by_key = features.to_dict()
        pooled = []
        tables = zip(torch_ebc.embedding_bags.values(), torch_ebc._feature_names, strict=True)
        for bag, names in tables:
            for name in names:
                feature = by_key[name]
                weights = feature.weights() if torch_ebc.is_weighted() else None
                pooled.append(bag(feature.values(), feature.offsets(), per_sample_weights=weights))
        return KeyedTensor(
            keys=torch_ebc._embedding_names,
            values=torch.cat(pooled, dim=1),
            length_per_key=torch_ebc._lengths_per_embedding,
        )

    torch_ebc.forward = forward
    return torch_ebc


def torch_ebc_like(ebc):
    """TorchRec's ``EmbeddingBagCollection`` with ``ebc``'s tables (weights not copied)."""
    require_torchrec()
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = [
        EmbeddingBagConfig(
            num_embeddings=t.num_embeddings,
            embedding_dim=t.embedding_dim,
            name=t.name,
            feature_names=list(t.feature_names),
            pooling=PoolingType[t.pooling.upper()],
        )
        for t in ebc.tables
    ]
    return EmbeddingBagCollection(tables=tables, is_weighted=ebc.is_weighted)


def torch_model_like(model):
    """TorchRec's model configured like ``model``, computing what ``model`` computes, its
    collection made to keep float64 (:func:`keep_table_dtype`).

    ``model`` is a DLRM, DLRM_DCN, DLRM_Projection, DLRM_Transformer, SimpleDeepFMNN or
    DLRM_Baseline. Where refimpl's model departs from TorchRec's by an option, the TorchRec
    model is changed to match (test-side only):

    - ``DLRM_Transformer``: in eval mode (dropout off: refimpl computes the eval-mode model);
      TorchRec's encoder has a feed-forward width of 2048, so ``model.dim_feedforward`` must
      be 2048; with ``attend_across="features"`` each attention layer is switched to
      ``batch_first=True``, which makes it attend over each sample's F + 1 features (what the
      per-sample model computes), TorchRec's layers unchanged otherwise.
    - ``SimpleDeepFMNN``: with ``output="logits"``, the over arch's final ``nn.Sigmoid`` is
      replaced by ``nn.Identity``; with ``output="probabilities"`` the model is TorchRec's
      as it ships. The papers' FM (``fm_pairs="features"``) has no TorchRec counterpart.
    - ``DLRM_Baseline`` becomes TorchRec's ``DLRM_DCN`` with ``dcn_num_layers=0``: its
      ``InteractionDCNArch`` concatenates ``[dense; sparse]`` as the baseline does, and a
      cross network of no layers returns its input (and has no parameters, so the
      ``state_dict()`` keys are the baseline's).
    """
    require_torchrec()
    from torchrec.models import dlrm

    ebc = torch_ebc_like(model.sparse_arch.embedding_bag_collection)
    name = type(model).__name__
    if name == "SimpleDeepFMNN":
        module = _torch_deepfm_like(model, ebc)
        keep_table_dtype(ebc)
        return module
    args = (
        ebc,
        model.dense_in_features,
        list(model.dense_arch.layer_sizes),
        list(model.over_arch.layer_sizes),
    )
    if name == "DLRM_DCN":
        module = dlrm.DLRM_DCN(
            *args, dcn_num_layers=model.dcn_num_layers, dcn_low_rank_dim=model.dcn_low_rank_dim
        )
    elif name == "DLRM_Projection":
        sizes1, sizes2 = model.interaction_branch_layer_sizes
        module = dlrm.DLRM_Projection(*args, list(sizes1), list(sizes2))
    elif name == "DLRM_Baseline":
        module = dlrm.DLRM_DCN(*args, dcn_num_layers=0, dcn_low_rank_dim=1)
    elif name == "DLRM_Transformer":
        module = _torch_transformer_like(model, args)
    else:
        module = dlrm.DLRM(*args)
    keep_table_dtype(ebc)
    return module


def _torch_transformer_like(model, args):
    import warnings

    from torchrec.models.experimental.transformerdlrm import DLRM_Transformer

    if model.dim_feedforward != 2048:
        raise TypeError(
            f"model: TorchRec's DLRM_Transformer has a feed-forward width of 2048, got "
            f"dim_feedforward={model.dim_feedforward}"
        )
    with warnings.catch_warnings():  # torch's nested-tensor hint, about batch_first
        warnings.simplefilter("ignore", UserWarning)
        module = DLRM_Transformer(
            *args, nhead=model.nhead, ntransformer_layers=model.ntransformer_layers
        )
    if model.attend_across == "features":
        for layer in module.inter_arch.interarch_TE.layers:
            layer.self_attn.batch_first = True  # per sample, over the F+1 features
    return module.eval()


def _torch_deepfm_like(model, ebc):
    torch, _ = require_torchrec()
    from torchrec.models.deepfm import SimpleDeepFMNN

    if model.fm_pairs != "scalars":
        raise TypeError(
            f"model: TorchRec's FactorizationMachine pairs scalars; fm_pairs={model.fm_pairs!r} "
            f"has no TorchRec counterpart"
        )
    module = SimpleDeepFMNN(
        model.num_dense_features,
        ebc,
        model.dense_arch.hidden_layer_size,
        model.inter_arch.deep_fm_dimension,
    )
    if model.output == "logits":
        module.over_arch.model[1] = torch.nn.Identity()  # the logit, not its sigmoid
    return module


def compare_sparse_with_torch(layer, module, inputs, seed=0) -> dict[str, float]:
    """:func:`compare_with_torch` for layers that read a KeyedJaggedArray (the collection, the
    models): ``inputs`` are ``(features,)`` or ``(dense_features, features)``.

    Row-sparse table gradients are compared densely (use small tables). With a weighted
    collection the per-id weights' gradient is compared too, as ``"<input>.weights"``.
    """
    ours, theirs = paired_sparse_results(layer, module, inputs, seed)
    return {name: rel_error(ours[name], theirs[name]) for name in ours}


def paired_sparse_results(layer, module, inputs, seed=0):
    """refimpl's and TorchRec's output and gradients for :func:`compare_sparse_with_torch`, as
    two dicts of arrays with the same keys (tables dense)."""
    torch, _ = require_torchrec()
    module.double()
    module.zero_grad(set_to_none=True)
    load_from_torch(layer, module)
    *dense, features = inputs
    kjt = torch_keyed_jagged(features)
    if kjt.weights_or_none() is not None:
        kjt.weights().requires_grad_(True)
    torch_dense = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in dense]
    torch_out = module(*torch_dense, kjt)
    if not isinstance(torch_out, torch.Tensor):  # the collection's KeyedTensor
        torch_out = torch_out.values()
    out, cache = layer.forward(*dense, features)
    upstream = as_rng(seed).standard_normal(out.shape)
    torch_out.backward(torch.tensor(upstream))
    *d_dense, d_weights, d_params = layer.backward(upstream, cache)

    ours, theirs = {"out": out}, {"out": torch_out.detach().numpy()}
    names = layer.input_names
    for name, mine, tensor in zip(names, d_dense, torch_dense, strict=False):
        ours[name], theirs[name] = mine, tensor.grad.numpy()
    if d_weights is not None:
        key = f"{names[-1]}.weights"
        ours[key], theirs[key] = d_weights, kjt.weights().grad.numpy()
    torch_params = dict(module.named_parameters())
    for key, mine in d_params.items():
        mine = mine.to_dense() if hasattr(mine, "to_dense") else mine
        grad = torch_params[key].grad
        ours[key], theirs[key] = mine, np.zeros_like(mine) if grad is None else grad.numpy()
    return ours, theirs


# ------------------------------------------------------------------------------- training

TORCH_DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam")
TORCH_EMBEDDING_OPTIMIZERS = ("sgd", "rowwise-adagrad")


def torch_optimizer_like(module, dense: str, dense_lr: float, embedding: str, embedding_lr: float):
    """TorchRec's optimizer for ``module`` as :func:`refimpl.train.loop.build_optimizer` builds
    ours: a ``torchrec.optim.keyed.CombinedOptimizer`` of two ``KeyedOptimizerWrapper`` groups,
    the tables with ``torch.optim.SGD`` or ``torchrec.optim.RowWiseAdagrad`` and every other
    parameter with ``torch.optim.SGD``, ``Adagrad`` or ``Adam`` (single-tensor loops,
    ``foreach=False``).

    The tables' gradients are dense here (``nn.EmbeddingBag``'s default): every row is updated,
    those absent from the batch with a zero gradient, which leaves a row and its row-wise
    accumulator exactly as they were under SGD and row-wise Adagrad (no weight decay, no
    momentum). TorchRec's fused path (``FusedEmbeddingBagCollection``, FBGEMM's row-wise
    Adagrad) runs on CPU too, but stores its tables in float32 at most: it cannot take part in
    a float64 comparison.
    """
    torch, _ = require_torchrec()
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from refimpl.train.loop import TABLE_PREFIX

    dense_classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
    dense_classes["adam"] = torch.optim.Adam
    named = dict(module.named_parameters())
    tables = {k: p for k, p in named.items() if k.startswith(TABLE_PREFIX)}
    others = {k: p for k, p in named.items() if k not in tables}

    def dense_factory(params):
        return dense_classes[dense](params, lr=dense_lr, foreach=False)

    def table_factory(params):
        if embedding == "rowwise-adagrad":
            return RowWiseAdagrad(params, lr=embedding_lr)
        return torch.optim.SGD(params, lr=embedding_lr, foreach=False)

    return CombinedOptimizer(
        [
            ("dense", KeyedOptimizerWrapper(others, dense_factory)),
            ("embedding", KeyedOptimizerWrapper(tables, table_factory)),
        ]
    )


def compare_training_with_torch(
    model,
    batches,
    dense: str = "adam",
    dense_lr: float = 1e-3,
    embedding: str = "rowwise-adagrad",
    embedding_lr: float = 0.01,
) -> dict[str, float]:
    """Train a copy of ``model`` and TorchRec's twin on the same batches; return their gaps.

    Both start from ``model``'s weights (in float64); each step runs forward, the mean binary
    cross-entropy, backward and the update: refimpl's :func:`refimpl.train.loop.train_step`
    with :func:`refimpl.train.loop.build_optimizer`, TorchRec's model with
    :func:`torch_optimizer_like` and autograd. ``model`` itself is not changed.

    Parameters
    ----------
    model : DLRM, DLRM_DCN, DLRM_Projection, DLRM_Transformer, SimpleDeepFMNN or DLRM_Baseline,
        float64. Its TorchRec twin is :func:`torch_model_like`'s.
    batches : sequence of Batch, or of (dense (B, I), KeyedJaggedArray, labels (B,) or (B, 1))
        One step per batch; their keys must name the model's features. Dense features, labels
        and per-id weights are taken in float64.
    dense, dense_lr, embedding, embedding_lr
        As :func:`refimpl.train.loop.build_optimizer`.

    Returns
    -------
    dict
        ``"logits step s"`` (before step s's update) for every step, then every parameter key
        after the last step: relative errors (:func:`refimpl.tools.gradcheck.rel_error`).
    """
    import copy

    torch, _ = require_torchrec()
    from refimpl.layers.loss import BCEWithLogitsLoss
    from refimpl.train.loop import build_optimizer, train_step

    if model.dtype != np.float64:
        raise TypeError(f"model: training parity is checked in float64, got {model.dtype}")
    ours = copy.deepcopy(model)
    optimizer = build_optimizer(ours, dense, dense_lr, embedding, embedding_lr)
    module = load_into_torch(torch_model_like(ours).double(), ours)
    torch_optimizer = torch_optimizer_like(module, dense, dense_lr, embedding, embedding_lr)
    loss_fn = BCEWithLogitsLoss()
    errors = {}
    for step, batch in enumerate(map(_float64_batch, batches), 1):
        torch_optimizer.zero_grad()
        torch_logits = module(torch.from_numpy(batch.dense), torch_keyed_jagged(batch.sparse()))
        labels = torch.from_numpy(batch.labels.astype(np.float64)[:, None])
        torch.nn.functional.binary_cross_entropy_with_logits(torch_logits, labels).backward()
        torch_optimizer.step()
        logits = train_step(ours, loss_fn, optimizer, batch).logits
        errors[f"logits step {step}"] = rel_error(logits, torch_logits.detach().numpy())
    theirs = module.state_dict()
    for key, value in ours.params.items():
        errors[key] = rel_error(value, theirs[key].numpy())
    return errors


def _float64_batch(batch):
    """A Batch (or a (dense, features, labels) triple) with float64 dense, labels, weights."""
    from refimpl.data.batch import Batch

    if not isinstance(batch, Batch):
        dense, features, labels = batch
        batch = Batch(dense, features.keys, features.values, features.lengths, features.weights,
                      np.asarray(labels).reshape(-1))  # fmt: skip
    weights = None if batch.weights is None else np.asarray(batch.weights, np.float64)
    return batch._replace(
        dense=np.asarray(batch.dense, np.float64),
        labels=np.asarray(batch.labels, np.float64),
        weights=weights,
    )


# ------------------------------------------------------------------------- a whole run

REPLAY_TOL = 1e-6  # see replay_run_in_torchrec


def replay_run_in_torchrec(
    out_dir, *, source=None, data_dir=None, log=None, threads: int | None = None
) -> dict:
    """Train TorchRec's twin of a finished ``python -m refimpl train`` run and compare.

    The run's configuration (from its checkpoint) rebuilds the model's initial weights, which
    are a fixed function of the seed, and its data. TorchRec's model
    (:func:`torch_model_like`, in the run's dtype) starts from those weights and takes one step
    per batch of every epoch, in the run's order (the shuffle seed of each epoch is a fixed
    function of the seed and the epoch), with :func:`torch_optimizer_like`'s optimizers of
    the same kinds and learning rates; after each epoch it is evaluated on the validation
    split, at the end on the test split, with refimpl's metrics on TorchRec's predictions.

    Only float64 runs are compared. In float32 two correct implementations follow each other
    only until rounding tips some ReLU of some sample to the other side of its kink (lesson 09
    shows it happen after a few hundred steps); after that their parameters part by percents
    and their metrics by about 1e-3, which could not tell a bug from rounding.

    Parameters
    ----------
    out_dir : path
        A finished run's output directory (its ``checkpoint.npz``).
    source : DataSource, optional
        The run's data, if already loaded (else built from the configuration).
    data_dir : path, optional
        The data cache (MovieLens-100k).
    log : callable, optional
        Receives a line after each epoch.
    threads : int, optional
        ``torch.set_num_threads``.

    Returns
    -------
    dict
        ``steps``, ``samples``, ``torchrec_seconds``; ``epochs``: per epoch the validation
        metrics of the run (``refimpl``) and of the replay (``torchrec``); ``test``: the same
        for the test split; ``parameters``: ``‖ours − theirs‖ / ‖theirs‖`` for every parameter
        tensor after the last step, the run's checkpoint against TorchRec's ``state_dict()``
        (whole tensors, not entry by entry: over thousands of steps the rounding differences
        of two correct implementations grow, most in relative terms in the entries that
        happen to sit near zero); ``worst_metric`` and
        ``worst_parameter``: the largest absolute metric difference and the largest parameter
        error; ``tolerance`` (:data:`REPLAY_TOL`: both must be below it) and ``agree``.

    Raises
    ------
    ValueError
        The run is not finished (no test metrics yet).
    TypeError
        The run is not float64.
    """
    import time

    torch, _ = require_torchrec()
    from refimpl.train.checkpoint import FILENAME, load_checkpoint
    from refimpl.train.loop import (
        TrainConfig,
        build_model,
        build_source,
        shuffle_seed,
        split_metrics,
    )

    checkpoint = load_checkpoint(f"{out_dir}/{FILENAME}")
    config = TrainConfig(**checkpoint.meta["config"]).resolved()
    history = checkpoint.meta["history"]
    if checkpoint.meta["position"]["epoch"] < config.epochs or history["test"] is None:
        raise ValueError(
            f"out_dir: the run in {out_dir} is not finished (no test metrics yet); finish it "
            f"with python -m refimpl train --resume {out_dir}"
        )
    if config.dtype != "float64":
        raise TypeError(
            f"out_dir: the run in {out_dir} is {config.dtype}; a whole run is compared with "
            "TorchRec in float64 only (in float32 rounding alone makes two correct runs part "
            "ways); train it with --dtype float64"
        )
    if threads is not None:
        torch.set_num_threads(threads)
    source = build_source(config, data_dir) if source is None else source
    start = build_model(config, source)  # the run's initial weights: a function of the seed
    module = load_into_torch(torch_model_like(start).double(), start)
    optimizer = torch_optimizer_like(
        module, config.dense_optimizer, config.dense_lr, config.embedding_optimizer,
        config.embedding_lr,
    )  # fmt: skip

    def as_torch(array):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=start.dtype))

    def evaluate(split):
        labels, probabilities = [], []
        with torch.no_grad():
            for batch in source.batches(split, config.eval_batch_size):
                logits = module(as_torch(batch.dense), torch_keyed_jagged(batch.sparse()))
                labels.append(batch.labels)
                probabilities.append(torch.sigmoid(logits[:, 0].double()).numpy())
        return split_metrics(np.concatenate(labels), np.concatenate(probabilities))

    report = {"steps": 0, "samples": 0, "torchrec_seconds": 0.0, "epochs": []}
    for epoch in range(config.epochs):
        clock = time.perf_counter()
        module.train()
        for batch in source.batches("train", config.batch_size, shuffle_seed(config.seed, epoch)):
            optimizer.zero_grad()
            logits = module(as_torch(batch.dense), torch_keyed_jagged(batch.sparse()))
            labels = as_torch(batch.labels)[:, None]
            torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
            optimizer.step()
            report["steps"] += 1
            report["samples"] += batch.size
        report["torchrec_seconds"] += time.perf_counter() - clock
        module.eval()
        ours = history["epochs"][epoch]["validation"]
        theirs = evaluate("validation") if ours is not None else None
        report["epochs"].append({"epoch": epoch + 1, "refimpl": ours, "torchrec": theirs})
        if log is not None:
            log(f"TorchRec replay: epoch {epoch + 1}/{config.epochs} done")
    report["test"] = {"refimpl": history["test"], "torchrec": evaluate("test")}
    theirs = module.state_dict()
    report["parameters"] = {
        key: _normwise_difference(value, theirs[key].numpy())
        for key, value in checkpoint.params.items()
    }
    pairs = [(r["refimpl"], r["torchrec"]) for r in report["epochs"] if r["refimpl"]]
    pairs.append((report["test"]["refimpl"], report["test"]["torchrec"]))
    report["worst_metric"] = max(
        abs(ours[name] - theirs[name])
        for ours, theirs in pairs
        for name in ours
        if ours[name] is not None and np.isfinite(ours[name])
    )
    report["worst_parameter"] = max(report["parameters"].values())
    report["tolerance"] = REPLAY_TOL
    report["agree"] = bool(
        report["worst_metric"] < report["tolerance"]
        and report["worst_parameter"] < report["tolerance"]
    )
    return report


def _normwise_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """``‖ours − theirs‖ / ‖theirs‖`` (0 when both are zero)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: {ours.shape} and {theirs.shape}")
    scale = np.linalg.norm(theirs)
    difference = np.linalg.norm(ours - theirs)
    return float(difference / scale) if scale > 0 else float(difference > 0)
