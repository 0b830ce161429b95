"""Checks for Linear, MLP, DenseArch, OverArch and InteractionProjectionArch."""

from __future__ import annotations

import numpy as np

from refimpl.layers.activations import ACTIVATIONS, get_activation
from refimpl.layers.base import as_rng
from refimpl.layers.mlp import MLP, DenseArch, Linear, OverArch
from refimpl.layers.projection import InteractionProjectionArch
from refimpl.tools.check import finite_difference_check, hand_check, parity_check, symbolic_check
from refimpl.tools.gradcheck import draw_away_from_kinks
from refimpl.tools.loops import mlp_layers, mlp_loop, projection_loop

LESSON = 6  # the lesson that teaches it: 06_projection

MLP_SIZES = ((4,), (4, 3), (4, 3, 2))  # 1–3 layers over in_features = 5

# (kind, configuration) for the symbolic witness (see derivations.projection.spec); tiny, so
# that SymPy stays fast: every activation of the registry once.
SYMBOLIC = (
    ("Linear", {"in_features": 3, "out_features": 2}),
    ("Linear", {"in_features": 3, "out_features": 2, "bias": False}),
    *(("MLP", {"layer_sizes": (2, 2), "activation": name}) for name in ACTIVATIONS),
    ("DenseArch", {"layer_sizes": (2, 2)}),
    ("OverArch", {"layer_sizes": (2, 1)}),
    (
        "InteractionProjectionArch",
        {
            "num_sparse_features": 1,
            "embedding_dim": 2,
            "branch1_layer_sizes": (4,),
            "branch2_layer_sizes": (6,),
        },
    ),
)

# (B, F, D, branch1 layer sizes, branch2 layer sizes): the seed's D=128, F=26, [256], [512]
# (F1 = 2, F2 = 4) scaled down to D=4, F=2, [8], [12] (F1 = 2, F2 = 3).
PROJECTION_SHAPES = (
    (2, 2, 4, (8,), (12,)),
    (2, 2, 4, (6, 5, 8), (12,)),  # a branch with two hidden layers
    (3, 1, 4, (8,), (12,)),  # F = 1
    (1, 2, 4, (8,), (12,)),  # B = 1
    (2, 3, 3, (9,), (5, 6)),  # D = 3, F1 = 3, F2 = 2
    (2, 0, 4, (4,), (4,)),  # F = 0: dense passes through, branches unused
)


def build_projection(batch, features, dim, sizes1, sizes2, *, seed=None, dtype=np.float64):
    """An InteractionProjectionArch with DenseArch branches, as in TorchRec's DLRM."""
    n = (features + 1) * dim  # N
    rng = as_rng(seed)
    branch1 = DenseArch(n, sizes1, seed=rng, dtype=dtype)
    branch2 = DenseArch(n, sizes2, seed=rng, dtype=dtype)
    return InteractionProjectionArch(features, branch1, branch2)


def _label(batch, features, dim, sizes1, sizes2) -> str:
    return f"B={batch} F={features} D={dim} b1={list(sizes1)} b2={list(sizes2)}"


def _mlp_label(layer_sizes, bias, activation) -> str:
    return f"I=5 {list(layer_sizes)} {activation}" + ("" if bias else " no-bias")


def torch_module_like(layer):
    """The TorchRec (or torch) module with ``layer``'s configuration (weights not copied)."""
    import torch
    from torchrec.models.dlrm import DenseArch as TorchDenseArch
    from torchrec.models.dlrm import InteractionProjectionArch as TorchProjectionArch
    from torchrec.models.dlrm import OverArch as TorchOverArch
    from torchrec.modules.mlp import MLP as TorchMLP

    if isinstance(layer, Linear):
        return torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if isinstance(layer, MLP):
        return TorchMLP(
            layer.in_features,
            list(layer.layer_sizes),
            bias=layer.bias,
            activation=get_activation(layer.activation).torch_function(),
            activation_on_last=layer.activation_on_last,
        )
    if isinstance(layer, DenseArch):
        return TorchDenseArch(layer.in_features, list(layer.layer_sizes))
    if isinstance(layer, OverArch):
        return TorchOverArch(layer.in_features, list(layer.layer_sizes))
    if isinstance(layer, InteractionProjectionArch):
        return TorchProjectionArch(
            layer.num_sparse_features,
            torch_module_like(layer.interaction_branch1),
            torch_module_like(layer.interaction_branch2),
        )
    raise TypeError(f"no TorchRec counterpart for {type(layer).__name__}")


def _one_input_builder(make, batch):
    """``make(rng) -> layer`` with one (B, I) input drawn away from ReLU kinks."""

    def build(rng):
        layer = make(rng)
        inputs = draw_away_from_kinks(
            layer, lambda r: (r.standard_normal((batch, layer.in_features)),), rng
        )
        return layer, inputs

    return build


def _projection_builder(batch, features, dim, sizes1, sizes2):
    def build(rng):
        arch = build_projection(batch, features, dim, sizes1, sizes2, seed=rng)

        def draw(r):
            return r.standard_normal((batch, dim)), r.standard_normal((batch, features, dim))

        return arch, draw_away_from_kinks(arch, draw, rng)

    return build


def _linspace_input(batch, size):
    return np.linspace(-1.5, 2.0, batch * size).reshape(batch, size)  # (B, I)


def _hand_mlp(layer_sizes, bias, activation):
    def compute():
        mlp = MLP(5, layer_sizes, bias, activation, seed=0)
        x = _linspace_input(3, 5)
        return mlp(x), mlp_loop(x, mlp_layers(mlp.params), activation)

    return compute


def _hand_dense_arch():
    arch = DenseArch(6, (5, 4), seed=0)
    x = _linspace_input(3, 6)
    return arch(x), mlp_loop(x, mlp_layers(arch.params, "model."), "relu")


def _hand_over_arch():
    # OverArch = an MLP whose last layer has no activation, written as one loop over all layers.
    arch = OverArch(6, (5, 4, 2), seed=0)
    params = arch.params
    layers = [*mlp_layers(params, "model.0."), (params["model.1.weight"], params["model.1.bias"])]
    x = _linspace_input(3, 6)
    return arch(x), mlp_loop(x, layers, "relu", activation_on_last=False)


def _hand_linear(bias):
    def compute():
        linear = Linear(5, 3, bias, seed=0)
        params = linear.params
        x = _linspace_input(3, 5)
        return linear(x), mlp_loop(x, [(params["weight"], params.get("bias"))], "identity")

    return compute


def _hand_projection(batch, features, dim, sizes1, sizes2):
    def compute():
        arch = build_projection(batch, features, dim, sizes1, sizes2, seed=0)
        layers1 = mlp_layers(arch.params, "interaction_branch1.model.")
        layers2 = mlp_layers(arch.params, "interaction_branch2.model.")

        def branch1(c):
            return list(mlp_loop(np.array([c]), layers1, "relu")[0])

        def branch2(c):
            return list(mlp_loop(np.array([c]), layers2, "relu")[0])

        dense = np.linspace(-1.0, 1.0, batch * dim).reshape(batch, dim)  # (B, D)
        sparse = np.linspace(0.5, 2.0, batch * features * dim).reshape(batch, features, dim)
        return arch(dense, sparse), projection_loop(dense, sparse, branch1, branch2)

    return compute


def _symbolic_label(kind, config) -> str:
    if kind == "InteractionProjectionArch":
        return _label(
            2,
            config["num_sparse_features"],
            config["embedding_dim"],
            config["branch1_layer_sizes"],
            config["branch2_layer_sizes"],
        )
    if kind == "Linear":
        return f"B=2 I=3 O=2{'' if config.get('bias', True) else ' no-bias'}"
    return f"B=2 I=3 {list(config['layer_sizes'])} {config.get('activation', 'relu')}"


def _symbolic(kind, **config):
    def witness():
        from derivations.projection import symbolic_witness

        return symbolic_witness(kind, **config)

    return witness


def checks():
    # MLP: every activation, with and without bias, 1–3 layers.
    for activation in ACTIVATIONS:
        for bias in (True, False):
            for sizes in MLP_SIZES:
                config = _mlp_label(sizes, bias, activation)

                def make(rng, sizes=sizes, bias=bias, activation=activation):
                    return MLP(5, sizes, bias, activation, seed=rng)

                build = _one_input_builder(make, 3)
                yield finite_difference_check("MLP", f"B=3 {config}", build)
                yield hand_check(
                    "MLP", f"B=3 {config} linspace", _hand_mlp(sizes, bias, activation)
                )
                yield parity_check(
                    "MLP", f"B=3 {config}", _one_input_builder(make, 3), torch_module_like
                )

    def no_last(rng):
        return MLP(5, (4, 3), activation="tanh", activation_on_last=False, seed=rng)

    yield finite_difference_check(
        "MLP", "B=3 I=5 [4, 3] tanh, not on last", _one_input_builder(no_last, 3)
    )
    yield parity_check(
        "MLP", "B=3 I=5 [4, 3] tanh, not on last", _one_input_builder(no_last, 3), torch_module_like
    )

    def linear(rng):
        return Linear(5, 3, seed=rng)

    yield finite_difference_check("Linear", "B=3 I=5 O=3", _one_input_builder(linear, 3))
    yield parity_check("Linear", "B=3 I=5 O=3", _one_input_builder(linear, 3), torch_module_like)
    for bias in (True, False):
        config = "B=3 I=5 O=3" + ("" if bias else " no-bias")
        yield hand_check("Linear", f"{config} linspace", _hand_linear(bias))

    arch_cases = (
        (DenseArch, ((3, (5, 4)), (1, (4,))), "[5, 4]", _hand_dense_arch),
        (OverArch, ((3, (5, 4, 2)), (1, (4, 1))), "[5, 4, 2]", _hand_over_arch),
    )
    for cls, shapes, hand_sizes, hand in arch_cases:
        name = cls.__name__
        for batch, sizes in shapes:

            def arch(rng, cls=cls, sizes=sizes):
                return cls(6, sizes, seed=rng)

            config = f"B={batch} I=6 {list(sizes)}"
            build = _one_input_builder(arch, batch)
            yield finite_difference_check(name, config, build)
            yield parity_check(name, config, build, torch_module_like)
        yield hand_check(name, f"B=3 I=6 {hand_sizes} linspace", hand)

    layer = "InteractionProjectionArch"
    for shape in PROJECTION_SHAPES:
        config = _label(*shape)
        yield finite_difference_check(layer, config, _projection_builder(*shape))
        yield hand_check(layer, f"{config} linspace", _hand_projection(*shape))
        yield parity_check(layer, config, _projection_builder(*shape), torch_module_like)

    for kind, config in SYMBOLIC:
        yield symbolic_check(kind, _symbolic_label(kind, config), _symbolic(kind, **config))
