"""SymPy proofs about refimpl's own code: every backward is the derivative of its forward.

What a proof is
---------------
refimpl writes each layer's forward and backward once, as textbook functions over a
``params`` dict (``refimpl.layers``, ``refimpl.models``), and they run unchanged on NumPy
object arrays of SymPy expressions. A proof here never writes a backward of its own. It

1. builds every input and parameter as SymPy symbols, keyed and shaped like TorchRec's
   ``state_dict()``;
2. calls refimpl's textbook forward, then refimpl's textbook backward with an upstream
   gradient ``G``;
3. has SymPy differentiate ``L = Σ G ⊙ Y`` and checks, exactly, that the backward returned
   that derivative for every input and every parameter;
4. runs refimpl's *layer* (the class, with its fast path) in float64 at a point and measures
   it against SymPy's numbers there: the float witness ``python -m refimpl check`` reports.

One helper does steps 2–4 for every module: :class:`derivations.proof.Proof`.

How the helper decides
----------------------
*One derivative.* Every leaf ``s`` moves to ``s + ε·δ_s`` at once and SymPy takes
``dL/dε = Σ_s (∂L/∂s) δ_s``: the whole gradient in one derivative, the coefficient of each
``δ_s`` one entry, and the first ``δ_s`` left in the difference names the wrong entry.
(Moving one entry at a time, one forward per entry, was measured as well: no faster for a
whole tiny DLRM, two to three times slower for larger layers; so there is one way.)

*Exactly, two ways* (``Proof(..., at_point=...)``):

- ``at_point=False``, **an identity**: everything symbolic; the difference, expanded (over one
  denominator for rational layers), is zero for every value. Polynomial layers (the dot
  interaction, the three polynomial cross networks, Linear, the FMs, the embedding bag) and
  small rational ones (the softmax, the loss).
- ``at_point=True``, **at a random rational point**: inputs, parameters and ``G`` are random
  rationals ``n / 2³²`` (``|n| ≤ 2³³``), ReLU's ``max`` and step are evaluated exactly, square
  roots stay exact algebraic numbers, and the difference is a number computed without
  rounding. A wrong backward leaves a nonzero rational function ``P / Q`` of the point, and a
  nonzero ``P`` of degree ``d`` vanishes at such a point with probability at most
  ``d / 2³⁴`` (the **Schwartz–Zippel** lemma): below 1e-8 for the few dozen ``d`` here. For
  layers with ReLU, tanh, sigmoid, softmax or square roots, and wherever expanding an
  identity would take minutes.

In both ways every ``exp`` gets a free value of its own (a positive symbol, or a random
positive rational), the same on both sides: the backward is then proven right whatever those
values are, provided each slope follows ``d e^u = e^u du`` — a stronger statement than for the
true values. tanh and sigmoid are written through ``exp`` in the activation registry
(``refimpl.layers.activations``), so the proofs need no rule of their own.

*Deliberate mistakes.* Each module lists one-line edits of refimpl's own source (``MUTANTS``,
applied with :func:`derivations.proof.mutated`, which puts the broken copy wherever the
function is looked up) that its proofs must reject; the tests show that they do.

How to add a proof
------------------
Write the layer's textbook forward and backward in ``refimpl.layers`` so that they run on
object arrays (``@``, ``+``, ``*``, ``.sum``, indexing; nonlinear functions from the
activation registry). Then, in a module here:

1. ``leaves = {"x": symbols("x", (B, N)), "weight": symbols("W", (O, N)), ...}`` — inputs
   first, then parameters under their ``state_dict()`` keys;
2. ``forward(leaves) -> (out, cache)`` and ``backward(leaves, d_out, cache) -> {key: grad}``
   calling refimpl's textbook functions (looked up in their module at each call, so that a
   mutant put in their place runs);
3. ``Proof(label, forward, backward, leaves, at_point=...).statement()`` proves it (or raises
   an AssertionError naming the entry); ``.float_errors(layer, layer.input_names)`` (or
   ``.compare(output, gradients)`` for a layer called differently) is the float witness;
4. add ``MUTANTS`` and a test that each fails, and a ``symbolic_witness`` that
   ``refimpl/tools/check/cases`` can call.

Modules
-------
``proof``           the helper: symbols, rational points, :class:`~derivations.proof.Proof`,
                    exact reduction (free exponentials), the float witness, mutants
``activations``     the activation registry (each derivative read from the output) and the
                    softmax
``dot_interaction`` the dot interaction at the seed's B=2, D=4, F=2: the seed's own formulas
                    against the truth (its doubled term, its unfinished "整理得"), and
                    refimpl's backward
``crossnet``        the four cross networks, alone and inside InteractionDCNArch
``projection``      Linear, MLP, DenseArch, OverArch and the projection interaction
``fm``              the factorization machines (both pair sets) and FMInteractionArch
``transformer``     the softmax's VJP, layer norm, multi-head attention, the key bias
``embedding``       the embedding bag (sum, mean, per-id weights)
``loss``            BCEWithLogitsLoss, and its stable formula against the textbook one
``dlrm``            whole tiny DLRM, DLRM_DCN, DLRM_Projection and DLRM_Baseline, end to end

SymPy is needed here only; refimpl itself needs NumPy alone.
"""
