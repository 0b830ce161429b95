"""The name lesson 07 imports :func:`~derivations.proof.symbols` by; nothing else lives here.

Every proof uses :mod:`derivations.proof`.
"""

from derivations.proof import symbols

__all__ = ["symbols"]
