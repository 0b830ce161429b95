"""Checks for the dot interaction (InteractionArch) in every option combination."""

from __future__ import annotations

import itertools

import numpy as np

from refimpl.layers.dot import InteractionArch
from refimpl.tools.check import finite_difference_check, hand_check, parity_check, symbolic_check
from refimpl.tools.loops import interaction_loop

LESSON = 3  # the lesson that teaches it: 03_dot_interaction

SHAPES = ((2, 2, 4), (3, 1, 3), (1, 5, 2), (2, 0, 3))  # (B, F, D); (2, 2, 4) is the seed's


def _options():
    for self_interaction, pair_order in itertools.product((False, True), ("triu", "tril")):
        label = pair_order + (" +diag" if self_interaction else "")
        yield label, {"self_interaction": self_interaction, "pair_order": pair_order}


def _builder(batch, features, dim, options):
    def build(rng):
        arch = InteractionArch(features, **options)
        dense = rng.standard_normal((batch, dim))  # (B, D)
        sparse = rng.standard_normal((batch, features, dim))  # (B, F, D)
        return arch, (dense, sparse)

    return build


def _torch_module(arch: InteractionArch):
    from torchrec.models.dlrm import InteractionArch as TorchInteractionArch

    return TorchInteractionArch(num_sparse_features=arch.num_sparse_features)


def _hand_seed_example():
    # The seed's example, B=2, D=4, F=2, on linspace inputs, against the loop version.
    dense = np.linspace(-1.0, 1.0, 8).reshape(2, 4)  # (B, D)
    sparse = np.linspace(0.5, 2.0, 16).reshape(2, 2, 4)  # (B, F, D)
    return InteractionArch(2)(dense, sparse), interaction_loop(dense, sparse)


def _hand_options(options):
    def compute():
        dense = np.linspace(-2.0, 3.0, 9).reshape(3, 3)  # (B, D)
        sparse = np.linspace(1.0, -1.5, 27).reshape(3, 3, 3)  # (B, F, D)
        ours = InteractionArch(3, **options)(dense, sparse)
        return ours, interaction_loop(dense, sparse, **options)

    return compute


def _symbolic(options, num_features):
    def witness():
        from derivations.dot_interaction import symbolic_witness

        return symbolic_witness(**options, num_features=num_features)

    return witness


def checks():
    layer = "InteractionArch"
    for label, options in _options():
        # F=2 is the seed's size; at F=2 triu and tril give the same output (C Cᵀ is
        # symmetric and the two orders list the three pairs alike), so F=3 tells them apart.
        for features in (2, 3):
            config = f"B=2 F={features} D=4 {label}"
            yield symbolic_check(layer, config, _symbolic(options, features))
        for batch, features, dim in SHAPES:
            config = f"B={batch} F={features} D={dim} {label}"
            yield finite_difference_check(layer, config, _builder(batch, features, dim, options))
        yield hand_check(layer, f"B=3 F=3 D=3 {label} linspace", _hand_options(options))
    yield hand_check(layer, "seed example B=2 F=2 D=4 linspace", _hand_seed_example)
    for batch, features, dim in ((2, 2, 4), (3, 1, 8), (1, 26, 16), (4, 26, 8)):
        config = f"B={batch} F={features} D={dim} triu"
        build = _builder(batch, features, dim, {})
        yield parity_check(layer, config, build, _torch_module)
