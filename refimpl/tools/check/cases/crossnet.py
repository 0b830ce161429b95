"""Checks for the four cross networks, alone and inside InteractionDCNArch.

Every network is checked by all four witnesses: finite differences at several small shapes,
a hand check of the forward against the loop version (:func:`refimpl.tools.loops.crossnet_loop`),
TorchRec parity, and the SymPy proof in ``derivations.crossnet`` (each network on its own, and
inside InteractionDCNArch with the gradient split back into dense and sparse). The mixture is
checked with one expert (no gate) and several, with a kinked (relu) and smooth (tanh, identity,
sigmoid) activations.

Finite differences use gradcheck's defaults (the fourth-order stencil) through
:func:`refimpl.tools.check.finite_difference_check`. Inputs are drawn with magnitudes in
[0.5, 1.5] (:func:`draw_input`) and away from ReLU kinks
(:func:`refimpl.tools.gradcheck.draw_away_from_kinks`).
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.activations import get_activation
from refimpl.layers.dcn import InteractionDCNArch
from refimpl.tools.check import finite_difference_check, hand_check, parity_check, symbolic_check
from refimpl.tools.gradcheck import draw_away_from_kinks
from refimpl.tools.loops import crossnet_loop

LESSON = 4  # the lesson that teaches it: 04_cross_networks and 05_mixture_of_experts

MIX = "LowRankMixtureCrossNet"

# (kind, options, [(B, N, L), ...]) for the finite-difference witness; N from 4 to 12.
FINITE_DIFFERENCE = (
    ("CrossNet", {}, [(2, 4, 1), (3, 6, 2), (1, 12, 3)]),
    ("LowRankCrossNet", {"low_rank": 1}, [(2, 5, 2), (1, 12, 3)]),
    ("LowRankCrossNet", {"low_rank": 3}, [(3, 6, 1), (2, 8, 3)]),
    ("VectorCrossNet", {}, [(2, 4, 1), (3, 7, 2), (1, 12, 3)]),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "relu"}, [(3, 6, 2), (1, 9, 3)]),
    (MIX, {"num_experts": 1, "low_rank": 1, "activation": "identity"}, [(2, 4, 3)]),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "tanh"}, [(2, 5, 2), (1, 8, 3)]),
    (MIX, {"num_experts": 3, "low_rank": 1, "activation": "relu"}, [(2, 6, 2), (3, 4, 3)]),
    (MIX, {"num_experts": 3, "low_rank": 3, "activation": "tanh"}, [(1, 12, 1), (2, 6, 3)]),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "identity"}, [(3, 5, 2)]),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "sigmoid"}, [(2, 5, 2)]),
)

# Every network once, for the hand witness and inside InteractionDCNArch.
VARIANTS = (
    ("CrossNet", {}),
    ("LowRankCrossNet", {"low_rank": 2}),
    ("VectorCrossNet", {}),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "relu"}),
    (MIX, {"num_experts": 3, "low_rank": 2, "activation": "relu"}),
    (MIX, {"num_experts": 2, "low_rank": 3, "activation": "tanh"}),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "identity"}),
)

# (B, F, D) for the networks inside InteractionDCNArch (N = (F+1)·D), and F = 0 (passthrough).
DCN_SHAPES = ((2, 2, 2), (1, 3, 3), (3, 0, 4))

# (kind, configuration) for the symbolic witness; sizes kept tiny so SymPy stays fast.
SYMBOLIC = (
    ("CrossNet", {"in_features": 4, "num_layers": 2}),
    ("LowRankCrossNet", {"in_features": 4, "num_layers": 2, "low_rank": 2}),
    ("VectorCrossNet", {"in_features": 4, "num_layers": 2}),
    (MIX, {"in_features": 3, "num_layers": 2, "num_experts": 1, "activation": "identity"}),
    (MIX, {"in_features": 3, "num_layers": 1, "num_experts": 2, "activation": "tanh"}),
    (
        MIX,
        {"in_features": 3, "num_layers": 1, "num_experts": 2, "activation": "relu", "low_rank": 1},
    ),
    (
        MIX,
        {
            "in_features": 2,
            "num_layers": 2,
            "num_experts": 2,
            "low_rank": 1,
            "activation": "identity",
            "batch": 1,
        },
    ),
)

# (kind, options) for the symbolic witness of InteractionDCNArch at B=2, F=1, D=2 (N=4).
DCN_SYMBOLIC = (
    ("CrossNet", {}),
    ("LowRankCrossNet", {"low_rank": 2}),
    ("VectorCrossNet", {}),
    (MIX, {"num_experts": 2, "low_rank": 1, "activation": "tanh", "num_layers": 1}),
)

# (kind, options, B, N, L) for TorchRec parity: tiny, B = 1, L = 3, K = 3, DLRM-sized N.
PARITY = (
    ("CrossNet", {}, 1, 4, 1),
    ("CrossNet", {}, 3, 27, 3),
    ("LowRankCrossNet", {"low_rank": 1}, 1, 6, 2),
    ("LowRankCrossNet", {"low_rank": 8}, 4, 216, 3),
    ("VectorCrossNet", {}, 1, 5, 3),
    ("VectorCrossNet", {}, 4, 216, 2),
    (MIX, {"num_experts": 1, "low_rank": 2, "activation": "relu"}, 2, 8, 2),
    (MIX, {"num_experts": 3, "low_rank": 2, "activation": "relu"}, 1, 12, 3),
    (MIX, {"num_experts": 3, "low_rank": 4, "activation": "tanh"}, 4, 216, 3),
    (MIX, {"num_experts": 2, "low_rank": 3, "activation": "identity"}, 3, 10, 2),
    (MIX, {"num_experts": 2, "low_rank": 2, "activation": "sigmoid"}, 2, 8, 2),
)


def label(kind: str, options: dict) -> str:
    """The options of a cross network in a check's configuration: ``K=3 r=2 relu``."""
    parts = []
    if "num_experts" in options:
        parts.append(f"K={options['num_experts']}")
    if "low_rank" in options:
        parts.append(f"r={options['low_rank']}")
    if "activation" in options:
        parts.append(options["activation"])
    return " ".join(parts)


def randomize_biases(layer, rng: np.random.Generator, scale: float = 0.1):
    """Draw every cross-network bias (``bias.l``, also under ``crossnet.``) from N(0, scale²),
    in place, and return the layer: TorchRec initialises them to zero, which would leave where
    a bias enters the forward untested."""
    for key, value in layer.params.items():
        if key.split(".")[-2] == "bias":
            value[...] = scale * rng.standard_normal(value.shape)
    return layer


def build_network(
    kind: str, in_features: int, num_layers: int, options: dict, rng, dtype=np.float64
):
    """The network at TorchRec's initialisation, plus small random biases
    (:func:`randomize_biases`)."""
    import refimpl

    rng = np.random.default_rng(rng)
    net = getattr(refimpl, kind)(in_features, num_layers, **options, seed=rng, dtype=dtype)
    return randomize_biases(net, rng)


def draw_input(rng, shape) -> np.ndarray:
    """Entries of random sign and magnitude in [0.5, 1.5]: no input near zero, where it would
    shrink every gradient it multiplies towards the finite differences' round-off."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 1.5, size=shape)


def network_builder(kind, options, batch, n, num_layers):
    """``build(rng) -> (network, (x,))``: :func:`build_network` and an input (B, N) drawn by
    :func:`draw_input` away from ReLU kinks."""

    def build(rng):
        net = build_network(kind, n, num_layers, options, rng)
        inputs = draw_away_from_kinks(net, lambda r: (draw_input(r, (batch, n)),), rng)
        return net, inputs

    return build


def dcn_builder(kind, options, batch, features, dim, num_layers=2):
    """``build(rng) -> (arch, (dense, sparse))``: an InteractionDCNArch around
    :func:`build_network`, N = (F+1)·D, and inputs drawn by :func:`draw_input` away from
    ReLU kinks."""

    def build(rng):
        net = build_network(kind, (features + 1) * dim, num_layers, options, rng)
        arch = InteractionDCNArch(features, net)

        def draw(r):
            return draw_input(r, (batch, dim)), draw_input(r, (batch, features, dim))

        return arch, draw_away_from_kinks(arch, draw, rng)

    return build


def torch_crossnet(net):
    """The TorchRec module matching ``net``, holding ``net``'s weights (float64)."""
    import torch
    from torchrec.modules import crossnet

    kwargs = {"in_features": net.in_features, "num_layers": net.num_layers}
    if hasattr(net, "low_rank"):
        kwargs["low_rank"] = net.low_rank
    if hasattr(net, "num_experts"):
        kwargs["num_experts"] = net.num_experts
        kwargs["activation"] = get_activation(net.activation).torch_function()
    name = next(c.__name__ for c in type(net).__mro__ if c.__module__ == "refimpl.layers.crossnet")
    module = getattr(crossnet, name)(**kwargs).double()
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in net.params.items()})
    return module


def torch_dcn(arch: InteractionDCNArch):
    """TorchRec's InteractionDCNArch around the matching cross network."""
    from torchrec.models.dlrm import InteractionDCNArch as TorchInteractionDCNArch

    return TorchInteractionDCNArch(arch.num_sparse_features, torch_crossnet(arch.crossnet))


def linspace_params(net) -> None:
    """Fill every parameter with evenly spaced values in [-0.6, 0.6] (deterministic, no RNG)."""
    for i, value in enumerate(net.params.values()):
        value[...] = np.linspace(-0.6, 0.6, value.size).reshape(value.shape) * (-1) ** i


def _hand_network(kind, options, batch, n, num_layers):
    def compute():
        net = build_network(kind, n, num_layers, options, np.random.default_rng(0))
        linspace_params(net)
        x = np.linspace(-1.5, 2.0, batch * n).reshape(batch, n)  # (B, N)
        expected = crossnet_loop(x, net.params, kind, options.get("activation", "relu"))
        return net(x), expected

    return compute


def _hand_dcn(kind, options):
    def compute():
        batch, features, dim = 2, 2, 3
        net = build_network(kind, (features + 1) * dim, 2, options, np.random.default_rng(0))
        linspace_params(net)
        dense = np.linspace(-1.0, 1.0, batch * dim).reshape(batch, dim)  # (B, D)
        sparse = np.linspace(0.5, -1.5, batch * features * dim).reshape(batch, features, dim)
        rows = [
            list(dense[b]) + [v for f in range(features) for v in sparse[b, f]]
            for b in range(batch)
        ]
        expected = crossnet_loop(
            np.array(rows), net.params, kind, options.get("activation", "relu")
        )
        return InteractionDCNArch(features, net)(dense, sparse), expected

    return compute


def _symbolic(kind, **config):
    def witness():
        from derivations.crossnet import symbolic_witness

        return symbolic_witness(kind, **config)

    return witness


def checks():
    for kind, config in SYMBOLIC:
        sizes = f"B={config.get('batch', 2)} N={config['in_features']} L={config['num_layers']}"
        yield symbolic_check(
            kind, f"{sizes} {label(kind, config)}".strip(), _symbolic(kind, **config)
        )
    for kind, options in DCN_SYMBOLIC:
        layers = options.get("num_layers", 2)
        config = f"{kind} {label(kind, options)} B=2 F=1 D=2 L={layers}".replace("  ", " ")
        dcn = _symbolic("InteractionDCNArch", crossnet_kind=kind, **options)
        yield symbolic_check("InteractionDCNArch", config, dcn)
    for kind, options, shapes in FINITE_DIFFERENCE:
        for batch, n, num_layers in shapes:
            config = f"B={batch} N={n} L={num_layers} {label(kind, options)}".strip()
            build = network_builder(kind, options, batch, n, num_layers)
            yield finite_difference_check(kind, config, build)
    for kind, options in VARIANTS:
        options_label = label(kind, options)
        config = f"B=3 N=7 L=3 {options_label} linspace".replace("  ", " ")
        yield hand_check(kind, config, _hand_network(kind, options, 3, 7, 3))
        dcn_label = f"{kind} {options_label}".strip()
        yield hand_check(
            "InteractionDCNArch", f"{dcn_label} B=2 F=2 D=3 linspace", _hand_dcn(kind, options)
        )
        for batch, features, dim in DCN_SHAPES:
            build = dcn_builder(kind, options, batch, features, dim)
            config = f"{dcn_label} B={batch} F={features} D={dim}"
            yield finite_difference_check("InteractionDCNArch", config, build)
        build = dcn_builder(kind, options, 4, 26, 8)
        yield parity_check("InteractionDCNArch", f"{dcn_label} B=4 F=26 D=8", build, torch_dcn)
    for kind, options, batch, n, num_layers in PARITY:
        config = f"B={batch} N={n} L={num_layers} {label(kind, options)}".strip()
        build = network_builder(kind, options, batch, n, num_layers)
        yield parity_check(kind, config, build, torch_crossnet)
