"""SymPy proofs about refimpl's own code: every backward is the derivative of its forward.

How to read this package
------------------------
refimpl writes each layer's forward and backward once, as textbook functions over a
``params`` dict (``refimpl.layers``), and they run unchanged on NumPy object arrays of SymPy
expressions. A proof here never writes a backward of its own. It

1. builds every input and parameter as SymPy symbols, keyed and shaped like TorchRec's
   ``state_dict()``;
2. calls refimpl's textbook forward, then refimpl's textbook backward with a symbolic
   upstream gradient ``G``;
3. has SymPy differentiate ``L = Σ G ⊙ Y`` and checks, exactly, that the backward returned
   that derivative for every input and every parameter — as a polynomial identity, or at a
   random rational point (Schwartz–Zippel: a wrong backward survives with probability below
   1e-8; :mod:`derivations.proof` states the argument);
4. runs refimpl's *layer* (with its fast path) in float64 at the same point and measures it
   against SymPy's numbers: the float witness ``python -m refimpl check`` reports.

One helper does steps 2–4: :class:`derivations.proof.Proof`. Each module says which
configurations it proves and lists deliberate one-line mistakes in refimpl's source
(``MUTANTS``, applied with :func:`derivations.proof.mutated`) that the proof must reject. The
FM and transformer proofs arrived with their own helper, :mod:`derivations.exact` (the same
method: refimpl's textbook functions on SymPy, ``sympy.diff``, an identity or a rational
point), not yet folded into :mod:`derivations.proof`.

Modules
-------
``proof``           the helper: symbols, rational points, :class:`~derivations.proof.Proof`,
                    mutants
``activations``     the activation registry (each derivative read from the output) and the
                    softmax
``dot_interaction`` the dot interaction at the seed's B=2, D=4, F=2: the seed's own formulas
                    against the truth (its doubled term, its unfinished "整理得"), and
                    refimpl's backward
``crossnet``        the four cross networks, alone and inside InteractionDCNArch
``projection``      Linear, MLP, DenseArch, OverArch and the projection interaction
``fm``, ``transformer``   the factorization machine and the transformer interaction
                    (with ``exact``, their helper)
``embedding``, ``loss``, ``dlrm``   the embedding bag, the loss and whole tiny models

SymPy is needed here only; refimpl itself needs NumPy alone.
"""
