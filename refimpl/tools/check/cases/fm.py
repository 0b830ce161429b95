"""Checks for FactorizationMachine (both pair sets), DeepFM and FMInteractionArch.

The three layers take their embeddings as a list (and FMInteractionArch its sparse features as
a name → array mapping, NumPy's KeyedTensor), while ``gradcheck`` and the parity adapter hand a
layer its inputs as positional arrays. :class:`PositionalEmbeddings` and
:class:`PositionalSparseFeatures` present them that way, sharing the layer's own parameter
arrays; :func:`torch_module_like` does the same on the TorchRec side (a KeyedTensor built from
the positional features).
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import Layer, as_rng
from refimpl.layers.fm import DeepFM, FactorizationMachine, FMInteractionArch
from refimpl.layers.mlp import Linear
from refimpl.layers.sequential import ReLU, Sequential
from refimpl.tools.check import finite_difference_check, hand_check, parity_check, symbolic_check
from refimpl.tools.gradcheck import draw_away_from_kinks
from refimpl.tools.loops import fm_interaction_loop, fm_loop

# Input shapes (without B) of the embeddings lists: TorchRec's docstring example shrunk,
# one array with F features, and mixed widths (FM "scalars" flattens any shape).
EMBEDDING_SHAPES = (((2, 3), (4, 3)), ((3, 4),), ((4,), (2, 4), (3, 4)))
# (B, D, {name: D_f}, DI): FMInteractionArch configurations.
ARCH_SHAPES = (
    (2, 4, {"f1": 4, "f2": 4, "f3": 4}, 3),
    (3, 3, {"a": 3}, 2),
    (1, 2, {"x": 2, "y": 2}, 5),
    (2, 4, {"f1": 2, "f2": 5}, 3),  # TorchRec allows each feature its own width
)


class PositionalEmbeddings(Layer):
    """``layer`` (which takes a list of arrays) called with the arrays as positional inputs."""

    def __init__(self, layer: Layer, count: int):
        super().__init__(layer.dtype)
        self.layer = layer
        self.input_names = tuple(f"embeddings[{i}]" for i in range(count))

    @property
    def params(self):
        return self.layer.params

    def forward(self, *embeddings):
        return self.layer.forward(list(embeddings))

    def backward(self, d_out, cache):
        d_embeddings, d_params = self.layer.backward(d_out, cache)
        return (*d_embeddings, d_params)

    def kink_distance(self, *embeddings):
        return self.layer.kink_distance(list(embeddings))


class PositionalSparseFeatures(Layer):
    """An FMInteractionArch called as ``(dense, feature_1, …, feature_F)``."""

    def __init__(self, arch: FMInteractionArch):
        super().__init__(arch.dtype)
        self.arch = arch
        self.names = list(dict.fromkeys(arch.sparse_feature_names))
        self.input_names = ("dense_features", *(f"sparse_features[{n!r}]" for n in self.names))

    @property
    def params(self):
        return self.arch.params

    def _mapping(self, features):
        return dict(zip(self.names, features, strict=True))

    def forward(self, dense, *features):
        return self.arch.forward(dense, self._mapping(features))

    def backward(self, d_out, cache):
        d_dense, d_sparse, d_params = self.arch.backward(d_out, cache)
        return (d_dense, *(d_sparse[n] for n in self.names), d_params)

    def kink_distance(self, dense, *features):
        return self.arch.kink_distance(dense, self._mapping(features))


def torch_module_like(layer):
    """The TorchRec module matching ``layer`` (a positional adapter above), taking positional
    tensors and holding ``layer``'s weights (so that every run compares the same numbers)."""
    import torch

    module = _torch_module(layer)
    with torch.no_grad():
        for key, parameter in module.state_dict().items():
            parameter.copy_(torch.tensor(layer.params[key]))
    return module


def _torch_module(layer):
    import torch
    from torchrec.models.deepfm import FMInteractionArch as TorchFMInteractionArch
    from torchrec.modules.deepfm import DeepFM as TorchDeepFM
    from torchrec.modules.deepfm import FactorizationMachine as TorchFactorizationMachine
    from torchrec.sparse.jagged_tensor import KeyedTensor

    if isinstance(layer, PositionalEmbeddings):
        inner = layer.layer
        if isinstance(inner, FactorizationMachine):
            if inner.pairs != "scalars":
                raise TypeError('TorchRec has no FactorizationMachine(pairs="features")')

            class PositionalFM(TorchFactorizationMachine):
                def forward(self, *embeddings):
                    return super().forward(list(embeddings))

            return PositionalFM()
        linear = inner.dense_module.layers[0]

        class PositionalDeepFM(TorchDeepFM):
            def forward(self, *embeddings):
                return super().forward(list(embeddings))

        dense_module = torch.nn.Sequential(
            torch.nn.Linear(linear.in_features, linear.out_features), torch.nn.ReLU()
        )
        return PositionalDeepFM(dense_module)
    if isinstance(layer, PositionalSparseFeatures):
        arch, names = layer.arch, layer.names

        class PositionalArch(TorchFMInteractionArch):
            def forward(self, dense, *features):
                sparse = KeyedTensor(
                    keys=names,
                    length_per_key=[f.shape[1] for f in features],
                    values=torch.cat(features, dim=1),
                )
                return super().forward(dense, sparse)

        return PositionalArch(
            arch.fm_in_features, arch.sparse_feature_names, arch.deep_fm_dimension
        )
    raise TypeError(f"no TorchRec counterpart for {type(layer).__name__}")


def deep_fm(in_features: int, out_features: int, *, seed=None, dtype=np.float64) -> DeepFM:
    """DeepFM over ``Sequential(Linear(N, O), ReLU())``, the deep branch of FMInteractionArch."""
    linear = Linear(in_features, out_features, seed=as_rng(seed), dtype=dtype)
    return DeepFM(Sequential(linear, ReLU(dtype=dtype)))


def _draw_embeddings(rng, batch, shapes):
    return tuple(rng.standard_normal((batch, *shape)) for shape in shapes)


def _fm_builder(batch, shapes, pairs):
    def build(rng):
        fm = PositionalEmbeddings(FactorizationMachine(pairs=pairs), len(shapes))
        return fm, _draw_embeddings(rng, batch, shapes)

    return build


def _deep_fm_builder(batch, shapes, out_features):
    def build(rng):
        n = sum(int(np.prod(shape)) for shape in shapes)
        layer = PositionalEmbeddings(deep_fm(n, out_features, seed=rng), len(shapes))
        draw = lambda r: _draw_embeddings(r, batch, shapes)  # noqa: E731
        return layer, draw_away_from_kinks(layer, draw, rng)

    return build


def build_fm_arch(dim, widths, deep_dim, *, fm_pairs="scalars", seed=None):
    """An FMInteractionArch over dense (B, D) and the named features of ``widths``."""
    return FMInteractionArch(
        dim + sum(widths.values()), list(widths), deep_dim, fm_pairs=fm_pairs, seed=seed
    )


def _arch_builder(batch, dim, widths, deep_dim, fm_pairs="scalars"):
    def build(rng):
        arch = build_fm_arch(dim, widths, deep_dim, fm_pairs=fm_pairs, seed=rng)
        arch = PositionalSparseFeatures(arch)

        def draw(r):
            dense = r.standard_normal((batch, dim))
            return (dense, *(r.standard_normal((batch, w)) for w in widths.values()))

        return arch, draw_away_from_kinks(arch, draw, rng)

    return build


def _linspace_embeddings(batch, shapes):
    sizes = [batch * int(np.prod(shape)) for shape in shapes]
    values = np.linspace(-1.5, 2.0, sum(sizes))
    pieces = np.split(values, np.cumsum(sizes)[:-1])
    return [p.reshape(batch, *shape) for p, shape in zip(pieces, shapes, strict=True)]


def _hand_fm(batch, shapes, pairs):
    def compute():
        embeddings = _linspace_embeddings(batch, shapes)
        return FactorizationMachine(pairs=pairs)(embeddings), fm_loop(embeddings, pairs)

    return compute


def _hand_arch(batch, dim, widths, deep_dim, fm_pairs):
    def compute():
        arch = build_fm_arch(dim, widths, deep_dim, fm_pairs=fm_pairs, seed=0)
        dense, *features = _linspace_embeddings(batch, [(dim,), *((w,) for w in widths.values())])
        sparse = dict(zip(widths, features, strict=True))
        expected = fm_interaction_loop(dense, sparse, list(widths), arch.params, fm_pairs)
        return arch(dense, sparse), expected

    return compute


def _label(batch, shapes):
    return f"B={batch} " + " ".join("(B, " + ", ".join(map(str, s)) + ")" for s in shapes)


def _arch_label(batch, dim, widths, deep_dim):
    return f"B={batch} D={dim} D_f={list(widths.values())} DI={deep_dim}"


def _symbolic(name, **config):
    def witness():
        from derivations.fm import symbolic_witness

        return symbolic_witness(name, **config)

    return witness


def checks():
    for pairs in ("scalars", "features"):
        name = f"FactorizationMachine {pairs}"
        for shapes in EMBEDDING_SHAPES:
            if pairs == "features" and len({s[-1] for s in shapes}) != 1:
                continue
            for batch in (2, 1):
                config = _label(batch, shapes)
                yield finite_difference_check(name, config, _fm_builder(batch, shapes, pairs))
                yield hand_check(name, f"{config} linspace", _hand_fm(batch, shapes, pairs))
                if pairs == "scalars":
                    build = _fm_builder(batch, shapes, pairs)
                    yield parity_check(name, config, build, torch_module_like)
        yield symbolic_check(name, "B=2 F=3 D=2", _symbolic(name, batch=2, features=3, dim=2))

    for shapes in EMBEDDING_SHAPES[:2]:
        config = _label(3, shapes) + " O=4"
        build = _deep_fm_builder(3, shapes, 4)
        yield finite_difference_check("DeepFM", config, build)
        yield parity_check("DeepFM", config, build, torch_module_like)

    layer = "FMInteractionArch"
    for shape in ARCH_SHAPES:
        _, dim, widths, _ = shape
        for fm_pairs in ("scalars", "features"):
            if fm_pairs == "features" and set(widths.values()) != {dim}:
                continue
            config = _arch_label(*shape) + f" fm {fm_pairs}"
            yield finite_difference_check(layer, config, _arch_builder(*shape, fm_pairs))
            yield hand_check(layer, f"{config} linspace", _hand_arch(*shape, fm_pairs))
        config = _arch_label(*shape) + " fm scalars"
        yield parity_check(layer, config, _arch_builder(*shape), torch_module_like)
    yield symbolic_check(
        layer, "B=2 D=2 F=2 DI=2 fm scalars", _symbolic(layer, batch=2, features=2, dim=2)
    )
