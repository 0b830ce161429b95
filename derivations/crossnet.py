"""The four cross networks rebuilt in SymPy, and their backward recurrences proven exactly.

For each of TorchRec's ``CrossNet``, ``LowRankCrossNet``, ``VectorCrossNet`` and
``LowRankMixtureCrossNet`` this module builds the forward in symbols at a tiny size (B=2,
N from 4 up to the seed's 12 = (2+1)·4, L=2 layers, rank r=2, K=2 experts), takes the gradient
of ``L = Σ G ⊙ Y`` for a symbolic upstream gradient ``G`` (entries ``g_{b,n}``), and proves
that the closed-form backward recurrence refimpl uses equals it exactly. The recurrence is
written below the way :mod:`refimpl.layers.crossnet` runs it: layer by layer from the last, the
identity path handing ``dx_{l+1}`` down, the ``x̂`` path (written ``x0`` in code) collecting a
share from *every* layer, and for the mixture the two activations, the softmax over experts,
and the gate gradient summed over the layers that share the gates. For the mixture it is the
plain form, each expert's cross ``c_lk`` formed from the cached ``g(e_lk)``; refimpl computes
the same numbers without forming them (see its Notes), and a test checks that the two agree.

How (and what is symbolic)
--------------------------
Everything lives in a SymPy polynomial ring over the rationals (``sympy.polys.rings``), whose
sparse arithmetic and ``diff`` are orders of magnitude faster than SymPy expressions.

* ``CrossNet``, ``LowRankCrossNet``, ``VectorCrossNet`` (and the mixture with one expert and
  the identity activation) are polynomials. **Fully symbolic:** inputs, every parameter and
  ``G`` are symbols; the gradient is ``PolyElement.diff`` of ``L`` with respect to each of
  them, and the recurrence must give the very same polynomials (compared term by term). At
  the seed's N = 12 this takes a few seconds (CrossNet has 288 kernel symbols).

* ``LowRankMixtureCrossNet`` with tanh, relu or gates is not a polynomial. Each nonlinearity
  becomes a *named atom*, a ring symbol standing for its value: ``h = g(a)`` for the first
  activation, ``h̃ = g(ã)`` for the second, ``e = exp(z)`` for each gate logit and
  ``q = 1/Σ_k e_k`` for the softmax's normaliser, so the softmax is ``p_k = e_k q``. Written
  with atoms the network is a polynomial again, and the true gradient is SymPy's partial
  derivatives plus the chain rule through each atom with its own derivative rule (proven by
  :func:`prove_derivative_rules`):

      dF/dθ = ∂F/∂θ + Σ_atoms ∂F/∂atom · φ'(arg) · d(arg)/dθ,
      tanh' = 1 − h², exp' = e, (1/s)' = −q², relu' = Heaviside(a, 0).

  This rule is generic (it knows nothing of layers, x̂ or gates); the recurrence is the
  hand-derived reverse-mode form. Expanded in full, the mixture's gradient at N = 4 has about
  700 000 terms, so the two are compared **exactly at a random rational point** instead:
  inputs, parameters and every transcendental atom (each tanh and exp value) get independent
  random rationals ``n/2⁴⁰``; relu values and ``q = 1/Σe`` are computed from the point
  exactly; ``G`` stays symbolic, so each gradient entry is a linear form in the ``g_{b,n}``
  with exact rational coefficients. No rounding anywhere. Two different polynomials of total
  degree d agree at such a point with probability at most d·2⁻⁴¹ (Schwartz–Zippel); d is a
  few dozen here (the gradient's is at most 31 in the configurations tested), so a wrong
  recurrence passes with probability below 1e-10 — and the deliberate mistakes in
  :data:`MISTAKES` are all caught. Treating the tanh and exp values as free makes the
  statement stronger, not weaker: the recurrence is right whatever those values are, as long
  as each slope follows its rule. ReLU enters at rational points away from its kink (a relu
  argument of exactly 0 is refused unless every term of it holds a switched-off relu, so that
  it is 0 on a whole neighbourhood), with PyTorch's slope convention Heaviside(a, 0).

The softmax's vector–Jacobian product ``vᵀJ = s ⊙ (v − v·s)``, ``J = diag(s) − s sᵀ``, is proven
on its own with SymPy expressions (:func:`prove_softmax_vjp`), and so is the shift invariance
that lets refimpl subtract the row maximum before ``exp``.

InteractionDCNArch
------------------
The same machinery proves DLRM's DCN interaction (``kind="InteractionDCNArch"`` with
``crossnet_kind``; by default B=2, F=2, D=2, so N=6). The inputs ``dense`` (B, D) and
``sparse`` (B, F, D) are symbols ``d_{b,j}`` and ``s_{b,f,j}``; the forward stacks them as
refimpl does, ``concat(dense[:, None], sparse, axis=1).reshape(B, N)``, and runs the cross
network on the result; the gradient is taken with respect to ``dense``, ``sparse`` and every
parameter (keys prefixed ``crossnet.``, as in TorchRec's state_dict). The closed form is the
network's recurrence followed by :func:`split_combined_gradient`: ``d_x.reshape(B, F+1, D)``,
row 0 to dense, rows 1 … F to sparse. A split done wrong (:data:`DCN_MISTAKES`) is caught.

:func:`symbolic_witness` (what ``python -m refimpl check`` runs) proves a configuration, then
evaluates the symbolic output and gradient in float64 at random numbers (the expanded
polynomials term by term, :class:`FloatPolynomials`: what ``sympy.lambdify`` would generate,
without its printer, which needs ~50 s for CrossNet at N = 12), loads the same numbers into
refimpl's layer with ``load_state_dict``, and returns the worst relative error of refimpl's
output and every gradient.

>>> net = network("CrossNet", in_features=2, num_layers=1, batch=1)
>>> as_matrix(net.output)[0, 0]          # x̂ ⊙ (W x̂ + b) + x̂, first entry, expanded
W^{(0)}_{0,0}*x_{0,0}**2 + W^{(0)}_{0,1}*x_{0,0}*x_{0,1} + b^{(0)}_{0}*x_{0,0} + x_{0,0}
>>> prove_closed_form("CrossNet", in_features=2, num_layers=1, batch=1)
'CrossNet B=1 N=2 L=1: the recurrence equals the symbolic gradient (fully symbolic)'
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp
from sympy import QQ
from sympy.polys.rings import PolyElement, PolyRing, ring

import refimpl
from refimpl.layers.crossnet import (
    CrossCache,
    LowRankCache,
    MixtureCache,
    VectorCache,
)
from refimpl.tools.gradcheck import rel_error

KINDS = ("CrossNet", "LowRankCrossNet", "VectorCrossNet", "LowRankMixtureCrossNet")
MIXTURE = "LowRankMixtureCrossNet"
ACTIVATIONS = ("tanh", "identity", "relu")
SEED_IN_FEATURES = 12  # N = (F+1)·D at the seed's F = 2, D = 4
MISTAKES = ("forget_x0_path", "gate_grad_one_layer", "softmax_vjp_without_shift")
DCN = "InteractionDCNArch"
DCN_MISTAKES = ("dense_row_last", "reshape_transposed")  # wrong ways to split d_combined
_POINT_SEED = 20_200_813  # the random rational point of the mixture proofs (fixed: reproducible)
_POINT_SCALE = 2**40  # the point's rationals are n / 2⁴⁰


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One network at one size. Fields a kind does not use are ``None`` (so caches key well).

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`: the cross network (also inside an InteractionDCNArch).
    batch, in_features, num_layers : int
        B, N, L.
    low_rank : int or None
        r (LowRankCrossNet, LowRankMixtureCrossNet).
    num_experts : int or None
        K (LowRankMixtureCrossNet).
    activation : str or None
        g (LowRankMixtureCrossNet): "tanh", "identity" or "relu".
    num_sparse_features, embedding_dim : int or None
        F and D when the network sits inside an ``InteractionDCNArch`` (then N = (F+1)·D and
        the inputs are ``dense`` and ``sparse``); None for the network on its own.
    """

    kind: str
    batch: int = 2
    in_features: int = 4
    num_layers: int = 2
    low_rank: int | None = None
    num_experts: int | None = None
    activation: str | None = None
    num_sparse_features: int | None = None
    embedding_dim: int | None = None

    @property
    def dcn(self) -> bool:
        """True for a cross network inside an ``InteractionDCNArch``."""
        return self.num_sparse_features is not None

    @property
    def layer(self) -> str:
        """The refimpl (and TorchRec) class checked: the cross network or InteractionDCNArch."""
        return DCN if self.dcn else self.kind

    def label(self) -> str:
        parts = [self.kind, f"B={self.batch}", f"N={self.in_features}", f"L={self.num_layers}"]
        if self.dcn:
            dcn = [DCN, f"B={self.batch}", f"F={self.num_sparse_features}"]
            parts = [*dcn, f"D={self.embedding_dim}", f"over {self.kind}", *parts[2:]]
        if self.num_experts is not None:
            parts.append(f"K={self.num_experts}")
        if self.low_rank is not None:
            parts.append(f"r={self.low_rank}")
        if self.activation is not None:
            parts.append(self.activation)
        return " ".join(parts)

    def layer_kwargs(self) -> dict:
        """The keyword arguments of the refimpl (and TorchRec) constructor."""
        out = {"in_features": self.in_features, "num_layers": self.num_layers}
        for key in ("num_experts", "low_rank", "activation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def make_config(
    kind: str,
    *,
    batch: int = 2,
    in_features: int | None = None,
    num_layers: int = 2,
    low_rank: int = 2,
    num_experts: int = 2,
    activation: str = "tanh",
    crossnet_kind: str | None = None,
    num_sparse_features: int = 2,
    embedding_dim: int = 2,
) -> Config:
    """A :class:`Config` with the defaults B=2, N=4, L=2, r=2, K=2, tanh.

    ``kind="InteractionDCNArch"`` puts the network ``crossnet_kind`` inside the DCN
    interaction, over ``dense`` (B, D) and ``sparse`` (B, F, D) with the defaults F=2, D=2, so
    N = (F+1)·D = 6 (``in_features`` follows from F and D). F = 0, where TorchRec returns
    ``dense`` without calling the cross network, has nothing to prove and is refused.

    >>> make_config("VectorCrossNet", in_features=12).label()
    'VectorCrossNet B=2 N=12 L=2'
    >>> make_config(MIXTURE, num_experts=1, activation="relu").label()
    'LowRankMixtureCrossNet B=2 N=4 L=2 K=1 r=2 relu'
    >>> make_config("InteractionDCNArch", crossnet_kind="LowRankCrossNet").label()
    'InteractionDCNArch B=2 F=2 D=2 over LowRankCrossNet N=6 L=2 r=2'
    """
    if kind == DCN:
        if crossnet_kind not in KINDS:
            raise ValueError(f"crossnet_kind: expected one of {KINDS}, got {crossnet_kind!r}")
        for name, value in (
            ("num_sparse_features", num_sparse_features),
            ("embedding_dim", embedding_dim),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        width = (num_sparse_features + 1) * embedding_dim
        if in_features is not None and in_features != width:
            raise ValueError(
                f"in_features: N = (F+1)·D = {width} inside InteractionDCNArch, got {in_features}"
            )
        cfg = make_config(
            crossnet_kind,
            batch=batch,
            in_features=width,
            num_layers=num_layers,
            low_rank=low_rank,
            num_experts=num_experts,
            activation=activation,
        )
        return replace(cfg, num_sparse_features=num_sparse_features, embedding_dim=embedding_dim)
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {(*KINDS, DCN)}, got {kind!r}")
    if crossnet_kind is not None:
        raise ValueError(f"crossnet_kind: only for kind={DCN!r}, got kind={kind!r}")
    in_features = 4 if in_features is None else in_features
    sizes = (("batch", batch), ("in_features", in_features), ("num_layers", num_layers))
    sizes += (("low_rank", low_rank), ("num_experts", num_experts))
    for name, value in sizes:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    cfg = Config(kind, batch, in_features, num_layers)
    if kind in ("LowRankCrossNet", MIXTURE):
        cfg = replace(cfg, low_rank=int(low_rank))
    if kind == MIXTURE:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        cfg = replace(cfg, num_experts=int(num_experts), activation=activation)
    return cfg


# --------------------------------------------------------------------------------------------
# Symbols: inputs, parameters (TorchRec's keys and shapes), upstream gradient, atoms
# --------------------------------------------------------------------------------------------


def _param_specs(cfg: Config) -> list[tuple[str, tuple[int, ...], str]]:
    """``(state_dict key, shape, LaTeX letter)`` in TorchRec's (and refimpl's) key order."""
    n, L = cfg.in_features, cfg.num_layers
    layers = range(L)
    if cfg.kind == "CrossNet":
        return [(f"kernels.{l}", (n, n), f"W^{{({l})}}") for l in layers] + [
            (f"bias.{l}", (n, 1), f"b^{{({l})}}") for l in layers
        ]
    if cfg.kind == "VectorCrossNet":
        return [(f"kernels.{l}", (n, 1), f"w^{{({l})}}") for l in layers] + [
            (f"bias.{l}", (n, 1), f"b^{{({l})}}") for l in layers
        ]
    r = cfg.low_rank
    if cfg.kind == "LowRankCrossNet":
        return (
            [(f"W_kernels.{l}", (n, r), f"W^{{({l})}}") for l in layers]
            + [(f"V_kernels.{l}", (r, n), f"V^{{({l})}}") for l in layers]
            + [(f"bias.{l}", (n,), f"b^{{({l})}}") for l in layers]
        )
    k = cfg.num_experts
    specs = [(f"U_kernels.{l}", (k, n, r), f"U^{{({l})}}") for l in layers]
    specs += [(f"V_kernels.{l}", (k, r, n), f"V^{{({l})}}") for l in layers]
    specs += [(f"bias.{l}", (n, 1), f"b^{{({l})}}") for l in layers]
    if k > 1:
        specs += [(f"gates.{i}.weight", (1, n), f"\\gamma^{{({i})}}") for i in range(k)]
    specs += [(f"C_kernels.{l}", (k, r, r), f"C^{{({l})}}") for l in layers]
    return specs


def _atom_specs(cfg: Config) -> list[tuple[str, str, tuple[int, ...], str]]:
    """``(name, function, shape, LaTeX letter)`` of the named nonlinearities, in forward order."""
    if cfg.kind != MIXTURE:
        return []
    b, k, r = cfg.batch, cfg.num_experts, cfg.low_rank
    specs = []
    for l in range(cfg.num_layers):
        if k > 1:
            specs.append((f"exp.{l}", "exp", (b, k), f"e^{{({l})}}"))
            specs.append((f"recip.{l}", "recip", (b,), f"q^{{({l})}}"))
        if cfg.activation != "identity":
            specs.append((f"act1.{l}", cfg.activation, (k, b, r), f"h^{{({l})}}"))
            specs.append((f"act2.{l}", cfg.activation, (k, b, r), f"\\tilde{{h}}^{{({l})}}"))
    return specs


def _names(letter: str, shape: tuple[int, ...], squeeze: str | None = None) -> list[str]:
    """``letter_{i,j}`` for every index. TorchRec's unit axes are not shown: ``squeeze="last"``
    for an (N, 1) column, ``"first"`` for a gate's (1, N) row."""
    out = []
    for idx in np.ndindex(*shape):
        shown = idx[:-1] if squeeze == "last" else idx[1:] if squeeze == "first" else idx
        out.append(f"{letter}_{{{','.join(str(i) for i in shown)}}}")
    return out


def _squeeze(key: str, shape: tuple[int, ...]) -> str | None:
    if key.startswith("gates."):
        return "first"
    return "last" if len(shape) == 2 and shape[1] == 1 else None


class Atom(NamedTuple):
    """A named nonlinearity: the ring symbol ``symbol`` stands for ``function(argument)``."""

    name: str  # e.g. "act1.0[1,0,1]"
    function: str  # "tanh", "relu", "exp" or "recip"
    symbol: PolyElement
    argument: PolyElement  # a polynomial in inputs, parameters and earlier atoms


class Network(NamedTuple):
    """A cross network built in symbols (on its own, or inside an InteractionDCNArch).

    Attributes
    ----------
    config : Config
    ring : PolyRing
        QQ[g…, x…, parameters…, atoms…], the upstream gradient's symbols first (inside the
        DCN the inputs' symbols are ``d…`` and ``s…`` in place of ``x…``).
    upstream : ndarray of PolyElement, shape (B, N)
        G, entries ``g_{b,n} = ∂L/∂y_{b,n}``.
    x : ndarray of PolyElement, shape (B, N)
        The cross network's input ``x̂`` (``x_0``), entries ``x_{b,n}``; inside the DCN
        ``concat(dense[:, None], sparse, axis=1).reshape(B, N)``, the same symbols as
        ``inputs`` in the order the forward reads them.
    params : dict of str to ndarray of PolyElement
        Keyed and shaped exactly like TorchRec's ``state_dict()``.
    atoms : tuple of Atom
        The named nonlinearities, in the order the forward creates them (empty unless the
        mixture has gates or a non-identity activation).
    cache : NamedTuple
        What refimpl's forward caches (CrossCache, LowRankCache, VectorCache or
        MixtureCache), here in symbols.
    output : ndarray of PolyElement, shape (B, N)
        Y.
    loss : PolyElement
        ``L = Σ G ⊙ Y``.
    inputs : dict of str to ndarray of PolyElement
        The layer's inputs as refimpl names them: ``{"x": x}`` for a cross network,
        ``{"dense": (B, D), "sparse": (B, F, D)}`` (entries ``d_{b,j}``, ``s_{b,f,j}``) for
        the DCN.
    """

    config: Config
    ring: PolyRing
    upstream: np.ndarray
    x: np.ndarray
    params: dict[str, np.ndarray]
    atoms: tuple[Atom, ...]
    cache: tuple
    output: np.ndarray
    loss: PolyElement
    inputs: dict[str, np.ndarray]

    @property
    def symbolic(self) -> bool:
        """True when there are no atoms: the proof is then fully symbolic."""
        return not self.atoms

    def leaves(self) -> dict[str, np.ndarray]:
        """The inputs and every parameter: what the gradient is taken with respect to.

        Keyed like the refimpl layer's inputs and ``params``: ``x`` and the network's keys, or
        ``dense``, ``sparse`` and the keys prefixed ``crossnet.`` inside the DCN.
        """
        prefix = "crossnet." if self.config.dcn else ""
        return {**self.inputs, **{prefix + key: arr for key, arr in self.params.items()}}


def network(kind: str, **config) -> Network:
    """The symbolic forward of one network (cached: the result is never modified).

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`, or ``"InteractionDCNArch"`` (with ``crossnet_kind``).
    **config
        ``batch``, ``in_features``, ``num_layers``, ``low_rank``, ``num_experts``,
        ``activation``; for the DCN ``crossnet_kind``, ``num_sparse_features`` and
        ``embedding_dim`` (see :func:`make_config`).

    >>> net = network("VectorCrossNet", in_features=2, num_layers=1, batch=1)
    >>> sorted(net.params), net.params["kernels.0"].shape
    (['bias.0', 'kernels.0'], (2, 1))
    >>> as_matrix(net.output)[0, 0]  # x̂ (x̂·w) + b + x̂: the bias outside the product
    b^{(0)}_{0} + w^{(0)}_{0}*x_{0,0}**2 + w^{(0)}_{1}*x_{0,0}*x_{0,1} + x_{0,0}
    >>> dcn = network(DCN, crossnet_kind="CrossNet", num_sparse_features=1, batch=1)
    >>> as_matrix(dcn.x)                 # [dense; sparse] flattened: dense first, row-major
    Matrix([[d_{0,0}, d_{0,1}, s_{0,0,0}, s_{0,0,1}]])
    """
    return _network(make_config(kind, **config))


@lru_cache(maxsize=64)
def _network(cfg: Config) -> Network:
    b, n = cfg.batch, cfg.in_features
    blocks = [("upstream", (b, n), "g", None)]
    if cfg.dcn:
        f, d = cfg.num_sparse_features, cfg.embedding_dim
        blocks += [("dense", (b, d), "d", None), ("sparse", (b, f, d), "s", None)]
    else:
        blocks += [("x", (b, n), "x", None)]
    blocks += [
        (key, shape, letter, _squeeze(key, shape)) for key, shape, letter in _param_specs(cfg)
    ]
    blocks += [(name, shape, letter, None) for name, _, shape, letter in _atom_specs(cfg)]
    names = [s for _, shape, letter, squeeze in blocks for s in _names(letter, shape, squeeze)]
    poly_ring, *gens = ring([sp.Symbol(name) for name in names], QQ)
    arrays, start = {}, 0
    for key, shape, _, _ in blocks:
        size = int(np.prod(shape))
        arrays[key] = np.array(gens[start : start + size], dtype=object).reshape(shape)
        start += size
    params = {key: arrays[key] for key, _, _ in _param_specs(cfg)}
    atoms: list[Atom] = []

    def name_atoms(key: str, function: str, arguments: np.ndarray) -> np.ndarray:
        # The atom symbols stand for function(argument), entry by entry.
        symbols = arrays[key]
        for idx in np.ndindex(*symbols.shape):
            label = f"{key}[{','.join(map(str, idx))}]"
            atoms.append(Atom(label, function, symbols[idx], arguments[idx]))
        return symbols

    if cfg.dcn:  # refimpl.InteractionDCNArch.forward: combined (B, F+1, D), dense at row 0
        inputs = {"dense": arrays["dense"], "sparse": arrays["sparse"]}
        combined = np.concatenate([inputs["dense"][:, None, :], inputs["sparse"]], axis=1)
        x0 = combined.reshape(b, n)  # (B, N), row-major
    else:
        inputs = {"x": arrays["x"]}
        x0 = arrays["x"]
    forward = {
        "CrossNet": _crossnet_forward,
        "LowRankCrossNet": _low_rank_forward,
        "VectorCrossNet": _vector_forward,
        MIXTURE: _mixture_forward,
    }[cfg.kind]
    output, cache = forward(cfg, x0, params, name_atoms)
    upstream = arrays["upstream"]
    loss = poly_ring.zero
    for g, y in zip(upstream.ravel(), output.ravel(), strict=True):
        loss += g * y
    return Network(cfg, poly_ring, upstream, x0, params, tuple(atoms), cache, output, loss, inputs)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays).astype(object)


def _crossnet_forward(cfg, x0, p, name_atoms):
    # refimpl.CrossNet.forward in symbols: c_l = x_l W_lᵀ + b_lᵀ, x_{l+1} = x̂ ⊙ c_l + x_l.
    xs, crosses, x_l = [], [], x0
    for l in range(cfg.num_layers):
        cross = x_l @ p[f"kernels.{l}"].T + p[f"bias.{l}"][:, 0]  # (B, N)
        xs.append(x_l)
        crosses.append(cross)
        x_l = x0 * cross + x_l  # (B, N)
    return x_l, CrossCache(_stack(xs), _stack(crosses))


def _low_rank_forward(cfg, x0, p, name_atoms):
    # v_l = x_l V_lᵀ, c_l = v_l W_lᵀ + b_l, x_{l+1} = x̂ ⊙ c_l + x_l.
    xs, projections, crosses, x_l = [], [], [], x0
    for l in range(cfg.num_layers):
        projection = x_l @ p[f"V_kernels.{l}"].T  # (B, r)
        cross = projection @ p[f"W_kernels.{l}"].T + p[f"bias.{l}"]  # (B, N)
        xs.append(x_l)
        projections.append(projection)
        crosses.append(cross)
        x_l = x0 * cross + x_l  # (B, N)
    return x_l, LowRankCache(_stack(xs), _stack(projections), _stack(crosses))


def _vector_forward(cfg, x0, p, name_atoms):
    # s_l = x_l w_l (one score per sample), x_{l+1} = x̂ s_l + b_lᵀ + x_l.
    xs, scores, x_l = [], [], x0
    for l in range(cfg.num_layers):
        score = x_l @ p[f"kernels.{l}"]  # (B, 1)
        xs.append(x_l)
        scores.append(score)
        x_l = x0 * score + p[f"bias.{l}"][:, 0] + x_l  # (B, N)
    return x_l, VectorCache(_stack(xs), _stack(scores))


def _mixture_forward(cfg, x0, p, name_atoms):
    # refimpl.LowRankMixtureCrossNet.forward in symbols, every nonlinearity a named atom.
    k = cfg.num_experts
    identity = cfg.activation == "identity"
    gates = np.concatenate([p[f"gates.{i}.weight"] for i in range(k)]) if k > 1 else None
    saved, x_l = [], x0
    for l in range(cfg.num_layers):
        u, v, c = (p[f"{name}_kernels.{l}"] for name in "UVC")
        if gates is None:
            probs = np.ones((cfg.batch, 1), dtype=object)  # (B, 1): no gate when K = 1
        else:
            exps = name_atoms(f"exp.{l}", "exp", x_l @ gates.T)  # e = exp(z), (B, K)
            recips = name_atoms(f"recip.{l}", "recip", exps.sum(axis=1))  # q = 1/Σe, (B,)
            probs = exps * recips[:, None]  # p = e q, the softmax, (B, K)
        pre1 = x_l @ v.transpose(0, 2, 1)  # (K, B, r)
        act1 = pre1 if identity else name_atoms(f"act1.{l}", cfg.activation, pre1)
        pre2 = act1 @ c.transpose(0, 2, 1)  # (K, B, r)
        act2 = pre2 if identity else name_atoms(f"act2.{l}", cfg.activation, pre2)
        cross = act2 @ u.transpose(0, 2, 1) + p[f"bias.{l}"][:, 0]  # (K, B, N)
        mix = np.sum(probs.T[:, :, None] * cross, axis=0)  # Σ_k p_k c_k, (B, N)
        saved.append((x_l, act1, act2, mix, probs))  # refimpl's MixtureCache fields
        x_l = x0 * mix + x_l  # (B, N)
    return x_l, MixtureCache(*(_stack(list(arrays)) for arrays in zip(*saved, strict=True)))


def as_matrix(array: np.ndarray) -> sp.Matrix:
    """A 1-D or 2-D array of ring elements as a SymPy Matrix of expressions (for display)."""
    array = np.asarray(array, dtype=object)
    if array.ndim == 1:
        array = array[None, :]
    return sp.Matrix(array.shape[0], array.shape[1], lambda i, j: _expr(array[i, j]))


def _expr(value) -> sp.Expr:
    return value.as_expr() if isinstance(value, PolyElement) else sp.sympify(value)


def degree_in_input(net: Network, value: PolyElement) -> int:
    """The total degree of ``value`` in the input symbols ``x_{b,n}`` (parameters count 0).

    >>> net = network("CrossNet", in_features=2, num_layers=2, batch=1)
    >>> [degree_in_input(net, x[0, 0]) for x in (*net.cache.xs, net.output)]
    [1, 2, 3]
    """
    index = [net.ring.gens.index(s) for s in net.x.ravel()]
    if not value:
        return 0
    return max(sum(m[i] for i in index) for m in value.monoms())


# --------------------------------------------------------------------------------------------
# The closed-form backward, step by step as refimpl runs it
# --------------------------------------------------------------------------------------------


class Backward(NamedTuple):
    """What a backward recurrence returns.

    Attributes
    ----------
    d_x : ndarray, shape (B, N)
        ``∂L/∂x̂``: the identity path's ``dx_0`` plus the ``x̂`` path's sum.
    d_params : dict of str to ndarray
        Keyed and shaped like ``params``.
    x0_shares : list of ndarray, each (B, N)
        Each layer's share of the ``x̂`` path, layer 0 first.
    gate_shares : list of ndarray, each (K, N)
        Each layer's share of the gate gradient, layer 0 first (mixture with K > 1; else []).
    """

    d_x: np.ndarray
    d_params: dict[str, np.ndarray]
    x0_shares: list
    gate_shares: list


def _check_mistake(mistake):
    if mistake is not None and mistake not in MISTAKES:
        raise ValueError(f"mistake: expected None or one of {MISTAKES}, got {mistake!r}")


def closed_form_backward(
    kind: str,
    params: dict[str, np.ndarray],
    cache: tuple,
    d_out: np.ndarray,
    *,
    derivative=None,
    mistake: str | None = None,
) -> Backward:
    """The backward recurrence of :mod:`refimpl.layers.crossnet`, written out on any arrays.

    Works on NumPy arrays of ring elements (the proofs), of exact rationals (the mixture's
    proof at a point) or of floats (a refimpl cache: the notebooks use it to show each layer's
    share of the ``x̂`` and gate gradients).

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    params : dict
        The parameters, keyed like TorchRec's ``state_dict()``.
    cache : NamedTuple
        refimpl's cache for this kind (or the symbolic one of :class:`Network`).
    d_out : ndarray, shape (B, N)
        ``dx_L = ∂L/∂Y``.
    derivative : callable, optional
        ``g'(pre, act)`` elementwise, mixture only (refimpl's ``Activation.derivative``); it is
        called with ``pre=None``, since the cache keeps only the activations' outputs.
    mistake : str, optional
        One of :data:`MISTAKES`, to make the recurrence deliberately wrong:
        ``"forget_x0_path"`` drops every layer's ``x̂`` share (``d_x = dx_0`` only);
        ``"gate_grad_one_layer"`` keeps the gate gradient of the last layer visited (layer 0)
        instead of the sum over layers; ``"softmax_vjp_without_shift"`` uses ``s ⊙ v`` for
        the softmax's backward, without the ``− (v·s)`` term.

    Returns
    -------
    Backward

    Notes
    -----
    For every network, from ``dx_L = d_out`` and l = L-1 … 0::

        dx_l  = dx_{l+1} + (∂c_l/∂x_l)ᵀ (x̂ ⊙ dx_{l+1})     the identity path + the cross
        dx̂   += c_l ⊙ dx_{l+1}                             every layer reads x̂

    and ``d_x = dx_0 + dx̂`` (VectorCrossNet's ``c_l`` is its score ``s_l``, and its bias gets
    ``dx_{l+1}`` with no ``x̂`` factor).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    _check_mistake(mistake)
    layer_backward = {
        "CrossNet": _crossnet_layer,
        "LowRankCrossNet": _low_rank_layer,
        "VectorCrossNet": _vector_layer,
        MIXTURE: _mixture_layer,
    }[kind]
    x0 = cache.xs[0]
    num_layers = cache.xs.shape[0]
    gates = None
    if kind == MIXTURE and "gates.0.weight" in params:
        count = sum(key.startswith("gates.") for key in params)
        gates = np.concatenate([params[f"gates.{i}.weight"] for i in range(count)])  # (K, N)
    d_x, d_x0, d_gates, grads = d_out, 0 * x0, None, {}
    x0_shares, gate_shares = [None] * num_layers, [None] * num_layers
    for l in reversed(range(num_layers)):
        layer_cache = tuple(array[l] for array in cache)
        d_x, d_x0_l, layer_grads, d_gates_l = layer_backward(
            l, params, gates, d_x, x0, layer_cache, derivative, mistake
        )
        x0_shares[l] = d_x0_l
        if mistake != "forget_x0_path":
            d_x0 = d_x0 + d_x0_l  # every layer multiplies by x̂
        grads.update(layer_grads)
        if d_gates_l is not None:
            gate_shares[l] = d_gates_l
            if d_gates is None or mistake == "gate_grad_one_layer":
                d_gates = d_gates_l
            else:
                d_gates = d_gates + d_gates_l  # one set of gates serves every layer
    if d_gates is not None:
        for i in range(d_gates.shape[0]):
            grads[f"gates.{i}.weight"] = d_gates[i : i + 1]  # (1, N)
    d_params = {key: grads[key] for key in params}
    return Backward(d_x + d_x0, d_params, x0_shares, [s for s in gate_shares if s is not None])


def _crossnet_layer(l, p, gates, d_next, x0, layer_cache, derivative, mistake):
    x_l, cross = layer_cache
    d_cross = x0 * d_next  # dc_l = x̂ ⊙ dx_{l+1}, (B, N)
    grads = {
        f"kernels.{l}": d_cross.T @ x_l,  # (N, N)
        f"bias.{l}": d_cross.sum(axis=0)[:, None],  # (N, 1)
    }
    d_x = d_next + d_cross @ p[f"kernels.{l}"]  # identity path + cross path, (B, N)
    return d_x, cross * d_next, grads, None


def _low_rank_layer(l, p, gates, d_next, x0, layer_cache, derivative, mistake):
    x_l, projection, cross = layer_cache
    d_cross = x0 * d_next  # (B, N)
    d_projection = d_cross @ p[f"W_kernels.{l}"]  # dv_l = dc_l W_l, (B, r)
    grads = {
        f"W_kernels.{l}": d_cross.T @ projection,  # (N, r)
        f"V_kernels.{l}": d_projection.T @ x_l,  # (r, N)
        f"bias.{l}": d_cross.sum(axis=0),  # (N,)
    }
    d_x = d_next + d_projection @ p[f"V_kernels.{l}"]  # (B, N)
    return d_x, cross * d_next, grads, None


def _vector_layer(l, p, gates, d_next, x0, layer_cache, derivative, mistake):
    x_l, score = layer_cache
    d_score = np.sum(x0 * d_next, axis=1, keepdims=True)  # ds_l = Σ_N x̂ ⊙ dx_{l+1}, (B, 1)
    grads = {
        f"kernels.{l}": x_l.T @ d_score,  # (N, 1)
        f"bias.{l}": d_next.sum(axis=0)[:, None],  # (N, 1): the bias sits outside x̂'s product
    }
    d_x = d_next + d_score @ p[f"kernels.{l}"].T  # (B, N)
    return d_x, score * d_next, grads, None


def _mixture_layer(l, p, gates, d_next, x0, layer_cache, derivative, mistake):
    # The plain recurrence, with the experts' crosses c_lk formed (refimpl's fast form does
    # without them; tests/test_derivations_crossnet.py checks that the two agree).
    x_l, act1, act2, mix, probs = layer_cache
    u, v, c = (p[f"{name}_kernels.{l}"] for name in "UVC")
    cross = act2 @ u.transpose(0, 2, 1) + p[f"bias.{l}"][:, 0]  # c_lk = h̃_lk U_lkᵀ + b_l, (K, B, N)
    weights = probs.T[:, :, None]  # p_k per sample, (K, B, 1)
    d_mix = x0 * d_next  # dm_l = x̂ ⊙ dx_{l+1}, (B, N)
    d_x0 = mix * d_next  # m_l ⊙ dx_{l+1}, (B, N)
    d_x, d_gates = d_next, None
    if gates is not None:
        d_probs = np.sum(cross * d_mix, axis=2).T  # dp_lk = Σ_N c_lk ⊙ dm_l, (B, K)
        if mistake == "softmax_vjp_without_shift":
            d_logits = probs * d_probs  # wrong: the − (v·s) term is missing
        else:
            d_logits = probs * (d_probs - np.sum(probs * d_probs, axis=1, keepdims=True))  # (B, K)
        d_gates = d_logits.T @ x_l  # (K, N)
        d_x = d_x + d_logits @ gates  # the gate path, (B, N)
    d_cross = weights * d_mix  # dc_lk = p_lk dm_l, (K, B, N)
    d_act2 = d_cross @ u  # (K, B, r)
    d_pre2 = d_act2 * derivative(None, act2)  # through the second activation, (K, B, r)
    d_act1 = d_pre2 @ c  # (K, B, r)
    d_pre1 = d_act1 * derivative(None, act1)  # through the first activation, (K, B, r)
    grads = {
        f"U_kernels.{l}": d_cross.transpose(0, 2, 1) @ act2,  # (K, N, r)
        f"V_kernels.{l}": d_pre1.transpose(0, 2, 1) @ x_l,  # (K, r, N)
        f"bias.{l}": d_cross.sum(axis=(0, 1))[:, None],  # (N, 1)
        f"C_kernels.{l}": d_pre2.transpose(0, 2, 1) @ act1,  # (K, r, r)
    }
    d_x = d_x + np.sum(d_pre1 @ v, axis=0)  # the expert path, summed over experts, (B, N)
    return d_x, d_x0, grads, d_gates


def _heaviside(a) -> int:
    """ReLU's slope at an exact rational ``a``: SymPy's ``Heaviside(a, 0)``, 0 at 0 (PyTorch)."""
    return int(sp.Heaviside(sp.Rational(int(a.numerator), int(a.denominator)), 0))


# g'(pre, act) on arrays of exact values, entry by entry, read from the output act alone (as
# refimpl's, called with pre=None): tanh' = 1 − tanh², relu' = H(relu(a), 0) = H(a, 0).
_EXACT_DERIVATIVES = {
    "tanh": lambda pre, act: 1 - act * act,
    "identity": lambda pre, act: np.ones(np.shape(act), dtype=object),
    "relu": lambda pre, act: np.vectorize(_heaviside, otypes=[object])(act),
}


def split_combined_gradient(
    d_x: np.ndarray, num_sparse_features: int, mistake: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """InteractionDCNArch's own backward: the cross network's ``d_x`` back to dense and sparse.

    The forward only moves numbers, ``combined = concat(dense[:, None], sparse, axis=1)`` then
    ``x̂ = combined.reshape(B, N)``, so the backward moves the gradient back, as
    :mod:`refimpl.layers.dcn` does: ``d_combined = d_x.reshape(B, F+1, D)``, dense's gradient is row
    0 and sparse's rows 1 … F. Works on arrays of ring elements, rationals or floats.

    Parameters
    ----------
    d_x : ndarray, shape (B, N)
        ``∂L/∂x̂`` from the cross network's backward, N = (F+1)·D.
    num_sparse_features : int
        F >= 1.
    mistake : str, optional
        One of :data:`DCN_MISTAKES`, to split deliberately wrong: ``"dense_row_last"`` takes
        dense's gradient from the last row and sparse's from the first F (as if ``combined``
        were ``[sparse; dense]``); ``"reshape_transposed"`` undoes the reshape column-major,
        ``d_x.reshape(B, D, F+1)`` transposed, reading entry (f, j) from ``f + j·(F+1)``
        instead of ``f·D + j``.

    Returns
    -------
    d_dense : ndarray, shape (B, D)
    d_sparse : ndarray, shape (B, F, D)

    >>> d_dense, d_sparse = split_combined_gradient(np.arange(6.0).reshape(1, 6), 2)  # D = 2
    >>> d_dense, d_sparse
    (array([[0., 1.]]), array([[[2., 3.],
            [4., 5.]]]))
    """
    if mistake is not None and mistake not in DCN_MISTAKES:
        raise ValueError(f"mistake: expected None or one of {DCN_MISTAKES}, got {mistake!r}")
    batch, width = d_x.shape
    rows = num_sparse_features + 1  # F+1
    dim = width // rows  # D
    if mistake == "reshape_transposed":
        d_combined = d_x.reshape(batch, dim, rows).transpose(0, 2, 1)  # wrong order, (B, F+1, D)
    else:
        d_combined = d_x.reshape(batch, rows, dim)  # the reshape undone, row-major, (B, F+1, D)
    if mistake == "dense_row_last":
        return d_combined[:, -1], d_combined[:, :-1]  # wrong: dense is row 0
    return d_combined[:, 0], d_combined[:, 1:]  # (B, D), (B, F, D)


def _closed_leaves(cfg: Config, closed: Backward, mistake: str | None = None) -> dict:
    """The closed form keyed like :meth:`Network.leaves`: the network's gradients as they are,
    or, inside the DCN, ``d_x`` split into dense and sparse and the keys prefixed."""
    if not cfg.dcn:
        return {"x": closed.d_x, **closed.d_params}
    split = mistake if mistake in DCN_MISTAKES else None
    d_dense, d_sparse = split_combined_gradient(closed.d_x, cfg.num_sparse_features, split)
    d_params = {f"crossnet.{key}": value for key, value in closed.d_params.items()}
    return {"dense": d_dense, "sparse": d_sparse, **d_params}


# --------------------------------------------------------------------------------------------
# The symbolic gradient
# --------------------------------------------------------------------------------------------


def _leaf_index(net: Network) -> dict[str, np.ndarray]:
    """For every leaf array (x, parameters), the ring indices of its symbols, same shape."""
    position = {g: i for i, g in enumerate(net.ring.gens)}
    return {
        key: np.vectorize(lambda s: position[s], otypes=[int])(arr)
        for key, arr in net.leaves().items()
    }


def symbolic_gradient(net: Network) -> dict[str, np.ndarray]:
    """``∂L/∂x`` and ``∂L/∂θ`` for a network without atoms: ``L.diff(s)`` for every symbol s.

    Returns
    -------
    dict of str to ndarray of PolyElement
        ``"x"`` (B, N), then every parameter, each shaped like it.

    >>> net = network("VectorCrossNet", in_features=2, num_layers=1, batch=1)
    >>> symbolic_gradient(net)["kernels.0"][1, 0].as_expr()
    g_{0,0}*x_{0,0}*x_{0,1} + g_{0,1}*x_{0,1}**2
    """
    if not net.symbolic:
        raise ValueError(
            f"{net.config.label()} has nonlinearities; its gradient is taken at a point "
            "(gradient_at_point)"
        )
    return _symbolic_gradient(net.config)


@lru_cache(maxsize=64)
def _symbolic_gradient(cfg: Config) -> dict[str, np.ndarray]:
    net = _network(cfg)
    return {
        key: np.vectorize(net.loss.diff, otypes=[object])(arr) for key, arr in net.leaves().items()
    }


class _Pieces(NamedTuple):
    """The partial derivatives the chain rule through the atoms needs, as polynomials."""

    leaf_index: dict[str, np.ndarray]  # ring index of every leaf symbol
    loss_partials: dict[int, PolyElement]  # ∂L/∂s for every leaf s (explicit dependence)
    loss_atom_partials: list[PolyElement]  # ∂L/∂a_j for every atom
    argument_partials: list[dict[int, PolyElement]]  # ∂u_j/∂(leaf or earlier atom), nonzero


@lru_cache(maxsize=64)
def _pieces(cfg: Config) -> _Pieces:
    net = _network(cfg)
    gens = net.ring.gens
    index = _leaf_index(net)
    loss_partials = {int(i): net.loss.diff(gens[i]) for arr in index.values() for i in arr.ravel()}
    loss_atoms = [net.loss.diff(a.symbol) for a in net.atoms]
    argument_partials = []
    for atom in net.atoms:
        used = sorted({i for m in atom.argument.monoms() for i, e in enumerate(m) if e})
        argument_partials.append({i: atom.argument.diff(gens[i]) for i in used})
    return _Pieces(index, loss_partials, loss_atoms, argument_partials)


def _slope(function: str, value, argument_value):
    """``φ'(u)`` from the atom's value ``φ(u)`` and its argument ``u``."""
    if function == "tanh":
        return 1 - value * value
    if function == "exp":
        return value
    if function == "recip":
        return -value * value
    if function == "relu":
        if isinstance(argument_value, float):
            return float(argument_value > 0)  # Heaviside(u, 0) in floating point
        return _heaviside(argument_value)
    raise ValueError(f"unknown atom function {function!r}")


def _chain_rule(net: Network, pieces: _Pieces, evaluate, values: list):
    """The total derivative through the atoms, at a point (exact rationals or floats).

    ``evaluate(poly)`` gives a polynomial's value at the point (G kept symbolic or not).
    Forward mode, atom by atom: ``D_j = d(u_j)/d(leaves)``, then ``dL/d(leaves)``.
    """
    atom_index = {a.symbol: net.ring.gens.index(a.symbol) for a in net.atoms}
    position = {atom_index[a.symbol]: j for j, a in enumerate(net.atoms)}
    slopes = []
    for atom in net.atoms:
        slopes.append(
            _slope(atom.function, values[atom_index[atom.symbol]], evaluate(atom.argument))
        )
    totals: list[dict[int, object]] = []  # D_j: leaf index -> d(u_j)/d(leaf)
    for partials in pieces.argument_partials:
        total: dict[int, object] = {}
        for i, poly in partials.items():
            coefficient = evaluate(poly)
            if i in position:  # an earlier atom: chain through it
                k = position[i]
                for leaf, value in totals[k].items():
                    total[leaf] = total.get(leaf, 0) + coefficient * slopes[k] * value
            else:
                total[i] = total.get(i, 0) + coefficient
        totals.append(total)
    grads = {i: evaluate(poly) for i, poly in pieces.loss_partials.items()}
    for j, poly in enumerate(pieces.loss_atom_partials):
        coefficient = evaluate(poly) * slopes[j]
        for leaf, value in totals[j].items():
            grads[leaf] = grads[leaf] + coefficient * value
    return {
        key: np.vectorize(lambda i: grads[int(i)], otypes=[object])(idx)
        for key, idx in pieces.leaf_index.items()
    }


# --------------------------------------------------------------------------------------------
# The mixture's exact proof at a random rational point
# --------------------------------------------------------------------------------------------


class RationalPoint(NamedTuple):
    """A point of the mixture's ring: a rational for every symbol but G's.

    Attributes
    ----------
    values : list
        One exact rational per ring symbol (None for G's, which stay symbols).
    upstream_ring : PolyRing
        QQ[g…], where the gradient's values live.
    """

    values: list
    upstream_ring: PolyRing


def _random_rational(rng: np.random.Generator, low: int, high: int):
    """``n / 2⁴⁰`` for ``n`` uniform in [low, high]: every value has probability ≤ 2⁻⁴¹."""
    return QQ(int(rng.integers(low, high, endpoint=True)), _POINT_SCALE)


def rational_point(net: Network, seed: int = _POINT_SEED) -> RationalPoint:
    """Random rationals for the inputs, parameters and transcendental atoms of ``net``.

    tanh values are drawn in (−1, 1) and exp values positive, like the real ones, though the
    proof does not need it; relu values are ``max(u, 0)`` of their argument's exact value, and
    each softmax normaliser ``q = 1/Σ e`` is exact too. A relu argument of exactly 0 is refused
    (a kink) unless it is 0 on a whole neighbourhood (:func:`_dead`).
    """
    rng = np.random.default_rng(seed)
    gens = net.ring.gens
    n_up = net.upstream.size  # G's symbols come first and stay symbols
    values: list = [None] * len(gens)
    atom_at = {gens.index(a.symbol): a for a in net.atoms}
    for i in range(n_up, len(gens)):
        atom = atom_at.get(i)
        if atom is None:  # an input or a parameter: in [−2, 2]
            values[i] = _random_rational(rng, -2 * _POINT_SCALE, 2 * _POINT_SCALE)
        elif atom.function == "tanh":  # in (−1, 1)
            values[i] = _random_rational(rng, 1 - _POINT_SCALE, _POINT_SCALE - 1)
        elif atom.function == "exp":  # in (0, 4]
            values[i] = _random_rational(rng, 1, 4 * _POINT_SCALE)
    up_ring = ring(net.ring.symbols[:n_up], QQ)[0]
    point = RationalPoint(values, up_ring)
    # relu and 1/Σe follow from their arguments, in forward order (arguments use earlier atoms).
    for atom in net.atoms:
        i = gens.index(atom.symbol)
        if atom.function == "relu":
            argument = _evaluate_exact(atom.argument, point)
            if argument == 0 and not _dead(atom.argument, point, atom_at):
                raise ValueError(f"{atom.name}: a relu argument at its kink; use another seed")
            values[i] = max(argument, QQ(0))
        elif atom.function == "recip":
            values[i] = 1 / _evaluate_exact(atom.argument, point)
    return point


def _dead(argument: PolyElement, point: RationalPoint, atom_at: dict) -> bool:
    """True when every term of ``argument`` holds a relu whose argument is negative: then
    ``argument`` is 0 on a whole neighbourhood (its relu inputs are all off), not at a kink.
    (With rank 1 a second pre-activation ``C h`` is often such a product with a dead ``h``.)"""
    for monom in argument.monoms():
        if not any(
            e and i in atom_at and atom_at[i].function == "relu" and point.values[i] == 0
            for i, e in enumerate(monom)
        ):
            return False
    return True


def _evaluate_exact(poly: PolyElement, point: RationalPoint):
    """``poly`` at ``point``: an exact rational, or a polynomial in G if ``poly`` involves G."""
    n_up = point.upstream_ring.ngens
    values = point.values
    out: dict[tuple, object] = {}
    for monom, coeff in poly.items():
        term = coeff
        for i, e in enumerate(monom[n_up:], start=n_up):
            if e:
                term = term * values[i] ** e
        key = monom[:n_up]
        out[key] = out.get(key, 0) + term
    if all(not any(k) for k in out):
        return out.get((0,) * n_up, QQ(0))
    return point.upstream_ring.from_dict(out)


def _evaluate_array(array: np.ndarray, point: RationalPoint) -> np.ndarray:
    def one(v):
        return _evaluate_exact(v, point) if isinstance(v, PolyElement) else QQ(v)

    return np.vectorize(one, otypes=[object])(array)


def gradient_at_point(net: Network, point: RationalPoint) -> dict[str, np.ndarray]:
    """The true gradient (partials plus the chain rule through the atoms) at ``point``, exactly.

    Returns
    -------
    dict of str to ndarray
        Like :func:`symbolic_gradient`; entries are polynomials in G with rational
        coefficients.
    """
    pieces = _pieces(net.config)
    return _chain_rule(net, pieces, lambda poly: _evaluate_exact(poly, point), point.values)


def closed_form_at_point(
    net: Network, point: RationalPoint, mistake: str | None = None
) -> Backward:
    """refimpl's recurrence on the forward's exact values at ``point``, with G symbolic."""
    cache = type(net.cache)(*(_evaluate_array(a, point) for a in net.cache))
    params = {k: _evaluate_array(v, point) for k, v in net.params.items()}
    upstream = np.array(point.upstream_ring.gens, dtype=object).reshape(net.upstream.shape)
    derivative = _EXACT_DERIVATIVES[net.config.activation] if net.config.activation else None
    return closed_form_backward(
        net.config.kind, params, cache, upstream, derivative=derivative, mistake=mistake
    )


# --------------------------------------------------------------------------------------------
# Proofs
# --------------------------------------------------------------------------------------------


def _difference(truth: dict[str, np.ndarray], found: dict[str, np.ndarray]) -> str | None:
    """Where the closed form differs from the truth first, or None if nowhere."""
    for key, expected in truth.items():
        got = found[key]
        if got.shape != expected.shape:
            return f"{key}: shape {got.shape}, expected {expected.shape}"
        for idx in np.ndindex(*expected.shape):
            if got[idx] - expected[idx] != 0:
                return f"{key}{list(idx)}: differs by {_expr(got[idx] - expected[idx])}"
    return None


def compare(kind: str, mistake: str | None = None, **config) -> str | None:
    """Compare the recurrence (optionally with a deliberate ``mistake``) with the gradient.

    Returns None when they are exactly equal, else a description of the first difference.
    Fully symbolic for networks without atoms; at :func:`rational_point` otherwise.
    ``mistake`` is one of :data:`MISTAKES` (in the cross network's recurrence) or, for
    ``kind="InteractionDCNArch"``, of :data:`DCN_MISTAKES` (in the split into dense and
    sparse, :func:`split_combined_gradient`).

    >>> compare(DCN, "dense_row_last", crossnet_kind="VectorCrossNet", num_sparse_features=1)[:9]
    'dense[0, '
    """
    cfg = make_config(kind, **config)
    if mistake in DCN_MISTAKES and not cfg.dcn:
        raise ValueError(f"mistake: {mistake!r} is a mistake of {DCN}'s split, not of {kind}")
    known = (*MISTAKES, *DCN_MISTAKES) if cfg.dcn else MISTAKES
    if mistake is not None and mistake not in known:
        raise ValueError(f"mistake: expected None or one of {known}, got {mistake!r}")
    return _compare(cfg, mistake)


@lru_cache(maxsize=128)
def _compare(cfg: Config, mistake: str | None) -> str | None:
    net = _network(cfg)
    in_network = mistake if mistake in MISTAKES else None  # the others are in the DCN's split
    if net.symbolic:
        derivative = _EXACT_DERIVATIVES[cfg.activation] if cfg.activation else None
        closed = closed_form_backward(
            cfg.kind, net.params, net.cache, net.upstream, derivative=derivative, mistake=in_network
        )
        return _difference(_symbolic_gradient(cfg), _closed_leaves(cfg, closed, mistake))
    point = rational_point(net)
    closed = closed_form_at_point(net, point, in_network)
    return _difference(gradient_at_point(net, point), _closed_leaves(cfg, closed, mistake))


def prove_closed_form(kind: str, **config) -> str:
    """Prove that refimpl's recurrence equals the symbolic gradient; AssertionError if not.

    Returns
    -------
    str
        The statement proven, saying how (fully symbolic, or exact at a random point).

    >>> prove_closed_form("LowRankCrossNet", in_features=3, low_rank=1)
    'LowRankCrossNet B=2 N=3 L=2 r=1: the recurrence equals the symbolic gradient (fully symbolic)'
    >>> dcn = prove_closed_form(DCN, crossnet_kind="VectorCrossNet", num_sparse_features=1)
    >>> label, statement = dcn.split(": ")
    >>> label
    'InteractionDCNArch B=2 F=1 D=2 over VectorCrossNet N=4 L=2'
    >>> statement
    'the recurrence, split into dense and sparse, equals the symbolic gradient (fully symbolic)'
    """
    cfg = make_config(kind, **config)
    problem = _compare(cfg, None)
    if problem is not None:
        raise AssertionError(f"not proven for {cfg.label()}: {problem}")
    how = "fully symbolic" if _network(cfg).symbolic else "exact at a random rational point"
    what = "the recurrence, split into dense and sparse," if cfg.dcn else "the recurrence"
    return f"{cfg.label()}: {what} equals the symbolic gradient ({how})"


def prove_derivative_rules() -> list[str]:
    """The slope rules the chain rule through atoms uses, proven with ``sympy.diff``.

    ``d tanh(u)/du = 1 − tanh(u)²``, ``d exp(u)/du = exp(u)``, ``d(1/u)/du = −(1/u)²``, and
    ReLU written as ``u·Heaviside(u, 0)`` has slope ``Heaviside(u, 0)`` for u ≠ 0 with value 0
    at 0 (PyTorch's convention; SymPy's own ``Heaviside(0)`` is 1/2).

    >>> len(prove_derivative_rules())
    4
    """
    u = sp.Symbol("u", real=True)
    rules = [
        (sp.tanh(u), 1 - sp.tanh(u) ** 2, "tanh'(u) = 1 − tanh(u)²"),
        (sp.exp(u), sp.exp(u), "exp'(u) = exp(u)"),
        (1 / u, -((1 / u) ** 2), "(1/u)' = −(1/u)²"),
    ]
    proven = []
    for f, slope, statement in rules:
        if sp.simplify(sp.diff(f, u) - slope) != 0:
            raise AssertionError(f"not proven: {statement}")
        proven.append(statement)
    relu = sp.Piecewise((u, u > 0), (0, True))
    for value in (sp.Rational(3, 7), sp.Rational(-2, 5)):
        if sp.diff(relu, u).subs(u, value) != sp.Heaviside(value, 0):
            raise AssertionError("not proven: relu'(u) = Heaviside(u, 0) away from 0")
    if sp.Heaviside(0, 0) != 0 or sp.Heaviside(0) != sp.Rational(1, 2):
        raise AssertionError("Heaviside's value at 0 is not what this module says")
    proven.append("relu'(u) = Heaviside(u, 0) for u ≠ 0, and Heaviside(0, 0) = 0")
    return proven


def softmax_symbols(num_experts: int = 3) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix]:
    """Logits ``z`` (K, 1), an upstream vector ``v`` (K, 1) and ``s = softmax(z)`` (K, 1)."""
    z = sp.Matrix(sp.symbols(f"z_0:{num_experts}", real=True))
    v = sp.Matrix(sp.symbols(f"v_0:{num_experts}", real=True))
    exps = z.applyfunc(sp.exp)
    return z, v, exps / sum(exps)


def prove_softmax_vjp(num_experts: int = 3) -> list[str]:
    """The softmax's Jacobian and vector–Jacobian product, proven with SymPy.

    1. ``∂s_i/∂z_j = s_i (δ_ij − s_j)``, i.e. ``J = diag(s) − s sᵀ`` (``sympy.diff`` of
       ``exp(z_i)/Σ_k exp(z_k)``, the difference simplified to 0);
    2. ``vᵀ J = s ⊙ (v − v·s)`` for symbolic ``s`` and ``v`` (expanded to 0) — the form refimpl
       uses: it never builds the K × K Jacobian;
    3. shifting every logit by the same ``c`` leaves ``s`` unchanged, so refimpl may subtract
       the row maximum before ``exp`` (no overflow at logits like 1e4);
    4. the same product without ``− (v·s)`` is *not* ``vᵀJ`` (the check can fail).

    >>> len(prove_softmax_vjp(2))
    4
    """
    z, v, s = softmax_symbols(num_experts)
    k = num_experts
    jacobian = s.jacobian(z)
    formula = sp.diag(*s) - s * s.T
    if any(sp.simplify(e) != 0 for e in jacobian - formula):
        raise AssertionError("not proven: J = diag(s) − s sᵀ")
    ss = sp.Matrix(sp.symbols(f"s_0:{k}", real=True))
    j_free = sp.diag(*ss) - ss * ss.T
    vjp = (v.T * j_free).T  # (K, 1)
    dot = (v.T * ss)[0, 0]
    closed = ss.multiply_elementwise(v - dot * sp.ones(k, 1))
    if any(sp.expand(e) != 0 for e in vjp - closed):
        raise AssertionError("not proven: vᵀ J = s ⊙ (v − v·s)")
    c = sp.Symbol("c", real=True)
    shifted = z.applyfunc(lambda zi: sp.exp(zi - c))
    if any(sp.simplify(e) != 0 for e in shifted / sum(shifted) - s):
        raise AssertionError("not proven: softmax(z − c) = softmax(z)")
    if all(sp.expand(e) == 0 for e in vjp - ss.multiply_elementwise(v)):
        raise AssertionError("s ⊙ v unexpectedly equals vᵀ J")
    return [
        "J = diag(s) − s sᵀ",
        "vᵀ J = s ⊙ (v − v·s)",
        "softmax(z − c) = softmax(z)",
        "s ⊙ v ≠ vᵀ J (the shift term matters)",
    ]


# --------------------------------------------------------------------------------------------
# The witness `python -m refimpl check` runs
# --------------------------------------------------------------------------------------------


class FloatPolynomials:
    """Many ring polynomials compiled for float64 evaluation, term by term, all at once.

    This is what ``sympy.lambdify`` of the expanded polynomials would compute, without its
    printer: lambdify needs about 50 s to print CrossNet's gradient at N = 12, this about 0.1 s.

    >>> R, a, b = ring("a b", QQ)
    >>> FloatPolynomials([a**2 * b - 3, 2 * a], R.ngens)(np.array([2.0, 0.5]))
    array([-1.,  4.])
    """

    def __init__(self, polys, ngens: int):
        self.size = len(polys)
        monoms, coeffs, owner = [], [], []
        for k, poly in enumerate(polys):
            for monom, coeff in poly.items():
                monoms.append(monom)
                coeffs.append(float(coeff))
                owner.append(k)
        exponents = np.array(monoms, dtype=np.int16).reshape(len(monoms), ngens)  # (T, S)
        exponents = np.concatenate([exponents, np.ones((len(monoms), 1), np.int16)], axis=1)
        terms, gens = np.nonzero(exponents)  # every term has the constant 1 as a last factor
        self._gens = gens
        self._exponents = exponents[terms, gens]
        self._starts = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
        self._coeffs = np.array(coeffs)
        self._owner = np.array(owner, dtype=int)

    def __call__(self, point: np.ndarray) -> np.ndarray:
        if not self._coeffs.size:
            return np.zeros(self.size)
        values = np.append(np.asarray(point, dtype=float), 1.0)[self._gens] ** self._exponents
        terms = self._coeffs * np.multiply.reduceat(values, self._starts)  # (T,)
        return np.bincount(self._owner, weights=terms, minlength=self.size)


class _Compiled(NamedTuple):
    """One configuration's polynomials compiled for float64 (see :class:`FloatPolynomials`)."""

    output: FloatPolynomials  # Y, B·N entries
    gradients: FloatPolynomials | None  # polynomial networks: every leaf's gradient, flattened
    arguments: list  # mixture: one compiled argument per atom
    pieces: FloatPolynomials | None  # mixture: ∂L/∂leaf…, ∂L/∂atom…, ∂u_j/∂… flattened


@lru_cache(maxsize=64)
def _compiled(cfg: Config) -> _Compiled:
    net = _network(cfg)
    ngens = net.ring.ngens
    output = FloatPolynomials(list(net.output.ravel()), ngens)
    if net.symbolic:
        grads = _symbolic_gradient(cfg)
        flat = [p for v in grads.values() for p in v.ravel()]
        return _Compiled(output, FloatPolynomials(flat, ngens), [], None)
    pieces = _pieces(cfg)
    flat = list(pieces.loss_partials.values()) + list(pieces.loss_atom_partials)
    flat += [p for partials in pieces.argument_partials for p in partials.values()]
    arguments = [FloatPolynomials([a.argument], ngens) for a in net.atoms]
    return _Compiled(output, None, arguments, FloatPolynomials(flat, ngens))


_FLOAT_FUNCTIONS = {
    "tanh": np.tanh,
    "relu": lambda u: max(u, 0.0),
    "exp": np.exp,
    "recip": lambda u: 1.0 / u,
}


def evaluate_float(
    kind: str, values: dict[str, np.ndarray], upstream: np.ndarray, **config
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The symbolic output and gradient evaluated in float64 at given numbers.

    Networks without atoms: the gradient polynomials themselves. The mixture: every atom's
    value from its argument (tanh, relu, exp, 1/Σe), then the same chain rule as the exact
    proof, on the partial derivatives' float values.

    Parameters
    ----------
    values : dict
        ``"x"`` (B, N) and every parameter, keyed like TorchRec's ``state_dict()``; inside the
        DCN ``"dense"`` (B, D), ``"sparse"`` (B, F, D) and the ``crossnet.`` keys
        (:meth:`Network.leaves`).
    upstream : ndarray, shape (B, N)
        G.

    Returns
    -------
    output : ndarray, shape (B, N)
    gradients : dict
        Every input and parameter, keyed like ``values``, each shaped like it.
    """
    cfg = make_config(kind, **config)
    net = _network(cfg)
    compiled = _compiled(cfg)
    position = {g: i for i, g in enumerate(net.ring.gens)}
    point = np.zeros(net.ring.ngens)
    named = {"upstream": (net.upstream, upstream)}
    named.update({key: (sym, values[key]) for key, sym in net.leaves().items()})
    for symbols, numbers in named.values():
        index = [position[s] for s in symbols.ravel()]
        point[index] = np.asarray(numbers, dtype=float).ravel()
    arguments = {}
    for atom, argument in zip(net.atoms, compiled.arguments, strict=True):
        arguments[id(atom.argument)] = float(argument(point)[0])
        value = _FLOAT_FUNCTIONS[atom.function](arguments[id(atom.argument)])
        point[position[atom.symbol]] = value
    output = compiled.output(point).reshape(net.output.shape)
    leaves = net.leaves()
    if net.symbolic:
        flat, grads, start = compiled.gradients(point), {}, 0
        for key, arr in leaves.items():
            grads[key] = flat[start : start + arr.size].reshape(arr.shape)
            start += arr.size
        return output, grads
    pieces = _pieces(cfg)
    polys = list(pieces.loss_partials.values()) + list(pieces.loss_atom_partials)
    polys += [p for partials in pieces.argument_partials for p in partials.values()]
    numbers = dict(zip(map(id, polys), compiled.pieces(point), strict=True))
    numbers.update(arguments)
    grads = _chain_rule(net, pieces, lambda poly: float(numbers[id(poly)]), list(point))
    return output, {k: v.astype(float) for k, v in grads.items()}


def _draw_values(cfg: Config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    net = _network(cfg)
    values = {}
    for key, arr in net.leaves().items():
        if key in net.inputs:  # random sign, magnitude in [0.5, 1.5]
            values[key] = rng.choice([-1.0, 1.0], size=arr.shape) * rng.uniform(0.5, 1.5, arr.shape)
        else:
            values[key] = 0.5 * rng.standard_normal(arr.shape)
    return values


def _refimpl_layer(cfg: Config):
    """The refimpl layer of ``cfg``: the cross network, or InteractionDCNArch around it."""
    net = getattr(refimpl, cfg.kind)(**cfg.layer_kwargs())
    return refimpl.InteractionDCNArch(cfg.num_sparse_features, net) if cfg.dcn else net


def _vanishing(ours: np.ndarray, symbolic: np.ndarray) -> bool:
    """A gradient that is zero up to round-off here, on either side, without being exactly zero
    on both: e.g. the gates' when every relu expert is off, which one side may compute as an
    exact 0 and the other as ~1e-16 of cancellation. Such a draw compares round-off with
    round-off and is skipped."""
    small = max(np.abs(ours).max(), np.abs(symbolic).max()) < 1e-6
    return bool(small and (np.any(ours != 0) or np.any(symbolic != 0)))


def witness_errors(kind: str, seed: int = 0, **config) -> dict[str, float]:
    """Prove the configuration, then refimpl against the float64 symbolic values, per array.

    Uncached (:func:`symbolic_witness` is cached): it builds the refimpl layer afresh.

    Returns
    -------
    dict
        ``"output"``, each input (``"x"``, or ``"dense"`` and ``"sparse"``) and every
        parameter key -> worst relative error.
    """
    cfg = make_config(kind, **config)
    prove_closed_form(kind, **config)
    rng = np.random.default_rng(seed)
    layer = _refimpl_layer(cfg)
    net = _network(cfg)
    for _ in range(100):
        values = _draw_values(cfg, rng)
        upstream = rng.standard_normal((cfg.batch, cfg.in_features))  # G, (B, N)
        layer.load_state_dict({k: v for k, v in values.items() if k not in net.inputs})
        inputs = [values[name] for name in net.inputs]
        if layer.kink_distance(*inputs) < 1e-3:
            continue  # too close to a relu kink
        out, cache = layer.forward(*inputs)
        *d_inputs, d_params = layer.backward(upstream, cache)
        out_sym, grads_sym = evaluate_float(kind, values, upstream, **config)
        ours = {**dict(zip(net.inputs, d_inputs, strict=True)), **d_params}
        if not any(_vanishing(ours[key], grads_sym[key]) for key in ours):
            break  # else a gradient is zero up to round-off (e.g. every relu expert off)
    else:  # pragma: no cover - a relu network whose every draw is degenerate
        raise RuntimeError("no draw away from the relu kinks with non-vanishing gradients")
    errors = {"output": rel_error(out, out_sym)}
    for name, grad in zip(net.inputs, d_inputs, strict=True):
        errors[name] = rel_error(grad, grads_sym[name])
    errors.update({k: rel_error(v, grads_sym[k]) for k, v in d_params.items()})
    return errors


def symbolic_witness(kind: str, seed: int = 0, **config) -> float:
    """Prove ``kind`` at ``config`` exactly, then measure refimpl against the symbolic gradient.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`, or ``"InteractionDCNArch"``: the network ``crossnet_kind``
        over ``combined = concat(dense[:, None], sparse, axis=1).reshape(B, N)``, its
        gradient taken with respect to ``dense``, ``sparse`` and every ``crossnet.`` parameter.
    seed : int
        Draws the float64 numbers (inputs, parameters, G) the symbolic gradient and refimpl's
        backward are compared on.
    **config
        ``in_features``, ``num_layers``, ``low_rank``, ``num_experts``, ``activation``,
        ``batch`` (defaults B=2, N=4, L=2, r=2, K=2, tanh); for the DCN ``crossnet_kind``
        and ``num_sparse_features``, ``embedding_dim`` in place of ``in_features`` (defaults
        F=2, D=2, so N=6).

    Returns
    -------
    float
        The worst :func:`refimpl.tools.gradcheck.rel_error` of refimpl's output, input gradients and
        every parameter gradient against the lambdified symbolic ones (round-off, ~1e-15).
        Cached.

    >>> symbolic_witness("VectorCrossNet", in_features=3) < 1e-12
    True
    >>> symbolic_witness("InteractionDCNArch", crossnet_kind="CrossNet") < 1e-12
    True
    """
    return _witness(make_config(kind, **config), int(seed))


@lru_cache(maxsize=128)
def _witness(cfg: Config, seed: int) -> float:
    return max(witness_errors(cfg.layer, seed, **_config_kwargs(cfg)).values())


def _config_kwargs(cfg: Config) -> dict:
    """The keyword configuration that :func:`make_config` turns back into ``cfg``."""
    out = {"batch": cfg.batch, "num_layers": cfg.num_layers}
    out.update({k: v for k, v in cfg.layer_kwargs().items() if k != "num_layers"})
    if cfg.dcn:
        del out["in_features"]
        out.update(
            crossnet_kind=cfg.kind,
            num_sparse_features=cfg.num_sparse_features,
            embedding_dim=cfg.embedding_dim,
        )
    return out
