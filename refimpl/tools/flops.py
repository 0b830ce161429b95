"""Analytic floating-point operation counts for every layer, forward and backward.

``python -m refimpl bench`` divides these counts by measured times to report GFLOP/s. They count
the work the layer's formulas (the textbook forward and backward beside each layer) require,
not what a particular implementation happens to do: a layer that computes the whole of
``C Cᵀ`` to keep half of it does more arithmetic than it is credited with.

The convention, which ``tests/test_flops.py`` checks against per-scalar loops that count every
operation they perform:

- Each scalar ``+``, ``−``, ``×``, ``÷``, ``exp`` and ``tanh`` is one FLOP.
- Every Σ (a dot product, a matrix product's inner sum, a sum over the batch, over the layers
  or over the experts) starts from zero, so summing k terms costs k additions and a length-k
  dot product costs 2k FLOPs (k multiply-adds at 2 each: the usual ``2·m·n·k`` for a matrix
  product). A ``+`` written between two terms of a formula (a bias, a residual, a second
  gradient path) is one FLOP per element.
- Free: comparisons and selections (ReLU, its derivative mask, the max subtracted before a
  softmax's exp), copies, concatenations, gathers, scatters and reshapes.

Letters as everywhere: B batch, F sparse features, D embedding dim, N = (F+1)·D, L layers,
r low rank, K experts, P kept pairs of the dot interaction.

>>> dot_flops(batch=1024, num_sparse_features=26, embedding_dim=128).forward  # 2·B·P·D
92012544
>>> crossnet_flops(batch=2, in_features=3, num_layers=1)  # doctest: +NORMALIZE_WHITESPACE
FlopCount(forward=54, backward=108)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from refimpl.layers.activations import ACTIVATIONS, get_activation

# Per element: (forward, backward) FLOPs of each activation, as the registry counts them.
ACTIVATION_FLOPS = {name: act.flops for name, act in ACTIVATIONS.items()}


class FlopCount(NamedTuple):
    """FLOPs of one forward and of one backward (parameter and input gradients)."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        """Forward plus backward: one training step of the layer."""
        return self.forward + self.backward

    def __add__(self, other):  # type: ignore[override]  # counts add, tuples would concatenate
        return FlopCount(self.forward + other.forward, self.backward + other.backward)


def matmul_flops(m: int, k: int, n: int) -> int:
    """``2·m·k·n``: an (m, k) by (k, n) matrix product (the GEMM peak's count)."""
    return 2 * m * k * n


def _activation(name: str) -> tuple[int, int]:
    return get_activation(name).flops


def num_pairs(num_sparse_features: int, self_interaction: bool = False) -> int:
    """P, the pairs the dot interaction keeps: F(F+1)/2, or (F+1)(F+2)/2 with the diagonal."""
    n = num_sparse_features + 1
    return n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2


def dot_flops(
    batch: int, num_sparse_features: int, embedding_dim: int, self_interaction: bool = False
) -> FlopCount:
    """InteractionArch: only the kept pairs' dot products.

    Forward: one length-D dot product per kept pair, ``2·B·P·D``. Backward: each pair (i, j)
    adds ``g·C[j]`` into ``dC[i]`` and ``g·C[i]`` into ``dC[j]`` (``4·B·P·D``), then
    ``d_dense = d_out[:, :D] + dC[:, 0]`` (``B·D``). F = 0 is a passthrough: nothing.
    """
    if num_sparse_features == 0:
        return FlopCount(0, 0)
    b, d, p = batch, embedding_dim, num_pairs(num_sparse_features, self_interaction)
    return FlopCount(2 * b * p * d, 4 * b * p * d + b * d)


def crossnet_flops(batch: int, in_features: int, num_layers: int) -> FlopCount:
    """CrossNet: ``x₊ = x₀ ⊙ (W x + b) + x``, W (N, N).

    Forward per layer and sample: ``W x`` 2N², ``+ b``, ``x₀ ⊙``, ``+ x`` 3N.
    Backward per layer: ``dc = x₀ ⊙ g`` (N), ``c ⊙ g`` (N) summed over layers into ``dx₀``
    (N), ``dx = g + dc W`` (2N² + N) per sample; ``dW = dcᵀ x`` (2BN²) and ``db = Σ_b dc``
    (BN) per layer; finally ``d_input = dx_0 + dx₀`` (BN).
    """
    b, n, L = batch, in_features, num_layers
    return FlopCount(L * b * n * (2 * n + 3), L * b * n * (4 * n + 5) + b * n)


def low_rank_crossnet_flops(
    batch: int, in_features: int, num_layers: int, low_rank: int
) -> FlopCount:
    """LowRankCrossNet: ``x₊ = x₀ ⊙ (W (V x) + b) + x``, W (N, r), V (r, N).

    Forward per layer and sample: ``V x`` and ``W ·`` 2Nr each, then 3N as CrossNet.
    Backward per layer: ``dc`` N, ``d(Vx) = dc W`` 2Nr, ``dx = g + d(Vx) V`` 2Nr + N,
    ``c ⊙ g`` into ``dx₀`` 2N per sample; ``dW``, ``dV`` 2BNr each, ``db`` BN; then BN at the
    end.
    """
    b, n, L, r = batch, in_features, num_layers, low_rank
    return FlopCount(L * b * (4 * n * r + 3 * n), L * b * (8 * n * r + 5 * n) + b * n)


def vector_crossnet_flops(batch: int, in_features: int, num_layers: int) -> FlopCount:
    """VectorCrossNet: ``x₊ = x₀ (x·w) + b + x``, w (N, 1).

    Forward per layer and sample: ``x·w`` 2N, ``x₀ s + b + x`` 3N. Backward per layer:
    ``ds = g·x₀`` 2N, ``g s`` into ``dx₀`` 2N, ``dx = g + ds w`` 2N per sample; ``dw = Σ_b ds x``
    2BN and ``db = Σ_b g`` BN; then BN at the end.
    """
    b, n, L = batch, in_features, num_layers
    return FlopCount(5 * L * b * n, 9 * L * b * n + b * n)


def mixture_crossnet_flops(
    batch: int,
    in_features: int,
    num_layers: int,
    num_experts: int = 1,
    low_rank: int = 1,
    activation: str = "relu",
) -> FlopCount:
    """LowRankMixtureCrossNet with K experts ``x₀ ⊙ (U φ(C φ(V x)) + b)``, gated when K > 1.

    Forward per layer, sample and expert: ``V x`` 2Nr, ``C ·`` 2r², ``U ·`` 2Nr, two
    activations, ``+ b`` and ``x₀ ⊙`` 2N. With K > 1 the gate logits ``gates_k · x`` (2N each),
    the softmax (``z − max``, exp, Σ, ÷: 4 per expert) and the mixture ``Σ_k p_k e_k`` (2KN);
    then ``+ x`` (N).

    Backward per layer and sample, each expert: ``dc = x₀ ⊙ de`` N, ``c ⊙ de`` into ``dx₀``
    2N, ``dq = dc U`` 2Nr, ``dh = dm C`` 2r², two activation derivatives, ``da V`` into ``dx``
    2Nr; per layer and expert ``dU``, ``dV`` 2BNr, ``dC`` 2Br², and BN for
    ``db = Σ_{b,k} dc``. With K > 1:
    ``de_k = p_k g`` N, ``dp_k = g·e_k`` 2N, the softmax's backward 4, the gate logits'
    ``dz_k gates_k`` into ``dx`` 2N and ``Σ_b dz_k x`` into ``d gates_k`` 2BN per expert, and
    one more ``+`` in ``dx = g + (experts) + (gates)``. Then BN at the end.
    """
    b, n, L, k, r = batch, in_features, num_layers, num_experts, low_rank
    fa, fb = _activation(activation)
    expert_fwd = 4 * n * r + 2 * r * r + 2 * fa * r + 2 * n
    expert_bwd = 8 * n * r + 4 * r * r + 2 * fb * r + 4 * n
    gate_fwd = 4 * k * n + 4 * k if k > 1 else 0
    gate_bwd = 7 * k * n + 4 * k + n if k > 1 else 0
    forward = L * b * (k * expert_fwd + gate_fwd + n)
    backward = L * b * (k * expert_bwd + gate_bwd + n) + b * n
    return FlopCount(forward, backward)


def linear_flops(
    batch: int, in_features: int, out_features: int, bias: bool = True, activation="identity"
) -> FlopCount:
    """``y = φ(x Wᵀ + b)``: 2·I·O (+ O for the bias, + the activation) per sample forward;
    backward ``dz = φ' ⊙ dy``, ``dx = dz W`` 2·I·O per sample, ``dW = dzᵀ x`` 2·B·I·O,
    ``db = Σ_b dz`` B·O."""
    b, i, o = batch, in_features, out_features
    fa, fb = _activation(activation)
    return FlopCount(b * (2 * i * o + bias * o + fa * o), b * (4 * i * o + bias * o + fb * o))


def mlp_flops(
    batch: int,
    in_features: int,
    layer_sizes: Sequence[int],
    bias: bool = True,
    activation: str = "relu",
    activation_on_last: bool = True,
) -> FlopCount:
    """MLP (and DenseArch): a :func:`linear_flops` per layer, the input gradient included."""
    total = FlopCount(0, 0)
    fan_ins = (in_features, *layer_sizes[:-1])
    for i, (fan_in, size) in enumerate(zip(fan_ins, layer_sizes, strict=True)):
        last = i == len(layer_sizes) - 1
        act = "identity" if last and not activation_on_last else activation
        total = total + linear_flops(batch, fan_in, size, bias, act)
    return total


def over_arch_flops(batch: int, in_features: int, layer_sizes: Sequence[int]) -> FlopCount:
    """OverArch: a ReLU MLP over all but the last size, then a plain Linear (the logits)."""
    head = mlp_flops(batch, in_features, layer_sizes[:-1])
    return head + linear_flops(batch, layer_sizes[-2], layer_sizes[-1])


def projection_flops(
    batch: int,
    num_sparse_features: int,
    embedding_dim: int,
    projected_dims: tuple[int, int],
    branch1: FlopCount,
    branch2: FlopCount,
) -> FlopCount:
    """InteractionProjectionArch: the two branches plus ``Y Z`` and its backward.

    Forward adds ``Y Z`` (``2·B·F1·D·F2``). Backward adds ``dY = dI Zᵀ`` and ``dZ = Yᵀ dI``
    (``2·B·F1·D·F2`` each), ``dc = dc₁ + dc₂`` (B·N) and ``d_dense = d_out[:, :D] + dc[:, :D]``
    (B·D). F = 0 is a passthrough: nothing.
    """
    if num_sparse_features == 0:
        return FlopCount(0, 0)
    b, d = batch, embedding_dim
    f1, f2 = projected_dims
    n = (num_sparse_features + 1) * d
    own = FlopCount(2 * b * f1 * d * f2, 4 * b * f1 * d * f2 + b * n + b * d)
    return own + branch1 + branch2


def fm_flops(batch: int, num_scalars: int, num_features: int = 0, pairs="scalars") -> FlopCount:
    """FactorizationMachine over N scalars per sample (F features of D = N/F for "features").

    ``"scalars"``: ``s = Σx`` N, ``Σx²`` 2N, ``½(s² − Σx²)`` 3; backward ``d·(s − x)`` 2N.
    ``"features"``: ``s_d = Σ_i v_id`` N, ``Σ_d s_d²`` 2D, ``Σ v²`` 2N, then 2 (``−``, ``½``);
    backward ``d·(s_d − v_id)`` 2N.
    """
    b, n = batch, num_scalars
    if pairs == "scalars":
        return FlopCount(b * (3 * n + 3), 2 * b * n)
    d = n // num_features
    return FlopCount(b * (3 * n + 2 * d + 2), 2 * b * n)


def fm_interaction_flops(
    batch: int, embedding_dim: int, fm_in_features: int, deep_fm_dimension: int, pairs="scalars"
) -> FlopCount:
    """FMInteractionArch: the deep branch ``relu(x Wᵀ + b)`` (N → DI) and the FM over the
    F+1 = N/D features; backward adds the two branches' input gradients (N) and the dense
    passthrough (D) per sample."""
    b, n = batch, fm_in_features
    deep = linear_flops(b, n, deep_fm_dimension, True, "relu")
    fm = fm_flops(b, n, n // embedding_dim, pairs)
    return deep + fm + FlopCount(0, b * (n + embedding_dim))


def layer_norm_flops(tokens: int, width: int) -> FlopCount:
    """LayerNorm over T rows of E: forward ``μ`` E+1, ``x − μ`` E, ``σ²`` 2E+1, ``+eps``, √, 1/
    3, ``x̂`` E, ``γ ⊙ x̂ + β`` 2E: 7E+5 per row. Backward ``dx̂ = γ ⊙ dy`` E, its mean E+1,
    ``mean(dx̂ ⊙ x̂)`` 2E+1, ``(dx̂ − · − x̂ ·)/σ`` 4E, ``dγ`` 2E, ``dβ`` E: 11E+2 per row."""
    t, e = tokens, width
    return FlopCount(t * (7 * e + 5), t * (11 * e + 2))


def attention_flops(sequences: int, length: int, width: int, num_heads: int) -> FlopCount:
    """Multi-head self-attention over N sequences of S tokens (T = N·S), E = H·h.

    Forward per token: ``in_proj`` 6E² + 3E, ``out_proj`` 2E² + E; per sequence and head:
    ``q kᵀ`` 2hS², ``/√h`` S², softmax (exp, Σ, ÷; the max shift is free) 3S², ``P v`` 2hS².
    Backward per token: ``dc = d_out W_o`` and ``dW_o`` 4E², ``db_o`` E, ``[dq, dk, dv] W_in``
    and ``dW_in`` 12E², ``db_in`` 3E, the two ``/√h`` on dq, dk 2E; per sequence and head:
    ``dP = dc vᵀ`` and ``dv = Pᵀ dc`` 4hS², softmax backward (``P ⊙ dP``, Σ, ``−``, ``P ⊙``)
    4S², ``dq = dZ k`` and ``dk = dZᵀ q`` 4hS².
    """
    n, s, e, heads = sequences, length, width, num_heads
    t, h = n * s, e // num_heads
    pairs = n * heads * s * s
    return FlopCount(
        t * (8 * e * e + 4 * e) + pairs * (4 * h + 4),
        t * (16 * e * e + 6 * e) + pairs * (8 * h + 4),
    )


def encoder_layer_flops(
    sequences: int, length: int, width: int, num_heads: int, dim_feedforward: int
) -> FlopCount:
    """torch's post-norm encoder layer: attention, two residuals (E each per token), two layer
    norms, ``linear1`` (E → M) with ReLU and ``linear2`` (M → E). Backward adds the two
    residual paths (E each per token) to the parts' own."""
    t, e, m = sequences * length, width, dim_feedforward
    residuals = FlopCount(2 * t * e, 2 * t * e)
    return (
        attention_flops(sequences, length, width, num_heads)
        + layer_norm_flops(t, e)
        + layer_norm_flops(t, e)
        + linear_flops(t, e, m, True, "relu")
        + linear_flops(t, m, e)
        + residuals
    )


def transformer_interaction_flops(
    batch: int,
    num_sparse_features: int,
    embedding_dim: int,
    num_heads: int,
    num_layers: int,
    dim_feedforward: int = 2048,
    attend_across: str = "features",
) -> FlopCount:
    """InteractionTransformerArch: L encoder layers over B sequences of F+1 tokens
    (``"features"``) or F+1 sequences of B tokens (``"batch"``, TorchRec's; S² grows with
    B²). F = 0 is a passthrough: nothing."""
    if num_sparse_features == 0:
        return FlopCount(0, 0)
    n, s = batch, num_sparse_features + 1
    if attend_across == "batch":
        n, s = s, n
    layer = encoder_layer_flops(n, s, embedding_dim, num_heads, dim_feedforward)
    return FlopCount(num_layers * layer.forward, num_layers * layer.backward)


def count_flops(layer, *inputs) -> FlopCount:
    """The :class:`FlopCount` of ``layer.forward(*inputs)`` and its backward.

    Dispatches on the refimpl layer's class name, reading its sizes from its attributes and
    the batch (and D) from the inputs; composite layers add up their parts.

    >>> import numpy as np, refimpl
    >>> count_flops(refimpl.InteractionArch(2), np.zeros((3, 4)), np.zeros((3, 2, 4)))
    FlopCount(forward=72, backward=156)
    """
    kind = type(layer).__name__
    batch = inputs[0].shape[0]
    if kind == "InteractionArch":
        dim = inputs[0].shape[1]
        return dot_flops(batch, layer.num_sparse_features, dim, layer.self_interaction)
    if kind == "InteractionDCNArch":
        return count_flops(layer.crossnet, _flat(layer.num_sparse_features, *inputs))
    if kind == "InteractionProjectionArch":
        if not layer.num_sparse_features:
            return FlopCount(0, 0)
        flat = _flat(layer.num_sparse_features, *inputs)
        return projection_flops(
            batch,
            layer.num_sparse_features,
            layer.embedding_dim,
            layer.projected_dims,
            count_flops(layer.interaction_branch1, flat),
            count_flops(layer.interaction_branch2, flat),
        )
    if kind == "CrossNet":
        return crossnet_flops(batch, layer.in_features, layer.num_layers)
    if kind == "LowRankCrossNet":
        return low_rank_crossnet_flops(batch, layer.in_features, layer.num_layers, layer.low_rank)
    if kind == "VectorCrossNet":
        return vector_crossnet_flops(batch, layer.in_features, layer.num_layers)
    if kind == "LowRankMixtureCrossNet":
        return mixture_crossnet_flops(
            batch,
            layer.in_features,
            layer.num_layers,
            layer.num_experts,
            layer.low_rank,
            layer.activation,
        )
    if kind == "Linear":
        return linear_flops(batch, layer.in_features, layer.out_features, layer.bias)
    if kind == "MLP":
        return mlp_flops(
            batch,
            layer.in_features,
            layer.layer_sizes,
            layer.bias,
            layer.activation,
            layer.activation_on_last,
        )
    if kind == "DenseArch":
        return count_flops(layer.model, *inputs)
    if kind == "OverArch":
        return over_arch_flops(batch, layer.in_features, layer.layer_sizes)
    if kind == "FMInteractionArch":
        if not layer.sparse_feature_names:
            return FlopCount(0, 0)
        dim = inputs[0].shape[1]
        return fm_interaction_flops(
            batch, dim, layer.fm_in_features, layer.deep_fm_dimension, layer.fm_pairs
        )
    if kind == "InteractionTransformerArch":
        return transformer_interaction_flops(
            batch,
            layer.num_sparse_features,
            layer.embedding_dim,
            layer.nhead,
            layer.ntransformer_layers,
            layer.dim_feedforward,
            layer.attend_across,
        )
    raise TypeError(f"count_flops: no FLOP count for {kind}")


class _Shape(NamedTuple):
    shape: tuple[int, ...]


def _flat(num_sparse_features, dense, sparse=None):
    """A stand-in for ``[dense; sparse].reshape(B, N)``: only its shape is read."""
    batch, dim = dense.shape[0], dense.shape[-1]
    return _Shape((batch, (num_sparse_features + 1) * dim))
