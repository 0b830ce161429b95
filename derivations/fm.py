"""The factorization machines and TorchRec's FMInteractionArch, proven symbolically.

For both pair sets of :mod:`refimpl.layers.fm` this module proves, on SymPy symbols:

1. **the O(N) forward is the sum over pairs**: ``½[(Σ_a x_a)² − Σ_a x_a²]`` expands to
   ``Σ_{a<b} x_a x_b`` (TorchRec's pairs of scalars), and ``½ Σ_d [(Σ_i v_id)² − Σ_i v_id²]``
   to ``Σ_{i<j} ⟨v_i, v_j⟩`` (the papers' pairs of features) — :func:`prove_pair_sums`;
2. **the backward is the derivative**: refimpl's textbook backward (``s − x``, per dimension
   for the papers' form) equals SymPy's gradient of ``L = Σ G ⊙ Y``, as an identity —
   :func:`prove_backward`;
3. **the two differ** by ``Σ_{d<e} s_d s_e``, the products across embedding dimensions that
   TorchRec adds — :func:`prove_difference`;
4. **FMInteractionArch**'s textbook backward (``deep_fm``'s Linear and ReLU, the FM, the dense
   passthrough, both branches adding into every input) equals SymPy's gradient exactly at a
   random rational point (ReLU needs a point) — :func:`prove_fm_interaction`.

:func:`symbolic_witness` (what ``python -m refimpl check`` runs) proves a configuration and
then compares refimpl's layer, in float64, with SymPy's gradient evaluated at random numbers.

>>> prove_pair_sums(batch=1, features=3, dim=2)
'pairs of scalars and pairs of features: the O(N) forms equal the sums over pairs (B=1 F=3 D=2)'
>>> print(prove_backward("features", batch=1, features=2, dim=2))
FactorizationMachine pairs="features" B=1 F=2 D=2: the backward equals the symbolic gradient (an
identity)
"""

from __future__ import annotations

from functools import cache

import numpy as np
import sympy as sp

from derivations.exact import gradient_at, prove_vjp, symbols
from refimpl.layers import fm
from refimpl.layers.base import as_rng
from refimpl.tools.gradcheck import rel_error

MISTAKES = ("keeps_the_half", "torchrec_gradient_for_the_papers_form")


def _sum_of_pairs(items) -> sp.Expr:
    """Σ_{a<b} ⟨item_a, item_b⟩, the definition, written out."""
    items = list(items)
    return sp.Add(
        *(
            sp.Add(*(p * q for p, q in zip(items[a], items[b], strict=True)))
            for a in range(len(items))
            for b in range(a + 1, len(items))
        )
    )


def prove_pair_sums(batch: int = 2, features: int = 3, dim: int = 2) -> str:
    """refimpl's two forwards (the O(N) identity) equal the sums over pairs, per sample."""
    v = symbols("v", (batch, features, dim))
    scalars, _ = fm.fm_scalar_pairs_forward(v.reshape(batch, -1))
    pairs_of_features, _ = fm.fm_feature_pairs_forward(v)
    for b in range(batch):
        every_scalar = [[s] for s in v[b].ravel()]
        assert sp.expand(scalars[b, 0] - _sum_of_pairs(every_scalar)) == 0
        assert sp.expand(pairs_of_features[b, 0] - _sum_of_pairs(v[b])) == 0
    return (
        "pairs of scalars and pairs of features: the O(N) forms equal the sums over pairs "
        f"(B={batch} F={features} D={dim})"
    )


def prove_difference(batch: int = 1, features: int = 3, dim: int = 3) -> str:
    """TorchRec's FM minus the papers' is ``Σ_{d<e} s_d s_e``, ``s_d = Σ_i v_id``."""
    v = symbols("v", (batch, features, dim))
    scalars, _ = fm.fm_scalar_pairs_forward(v.reshape(batch, -1))
    pairs_of_features, _ = fm.fm_feature_pairs_forward(v)
    for b in range(batch):
        s = [sp.Add(*v[b, :, d]) for d in range(dim)]
        across = sp.Add(*(s[d] * s[e] for d in range(dim) for e in range(d + 1, dim)))
        assert sp.expand(scalars[b, 0] - pairs_of_features[b, 0] - across) == 0
    return f"TorchRec's FM = the papers' + Σ_(d<e) s_d s_e (B={batch} F={features} D={dim})"


def _backward(pairs: str, mistake: str | None):
    def scalars(d_out, cache):
        grad = fm.fm_scalar_pairs_backward(d_out, cache)
        return grad / 2 if mistake == "keeps_the_half" else grad

    def features(d_out, cache):
        if mistake == "torchrec_gradient_for_the_papers_form":
            stacked, total = cache
            everything = total.sum(axis=1)[:, None, None]
            return d_out[:, :, None] * (everything - stacked)
        grad = fm.fm_feature_pairs_backward(d_out, cache)
        return grad / 2 if mistake == "keeps_the_half" else grad

    return scalars if pairs == "scalars" else features


def prove_backward(
    pairs: str = "scalars", batch: int = 2, features: int = 3, dim: int = 2, mistake=None
) -> str:
    """refimpl's textbook FM backward equals SymPy's gradient, as an identity.

    ``mistake`` (one of :data:`MISTAKES`) swaps in a deliberately wrong backward, which must
    raise an AssertionError.
    """
    shape = (batch, features, dim)
    backward = _backward(pairs, mistake)

    def forward(leaves):
        v = leaves["v"]
        if pairs == "scalars":
            return fm.fm_scalar_pairs_forward(v.reshape(batch, -1))
        return fm.fm_feature_pairs_forward(v)

    def claimed(leaves, d_out, cache):
        return {"v": backward(d_out, cache).reshape(shape)}

    label = f'FactorizationMachine pairs="{pairs}" B={batch} F={features} D={dim}'
    return prove_vjp(label, forward, claimed, {"v": symbols("v", shape)}, at_point=False)


def _arch_leaves(batch, features, dim, deep):
    n = (features + 1) * dim
    leaves = {"dense": symbols("d", (batch, dim))}
    leaves.update({f"f{i}": symbols(f"s{i}", (batch, dim)) for i in range(features)})
    leaves["deep_fm.dense_module.0.weight"] = symbols("W", (deep, n))
    leaves["deep_fm.dense_module.0.bias"] = symbols("b", (deep,))
    return leaves


def _arch_functions(features, pairs):
    names = [f"f{i}" for i in range(features)]

    def embeddings(leaves):
        return [leaves["dense"]] + [leaves[n] for n in names]

    def forward(leaves):
        return fm.fm_interaction_forward(leaves, embeddings(leaves), pairs)

    def backward(leaves, d_out, cache):
        d_embeddings, d_params = fm.fm_interaction_backward(leaves, d_out, cache, pairs)
        return {
            "dense": d_embeddings[0],
            **dict(zip(names, d_embeddings[1:], strict=True)),
            **d_params,
        }

    return forward, backward


def prove_fm_interaction(
    pairs: str = "scalars", batch: int = 2, features: int = 2, dim: int = 2, deep: int = 2
) -> str:
    """FMInteractionArch's textbook backward equals SymPy's gradient at a random point."""
    forward, backward = _arch_functions(features, pairs)
    label = f'FMInteractionArch fm_pairs="{pairs}" B={batch} F={features} D={dim} DI={deep}'
    leaves = _arch_leaves(batch, features, dim, deep)
    return prove_vjp(label, forward, backward, leaves, at_point=True)


@cache
def symbolic_witness(name: str, batch: int = 2, features: int = 3, dim: int = 2, seed: int = 0):
    """Prove, then compare refimpl's layer with SymPy's gradient in float64; the worst
    relative error over the output and every gradient.

    ``name``: "FactorizationMachine scalars", "FactorizationMachine features" or
    "FMInteractionArch" (with DI = 2 and TorchRec's pairs of scalars).

    >>> symbolic_witness("FactorizationMachine features", batch=1, features=2, dim=2) < 1e-12
    True
    """
    rng = as_rng(seed)
    if name.startswith("FactorizationMachine"):
        pairs = name.split()[1]
        prove_pair_sums(batch, features, dim)
        prove_backward(pairs, batch, features, dim)
        v = rng.standard_normal((batch, features, dim))
        layer = fm.FactorizationMachine(pairs=pairs)
        out, cache = layer.forward([v])
        upstream = rng.standard_normal(out.shape)
        (d_v,), _ = layer.backward(upstream, cache)

        def forward(leaves):
            return layer_forward(pairs, leaves["v"])

        expected_out, expected = gradient_at(
            forward, {"v": symbols("v", v.shape)}, {"v": v}, upstream
        )
        return max(rel_error(out, expected_out), rel_error(d_v, expected["v"]))
    if name == "FMInteractionArch":
        deep = 2
        prove_fm_interaction("scalars", batch, features, dim, deep)
        names = [f"f{i}" for i in range(features)]
        arch = fm.FMInteractionArch((features + 1) * dim, names, deep, seed=rng)
        values = {"dense": rng.standard_normal((batch, dim))}
        values.update({n: rng.standard_normal((batch, dim)) for n in names})
        values.update(arch.params)
        out, cache = arch.forward(values["dense"], {n: values[n] for n in names})
        upstream = rng.standard_normal(out.shape)
        d_dense, d_sparse, d_params = arch.backward(upstream, cache)
        forward, _ = _arch_functions(features, "scalars")
        leaves = _arch_leaves(batch, features, dim, deep)
        expected_out, expected = gradient_at(forward, leaves, values, upstream)
        ours = {"dense": d_dense, **d_sparse, **d_params}
        return max(
            [rel_error(out, expected_out)] + [rel_error(ours[k], expected[k]) for k in expected]
        )
    raise ValueError(f"name: no symbolic witness for {name!r}")


def layer_forward(pairs: str, v: np.ndarray):
    """The textbook FM forward on (B, F, D) features, for either pair set."""
    if pairs == "scalars":
        return fm.fm_scalar_pairs_forward(v.reshape(v.shape[0], -1))
    return fm.fm_feature_pairs_forward(v)
