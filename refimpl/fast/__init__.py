"""Fast paths: the numbers of the textbook forms in :mod:`refimpl.layers`, computed faster.

The layers are written twice where speed asks for it. The textbook form, beside each layer in
:mod:`refimpl.layers`, is the one a learner reads and the one ``derivations/`` proves; the
functions here compute the same numbers with the tricks that make a reference usable at
production sizes (reading a symmetric product from half of it, gathering instead of
scattering, stacks of small products spread over threads, never forming arrays the result
does not need). Each says in its first line which textbook function it equals, and
``tests/test_fast.py`` checks that it does.
"""
