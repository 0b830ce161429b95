"""The factorization machines and TorchRec's FMInteractionArch, proven symbolically.

For both pair sets of :mod:`refimpl.layers.fm` this module proves, on SymPy symbols:

1. **the O(N) forward is the sum over pairs**: ``½[(Σ_a x_a)² − Σ_a x_a²]`` expands to
   ``Σ_{a<b} x_a x_b`` (TorchRec's pairs of scalars), and ``½ Σ_d [(Σ_i v_id)² − Σ_i v_id²]``
   to ``Σ_{i<j} ⟨v_i, v_j⟩`` (the papers' pairs of features) — :func:`prove_pair_sums`;
2. **the backward is the derivative**: refimpl's textbook backward (``s − x``, per dimension
   for the papers' form) equals SymPy's gradient of ``L = Σ G ⊙ Y``, as an identity (a
   :class:`derivations.proof.Proof`) — :func:`prove_backward`;
3. **the two differ** by ``Σ_{d<e} s_d s_e``, the products across embedding dimensions that
   TorchRec adds — :func:`prove_difference`;
4. **FMInteractionArch**'s textbook backward (``deep_fm``'s Linear and ReLU, the FM, the dense
   passthrough, both branches adding into every input) equals SymPy's gradient exactly at a
   random rational point (ReLU needs a point) — :func:`prove_fm_interaction`.

:data:`MUTANTS` are deliberate one-line mistakes in refimpl's own source that
:func:`prove_backward` and :func:`prove_fm_interaction` must reject (``mistake=`` names one):
the half of ``½[s² − Σ x²]`` kept in the gradient, TorchRec's gradient (the sum over every
scalar) used for the papers' form, and ``s`` where the gradient is ``s − x`` (each scalar
paired with itself too).

:func:`symbolic_witness` (what ``python -m refimpl check`` runs) proves a configuration, then
runs refimpl's layer in float64 at a random rational point against SymPy's numbers there.

>>> prove_pair_sums(batch=1, features=3, dim=2)
'pairs of scalars and pairs of features: the O(N) forms equal the sums over pairs (B=1 F=3 D=2)'
>>> print(prove_backward("features", batch=1, features=2, dim=2))
FactorizationMachine pairs="features" B=1 F=2 D=2: the backward equals the symbolic gradient
(identity)
"""

from __future__ import annotations

import contextlib
from functools import cache, lru_cache

import numpy as np
import sympy as sp

from derivations.proof import Proof, mutated, symbols
from refimpl.layers import fm

# mistake -> pairs -> (the function it edits, the text replaced, its replacement)
MUTANTS = {
    "keeps_the_half": {
        "scalars": (
            fm.fm_scalar_pairs_backward,
            "return d_out * (total - flat)",
            "return d_out * (total - flat) / 2",
        ),
        "features": (
            fm.fm_feature_pairs_backward,
            "return d_out[:, :, None] * (total[:, None, :] - stacked)",
            "return d_out[:, :, None] * (total[:, None, :] - stacked) / 2",
        ),
    },
    "torchrec_gradient_for_the_papers_form": {
        "features": (
            fm.fm_feature_pairs_backward,
            "(total[:, None, :] - stacked)",
            "(total.sum(axis=1)[:, None, None] - stacked)",
        ),
    },
    "self_term_kept": {
        "scalars": (
            fm.fm_scalar_pairs_backward,
            "return d_out * (total - flat)",
            "return d_out * total",
        ),
    },
}
MISTAKES = tuple(MUTANTS)


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
        if sp.expand(scalars[b, 0] - _sum_of_pairs(every_scalar)) != 0:
            raise AssertionError("not proven: ½[s² − Σ x²] is the sum over pairs of scalars")
        if sp.expand(pairs_of_features[b, 0] - _sum_of_pairs(v[b])) != 0:
            raise AssertionError("not proven: ½ Σ_d [s_d² − Σ_i v_id²] is the sum over pairs")
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
        if sp.expand(scalars[b, 0] - pairs_of_features[b, 0] - across) != 0:
            raise AssertionError("not proven: the two FMs differ by Σ_(d<e) s_d s_e")
    return f"TorchRec's FM = the papers' + Σ_(d<e) s_d s_e (B={batch} F={features} D={dim})"


def layer_forward(pairs: str, v: np.ndarray):
    """The textbook FM forward on (B, F, D) features, for either pair set."""
    if pairs == "scalars":
        return fm.fm_scalar_pairs_forward(v.reshape(v.shape[0], -1))
    return fm.fm_feature_pairs_forward(v)


def _broken(mistake: str | None, pairs: str):
    """A context in which refimpl's FM backward has the deliberate ``mistake``."""
    if mistake is None:
        return contextlib.nullcontext()
    if pairs not in MUTANTS.get(mistake, {}):
        raise ValueError(
            f"mistake: expected one of {[m for m in MISTAKES if pairs in MUTANTS[m]]} "
            f'for pairs="{pairs}", got {mistake!r}'
        )
    return mutated(*MUTANTS[mistake][pairs])


def _fm_functions(pairs: str):
    """``(forward, backward)`` over the leaf ``v`` (B, F, D): refimpl's textbook FM, looked up
    in its module at each call (so a mutant put in its place runs instead)."""

    def forward(leaves):
        return layer_forward(pairs, leaves["v"])

    def backward(leaves, d_out, cache_):
        if pairs == "scalars":
            return {"v": fm.fm_scalar_pairs_backward(d_out, cache_).reshape(leaves["v"].shape)}
        return {"v": fm.fm_feature_pairs_backward(d_out, cache_)}

    return forward, backward


def _fm_proof(pairs: str, batch: int, features: int, dim: int, **options) -> Proof:
    label = f'FactorizationMachine pairs="{pairs}" B={batch} F={features} D={dim}'
    leaves = {"v": symbols("v", (batch, features, dim))}
    return Proof(label, *_fm_functions(pairs), leaves, **options)


def prove_backward(
    pairs: str = "scalars", batch: int = 2, features: int = 3, dim: int = 2, mistake=None
) -> str:
    """refimpl's textbook FM backward equals SymPy's gradient, as an identity.

    ``mistake`` (one of :data:`MISTAKES`) puts a deliberately wrong line into refimpl's
    backward (:data:`MUTANTS`), which the proof must reject with an AssertionError.
    """
    with _broken(mistake, pairs):
        return _fm_proof(pairs, batch, features, dim).statement()


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

    def backward(leaves, d_out, cache_):
        d_embeddings, d_params = fm.fm_interaction_backward(leaves, d_out, cache_, pairs)
        return {
            "dense": d_embeddings[0],
            **dict(zip(names, d_embeddings[1:], strict=True)),
            **d_params,
        }

    return forward, backward


@lru_cache(maxsize=32)
def _arch_proof(pairs, batch, features, dim, deep, mistake=None, seed=0) -> Proof:
    """The proof (cached: the float witness reuses it), decided with ``mistake`` in place."""
    label = f'FMInteractionArch fm_pairs="{pairs}" B={batch} F={features} D={dim} DI={deep}'
    leaves = _arch_leaves(batch, features, dim, deep)
    with _broken(mistake, pairs):
        proof = Proof(label, *_arch_functions(features, pairs), leaves, at_point=True, seed=seed)
        proof.gap  # noqa: B018 - decided while the mistake is in place
    return proof


def prove_fm_interaction(
    pairs: str = "scalars",
    batch: int = 2,
    features: int = 2,
    dim: int = 2,
    deep: int = 2,
    mistake=None,
) -> str:
    """FMInteractionArch's textbook backward equals SymPy's gradient at a random point;
    ``mistake`` (one of :data:`MISTAKES`) breaks the FM's backward inside it."""
    return _arch_proof(pairs, batch, features, dim, deep, mistake).statement()


@cache
def symbolic_witness(name: str, batch: int = 2, features: int = 3, dim: int = 2, seed: int = 0):
    """Prove, then run refimpl's layer in float64 at a random rational point against SymPy's
    output and gradient there; the worst relative error.

    ``name``: "FactorizationMachine scalars", "FactorizationMachine features" or
    "FMInteractionArch" (with DI = 2 and TorchRec's pairs of scalars).

    >>> symbolic_witness("FactorizationMachine features", batch=1, features=2, dim=2) < 1e-12
    True
    """
    if name.startswith("FactorizationMachine"):
        pairs = name.split()[1]
        prove_pair_sums(batch, features, dim)
        prove_backward(pairs, batch, features, dim)
        proof = _fm_proof(pairs, batch, features, dim, at_point=True, seed=seed)
        proof.statement()
        layer = fm.FactorizationMachine(pairs=pairs)
        out, cache_ = layer.forward([proof.values["v"].astype(np.float64)])
        (d_v,), _ = layer.backward(proof.upstream.astype(np.float64), cache_)
        return max(proof.compare(out, {"v": d_v}).values())
    if name == "FMInteractionArch":
        deep = 2
        proof = _arch_proof("scalars", batch, features, dim, deep, None, seed)
        proof.statement()
        floats = {key: value.astype(np.float64) for key, value in proof.values.items()}
        names = [f"f{i}" for i in range(features)]
        arch = fm.FMInteractionArch((features + 1) * dim, names, deep)
        arch.load_state_dict({k: v for k, v in floats.items() if k.startswith("deep_fm.")})
        out, cache_ = arch.forward(floats["dense"], {n: floats[n] for n in names})
        d_dense, d_sparse, d_params = arch.backward(proof.upstream.astype(np.float64), cache_)
        return max(proof.compare(out, {"dense": d_dense, **d_sparse, **d_params}).values())
    raise ValueError(f"name: no symbolic witness for {name!r}")
