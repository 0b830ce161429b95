"""Fixtures the test files share: random numbers, layers with live biases, inputs, cache arrays.

Each helper fixture returns a function, so that a test asks for it by name and calls it with
its own sizes. Notebooks are marked ``slow`` here too (:func:`pytest_collection_modifyitems`).
"""

import numpy as np
import pytest

import refimpl
from refimpl.tools.check.cases import crossnet as crossnet_cases
from refimpl.tools.gradcheck import draw_away_from_kinks


def pytest_collection_modifyitems(items):
    """Every notebook run (nbmake) is slow: ``-m "not slow"`` leaves them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


@pytest.fixture
def randomize_biases():
    """``randomize_biases(layer, rng)``: every cross-network ``bias.l`` drawn from N(0, 0.1²)
    in place (TorchRec's are zero, which would leave the bias's path untested)."""
    return crossnet_cases.randomize_biases


@pytest.fixture
def crossnet():
    """``crossnet(kind, n, num_layers, options, rng, dtype=float64)``: a cross network at
    TorchRec's initialisation with live biases."""
    return crossnet_cases.build_network


@pytest.fixture
def dcn_arch():
    """``dcn_arch(kind, options, features, dim, num_layers=2, dtype=float64)``: an
    InteractionDCNArch around a cross network with live biases, N = (F+1)·D, seed 0."""

    def build(kind, options, features, dim, num_layers=2, dtype=np.float64):
        n = (features + 1) * dim
        net = crossnet_cases.build_network(kind, n, num_layers, options, 0, dtype)
        return refimpl.InteractionDCNArch(features, net)

    return build


@pytest.fixture
def draw_input():
    """``draw_input(rng, shape)``: entries of random sign and magnitude in [0.5, 1.5]."""
    return crossnet_cases.draw_input


@pytest.fixture
def interaction_inputs():
    """``interaction_inputs(rng, batch, features, dim, dtype=float64)``: standard normal
    ``dense`` (B, D) and ``sparse`` (B, F, D)."""

    def draw(rng, batch, features, dim, dtype=np.float64):
        dense = rng.standard_normal((batch, dim)).astype(dtype)  # (B, D)
        sparse = rng.standard_normal((batch, features, dim)).astype(dtype)  # (B, F, D)
        return dense, sparse

    return draw


@pytest.fixture
def away_from_kinks():
    """``away_from_kinks(layer, rng, *shapes)``: standard normal inputs of those shapes, drawn
    again until no ReLU pre-activation lies within gradcheck's margin of its kink."""

    def draw(layer, rng, *shapes):
        return draw_away_from_kinks(
            layer, lambda r: tuple(r.standard_normal(shape) for shape in shapes), rng
        )

    return draw


@pytest.fixture
def cache_arrays():
    """``cache_arrays(cache)``: every NumPy array in a cache (nested tuples), in order."""

    def arrays(tree):
        if isinstance(tree, np.ndarray):
            return [tree]
        if isinstance(tree, tuple | list):
            return [a for item in tree for a in arrays(item)]
        return []

    return arrays
