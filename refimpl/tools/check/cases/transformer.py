"""Checks for LayerNorm, MultiheadAttention, TransformerEncoderLayer, InteractionTransformerArch.

Parity runs torch's modules in eval mode (dropout off: refimpl's layers are the deterministic
eval-mode computation). TorchRec's ``InteractionTransformerArch`` attends across the batch;
refimpl's ``attend_across="batch"`` is compared with it as it ships, and the per-sample
default with the same module after its attention layers are switched to ``batch_first=True``
(what TorchRec presumably meant).

One gradient is zero in exact arithmetic: the key third of ``in_proj_bias``. Adding a bias to
every key adds ``q·b_k`` to all of a query's scores alike, and softmax ignores a shift of all
its inputs. Both refimpl and torch return rounding noise there (~1e-16), whose relative error
means nothing; :func:`parity_errors` compares the query and value thirds relatively and checks
that the key third is zero to rounding, relative to the scale of the other two.
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import as_rng
from refimpl.layers.transformer import (
    InteractionTransformerArch,
    LayerNorm,
    MultiheadAttention,
    TransformerEncoderLayer,
)
from refimpl.tools.check import (
    Check,
    hand_check,
    parity_check,
    symbolic_check,
)
from refimpl.tools.gradcheck import (
    DEFAULT_TOL,
    draw_away_from_kinks,
    gradcheck,
    numerical_gradient,
    rel_error,
)
from refimpl.tools.loops import (
    attention_loop,
    encoder_layer_loop,
    layer_norm_loop,
    transformer_interaction_loop,
)
from refimpl.tools.parity import paired_results

MODES = ("features", "batch")
# (B, F, D, H, L, M): the arch's configurations; M is the feed-forward width (TorchRec's 2048
# only in the parity checks, which need no kink margin and no finite differences). D >= 4: at
# D = 2 a layer norm maps every row to about (−1, 1) and its gradient is of the order of eps,
# left after cancellation, so float64 results (refimpl's and torch's alike) carry relative
# errors near 1e-9 against an extended-precision run: a property of the numbers, not of code.
ARCH_SHAPES = ((2, 2, 4, 2, 2, 6), (3, 1, 4, 1, 1, 5), (1, 3, 8, 2, 1, 4), (4, 2, 4, 4, 2, 3))


def split_key_bias(name: str, ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """An ``in_proj_bias`` gradient against a reference: the query and value thirds by relative
    error, the key third by ``max |grad|`` over both divided by the largest query or value
    entry (it is zero in exact arithmetic, so both hold rounding noise)."""
    e = ours.shape[0] // 3
    keep = np.r_[0:e, 2 * e : 3 * e]
    scale = max(float(np.abs(ours[keep]).max()), 1e-300)
    keys = np.abs(np.concatenate([ours[e : 2 * e], reference[e : 2 * e]]))
    return {
        f"{name} (queries, values)": rel_error(ours[keep], reference[keep]),
        f"{name} (keys, exactly 0)": float(keys.max()) / scale,
    }


def parity_errors(layer, module, inputs, seed=1) -> dict[str, float]:
    """refimpl against torch, as :func:`refimpl.tools.parity.compare_with_torch`, with every
    ``in_proj_bias`` split by :func:`split_key_bias`."""
    ours, theirs = paired_results(layer, module, inputs, seed)
    errors = {}
    for name in ours:
        if name.endswith("in_proj_bias"):
            errors.update(split_key_bias(name, ours[name], theirs[name]))
        else:
            errors[name] = rel_error(ours[name], theirs[name])
    return errors


def finite_difference_errors(layer, inputs, seed=1) -> dict[str, float]:
    """:func:`refimpl.tools.gradcheck.gradcheck` per array, with every ``in_proj_bias`` split
    by :func:`split_key_bias` (its finite differences against the same upstream gradient)."""
    result = gradcheck(layer, inputs, seed=seed)
    errors = {a.name: a.rel_error for a in result.arrays if not a.name.endswith("in_proj_bias")}
    biases = [key for key in layer.params if key.endswith("in_proj_bias")]
    if biases:
        inputs = tuple(np.array(x, dtype=np.float64) for x in inputs)
        out, cache = layer.forward(*inputs)
        upstream = as_rng(seed).standard_normal(out.shape)  # gradcheck's G
        *_, d_params = layer.backward(upstream, cache)
        params = layer.params
        for key in biases:
            numeric = numerical_gradient(
                lambda: layer.forward(*inputs)[0], params[key], upstream=upstream
            )
            errors.update(split_key_bias(key, d_params[key], numeric))
    return errors


def transformer_fd_check(layer: str, config: str, build) -> Check:
    def run() -> float:
        net, inputs = build(np.random.default_rng(0))
        return max(finite_difference_errors(net, inputs).values())

    return Check(layer, config, "finite-diff", run, DEFAULT_TOL)


def torch_module_like(layer):
    """The torch/TorchRec module matching ``layer``, in eval mode, holding ``layer``'s weights
    moved off their initial values (layer norms' ones and zeros, zero biases, equal encoder
    layers) by a fixed random amount, so that a backward mixing them up cannot pass."""
    import torch

    module = _torch_module(layer).eval()
    rng = np.random.default_rng(7)
    params = layer.params
    with torch.no_grad():
        for key, parameter in module.state_dict().items():
            moved = params[key] + 0.1 * rng.standard_normal(params[key].shape)
            parameter.copy_(torch.tensor(moved))
    return module


def _torch_module(layer):
    import torch

    if isinstance(layer, LayerNorm):
        return torch.nn.LayerNorm(layer.normalized_shape, eps=layer.eps)
    if isinstance(layer, MultiheadAttention):

        class SelfAttention(torch.nn.MultiheadAttention):
            def forward(self, x):
                return super().forward(x, x, x, need_weights=False)[0]

        return SelfAttention(layer.embed_dim, layer.num_heads, batch_first=layer.batch_first)
    if isinstance(layer, TransformerEncoderLayer):
        return torch.nn.TransformerEncoderLayer(
            layer.d_model,
            layer.nhead,
            layer.dim_feedforward,
            layer_norm_eps=layer.layer_norm_eps,
            batch_first=layer.batch_first,
        )
    if isinstance(layer, InteractionTransformerArch):
        import warnings

        from torchrec.models.experimental.transformerdlrm import (
            InteractionTransformerArch as TorchInteractionTransformerArch,
        )

        if layer.dim_feedforward != 2048:
            raise TypeError("TorchRec's InteractionTransformerArch has dim_feedforward 2048")
        with warnings.catch_warnings():  # its nested-tensor hint, about batch_first
            warnings.simplefilter("ignore", UserWarning)
            module = TorchInteractionTransformerArch(
                layer.num_sparse_features,
                layer.embedding_dim,
                layer.nhead,
                layer.ntransformer_layers,
            )
        if layer.attend_across == "features":
            for encoder_layer in module.interarch_TE.layers:
                encoder_layer.self_attn.batch_first = True  # per sample, over the F+1 features
        return module
    raise TypeError(f"no torch counterpart for {type(layer).__name__}")


def _tokens_builder(make, shape, *, kinks=False):
    """``make(rng) -> layer`` with one input of ``shape`` (drawn away from ReLU kinks)."""

    def build(rng):
        layer = make(rng)
        if kinks:
            return layer, draw_away_from_kinks(layer, lambda r: (r.standard_normal(shape),), rng)
        return layer, (rng.standard_normal(shape),)

    return build


def _layer_norm(rng, size=5):
    norm = LayerNorm(size)
    norm.load_state_dict({"weight": rng.uniform(0.5, 1.5, size), "bias": rng.standard_normal(size)})
    return norm


def _arch(shape, mode, seed, dim_feedforward=None):
    _, features, dim, heads, layers, m = shape
    arch = InteractionTransformerArch(
        features,
        dim,
        heads,
        layers,
        attend_across=mode,
        dim_feedforward=dim_feedforward or m,
        seed=seed,
    )
    # Every layer starts as a copy of the first (as torch's); perturb them apart, so that a
    # backward mixing up the layers' parameters cannot pass.
    rng = np.random.default_rng(seed)
    for key, value in arch.params.items():
        if key.startswith("interarch_TE.layers."):
            value += 0.1 * rng.standard_normal(value.shape)
    return arch


def _arch_builder(shape, mode, dim_feedforward=None):
    batch, features, dim = shape[:3]

    def build(rng):
        arch = _arch(shape, mode, rng, dim_feedforward)

        def draw(r):
            return r.standard_normal((batch, dim)), r.standard_normal((batch, features, dim))

        if dim_feedforward:  # parity: no finite differences, no kink margin needed
            return arch, draw(rng)
        return arch, draw_away_from_kinks(arch, draw, rng)

    return build


def _linspace(shape, low=-1.5, high=2.0):
    return np.linspace(low, high, int(np.prod(shape))).reshape(shape)


def _hand_layer_norm():
    norm = _layer_norm(np.random.default_rng(0), 5)
    x = _linspace((2, 3, 5))
    params = norm.params
    return norm(x), layer_norm_loop(x, params["weight"], params["bias"], norm.eps)


def _hand_attention(heads, batch_first):
    def compute():
        mha = MultiheadAttention(4, heads, batch_first=batch_first, seed=0)
        x = _linspace((3, 2, 4))
        sequences = x if batch_first else x.transpose(1, 0, 2)
        expected = attention_loop(sequences, mha.params, heads)
        return mha(x), expected if batch_first else expected.transpose(1, 0, 2)

    return compute


def _hand_encoder_layer():
    layer = TransformerEncoderLayer(4, 2, 6, seed=0)
    x = _linspace((3, 2, 4))  # (S, N, E)
    expected = encoder_layer_loop(x.transpose(1, 0, 2), layer.params, 2, layer.layer_norm_eps)
    return layer(x), expected.transpose(1, 0, 2)


def _hand_arch(shape, mode):
    def compute():
        batch, features, dim, heads = shape[:4]
        arch = _arch(shape, mode, 0)
        dense = _linspace((batch, dim))
        sparse = _linspace((batch, features, dim), 2.0, -1.0)
        expected = transformer_interaction_loop(dense, sparse, arch.params, heads, 1e-5, mode)
        return arch(dense, sparse), expected

    return compute


def _symbolic(name, **config):
    def witness():
        from derivations.transformer import symbolic_witness

        return symbolic_witness(name, **config)

    return witness


def checks():
    name = "LayerNorm"
    for shape in ((3, 5), (2, 3, 5), (1, 5)):
        config = f"{shape} E=5"
        build = _tokens_builder(_layer_norm, shape)
        yield transformer_fd_check(name, config, build)
        yield parity_check(name, config, build, torch_module_like, parity_errors)
    yield hand_check(name, "(2, 3, 5) E=5 linspace", _hand_layer_norm)
    yield symbolic_check(name, "(2, 3) E=3", _symbolic(name, rows=2, width=3))

    name = "MultiheadAttention"
    attention_shapes = ((2, False, (3, 2, 4)), (1, True, (2, 3, 4)), (4, True, (2, 5, 8)))
    for heads, batch_first, shape in attention_shapes:
        config = f"{'N S E' if batch_first else 'S N E'}={shape} H={heads}"

        def make(rng, heads=heads, batch_first=batch_first, e=shape[2]):
            return MultiheadAttention(e, heads, batch_first=batch_first, seed=rng)

        build = _tokens_builder(make, shape)
        yield transformer_fd_check(name, config, build)
        yield parity_check(name, config, build, torch_module_like, parity_errors)
    for heads, batch_first in ((1, True), (2, False)):
        layout = "N S E" if batch_first else "S N E"
        config = f"{layout}=(3, 2, 4) H={heads} linspace"
        yield hand_check(name, config, _hand_attention(heads, batch_first))
    for heads in (1, 2):
        config = f"N=1 S=2 E=2 H={heads}"
        yield symbolic_check(name, config, _symbolic(name, batch=1, seq=2, width=2, heads=heads))

    name = "TransformerEncoderLayer"
    for batch_first, shape, m in ((False, (3, 2, 4), 6), (True, (2, 3, 4), 5)):
        config = f"{'N S E' if batch_first else 'S N E'}={shape} H=2 M={m}"

        def make_layer(rng, batch_first=batch_first, m=m):
            layer = TransformerEncoderLayer(4, 2, m, batch_first=batch_first, seed=rng)
            for key, value in layer.params.items():  # layer norms away from γ = 1, β = 0
                if key.startswith("norm"):
                    value += 0.3 * rng.standard_normal(value.shape)
            return layer

        build = _tokens_builder(make_layer, shape, kinks=True)
        yield transformer_fd_check(name, config, build)
        yield parity_check(name, config, build, torch_module_like, parity_errors)
    yield hand_check(name, "S N E=(3, 2, 4) H=2 M=6 linspace", _hand_encoder_layer)

    name = "InteractionTransformerArch"
    for shape in ARCH_SHAPES:
        batch, features, dim, heads, layers, m = shape
        for mode in MODES:
            config = f"B={batch} F={features} D={dim} H={heads} L={layers} {mode}"
            yield transformer_fd_check(name, f"{config} M={m}", _arch_builder(shape, mode))
            yield hand_check(name, f"{config} M={m} linspace", _hand_arch(shape, mode))
            if mode == "batch" and batch == 1:
                # One sample is one token per sequence: softmax over a single key is the
                # constant 1, so queries and keys get exactly zero gradient from refimpl and
                # rounding noise from torch (tests/test_transformer.py checks the zeros).
                continue
            build = _arch_builder(shape, mode, dim_feedforward=2048)
            yield parity_check(name, f"{config} M=2048", build, torch_module_like, parity_errors)
