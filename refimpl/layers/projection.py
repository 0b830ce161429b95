"""The projection interaction: dense passthrough plus the bmm of two MLP projections.

TorchRec's ``torchrec.models.dlrm.InteractionProjectionArch``. Both branches (usually
``DenseArch``) read the flattened ``[dense; sparse]``; branch 1's output is reshaped to
``Y`` (B, F1, D), branch 2's to ``Z`` (B, D, F2), and the output is ``concat(dense, Y Z)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.layers.base import (
    Layer,
    check_array,
    check_positive_int,
    combine_features,
    prefixed,
)

BRANCHES = ("interaction_branch1", "interaction_branch2")


def _refuse_an_empty_batch(batch: int) -> None:
    if batch == 0:
        raise ValueError(
            "dense: expected B >= 1 samples, got B = 0 (TorchRec's InteractionProjectionArch "
            "fails on an empty batch too: its reshape(B, -1) cannot infer -1 from no numbers)"
        )


class ProjectionCache(NamedTuple):
    y: np.ndarray  # branch 1 output as Y, (B, F1, D)
    z: np.ndarray  # branch 2 output as Z, (B, D, F2)
    branch1: object  # interaction_branch1's cache
    branch2: object  # interaction_branch2's cache


class InteractionProjectionArch(Layer):
    """Dense passthrough plus ``Y Z``, with ``Y`` and ``Z`` the reshaped outputs of two MLPs.

    Parameters
    ----------
    num_sparse_features : int
        F, the number of sparse (embedding) features. F = 0 returns ``dense`` unchanged and
        never calls the branches, as TorchRec does.
    interaction_branch1 : Layer
        Maps (B, N) to (B, F1·D), N = (F+1)·D: a :class:`~refimpl.layers.mlp.DenseArch` in
        TorchRec's DLRM (any refimpl layer with ``in_features`` and ``out_features`` will do).
    interaction_branch2 : Layer
        Maps (B, N) to (B, D·F2).

    Notes
    -----
    ``D`` is fixed by the branches: ``D = in_features / (F+1)``; both branches must read the
    same N and output a multiple of D, else a ValueError at construction (TorchRec checks
    nothing and fails at the first forward). Keys are the branches' prefixed by
    ``interaction_branch1.`` / ``interaction_branch2.``. With
    ``C = concat(dense[:, None], sparse)`` (B, F+1, D) and ``c = C.reshape(B, N)``::

        Y   = b1(c).reshape(B, F1, D)        row i of Y is b1(c)[i·D : (i+1)·D]
        Z   = b2(c).reshape(B, D, F2)        a reshape, not a transpose: Z[k, j] = b2(c)[k·F2 + j]
        I   = Y Z                            (B, F1, F2), batched matrix product
        out = concat(dense, I.reshape(B, F1·F2))

    Backward, with ``dI = d_out[:, D:].reshape(B, F1, F2)``, undoes each step::

        dY = dI Zᵀ   (B, F1, D),     dZ = Yᵀ dI   (B, D, F2)
        dc = b1.backward(dY.reshape(B, F1·D)) + b2.backward(dZ.reshape(B, D·F2))
        d_dense  = d_out[:, :D] + dc.reshape(B, F+1, D)[:, 0]     (passthrough + row 0)
        d_sparse = dc.reshape(B, F+1, D)[:, 1:]

    ``c`` feeds both branches, so its gradient is the sum of the two branch gradients.

    Examples
    --------
    >>> from refimpl.layers.mlp import DenseArch
    >>> arch = InteractionProjectionArch(              # D = 12 / 3 = 4
    ...     2, DenseArch(12, [8], seed=0), DenseArch(12, [6, 12], seed=1))
    >>> arch.embedding_dim, arch.projected_dims        # F1 = 8 / 4, F2 = 12 / 4
    (4, (2, 3))
    >>> out, cache = arch.forward(np.ones((5, 4)), np.ones((5, 2, 4)))
    >>> out.shape                                      # D + F1·F2
    (5, 10)
    >>> d_dense, d_sparse, d_params = arch.backward(np.ones_like(out), cache)
    >>> d_dense.shape, d_sparse.shape
    ((5, 4), (5, 2, 4))
    """

    input_names = ("dense", "sparse")

    def __init__(
        self, num_sparse_features: int, interaction_branch1: Layer, interaction_branch2: Layer
    ):
        branches = (interaction_branch1, interaction_branch2)
        for name, branch in zip(BRANCHES, branches, strict=True):
            if not isinstance(branch, Layer):
                raise TypeError(f"{name}: expected a refimpl Layer, got {type(branch).__name__}")
        if interaction_branch1.dtype != interaction_branch2.dtype:
            raise TypeError(
                f"interaction_branch2: dtype {interaction_branch2.dtype} differs from "
                f"interaction_branch1's {interaction_branch1.dtype}"
            )
        super().__init__(interaction_branch1.dtype)
        self.num_sparse_features = check_positive_int("num_sparse_features", num_sparse_features, 0)
        self._children.update(zip(BRANCHES, branches, strict=True))
        self.embedding_dim: int | None = None
        self.projected_dims: tuple[int, int] | None = None
        if self.num_sparse_features:
            self.embedding_dim, self.projected_dims = self._check_branches(branches)

    def _check_branches(self, branches) -> tuple[int, tuple[int, int]]:
        """D and (F1, F2) from the branches' sizes, or a ValueError naming the branch."""
        num_vectors = self.num_sparse_features + 1  # F+1
        for name, branch in zip(BRANCHES, branches, strict=True):
            for attr in ("in_features", "out_features"):
                if not isinstance(getattr(branch, attr, None), int):
                    raise TypeError(f"{name}: expected a layer with an integer {attr!r}")
        n = branches[0].in_features
        if branches[1].in_features != n:
            raise ValueError(
                f"interaction_branch2: in_features {branches[1].in_features} differs from "
                f"interaction_branch1's {n}; both read the same (F+1)·D values"
            )
        if n % num_vectors:
            raise ValueError(
                f"interaction_branch1: in_features {n} is not (F+1)·D for any D with "
                f"F = {self.num_sparse_features}: {n} is not a multiple of F+1 = {num_vectors}"
            )
        dim = n // num_vectors  # D
        projected = []
        shapes = ("(B, F1, D)", "(B, D, F2)")
        for name, branch, shape in zip(BRANCHES, branches, shapes, strict=True):
            if branch.out_features % dim:
                raise ValueError(
                    f"{name}: out_features {branch.out_features} is not a multiple of "
                    f"D = {dim} (D = in_features / (F+1) = {n} / {num_vectors}), so its output "
                    f"cannot be reshaped to {shape}"
                )
            projected.append(branch.out_features // dim)
        return dim, (projected[0], projected[1])

    @property
    def interaction_branch1(self) -> Layer:
        return self._children["interaction_branch1"]

    @property
    def interaction_branch2(self) -> Layer:
        return self._children["interaction_branch2"]

    def output_size(self, embedding_dim: int) -> int:
        """D + F1·F2, the output width (just D when F = 0)."""
        if not self.num_sparse_features:
            return embedding_dim
        f1, f2 = self.projected_dims
        return embedding_dim + f1 * f2

    def _config(self) -> str:
        branches = ", ".join(
            f"{name}={type(branch).__name__}({branch._config()})"
            for name, branch in self._children.items()
        )
        return f"num_sparse_features={self.num_sparse_features}, {branches}"

    def __repr__(self) -> str:  # the branches' configurations, not every parameter's shape
        return f"{type(self).__name__}({self._config()})"

    def _combine(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Validate the inputs (D must be the branches' D) and stack them: C, (B, F+1, D)."""
        dim = self.embedding_dim
        if dim is not None and getattr(dense, "ndim", 0) == 2 and dense.shape[1] != dim:
            raise ValueError(
                f"dense: expected shape (B, D) = ({dense.shape[0]}, {dim}), got {dense.shape}: "
                f"the branches read (F+1)·D = {self.interaction_branch1.in_features} values, "
                f"so D = {dim}"
            )
        combined, _ = combine_features(dense, sparse, self.num_sparse_features, self.dtype)
        return combined

    def forward(self, dense: np.ndarray, sparse: np.ndarray) -> tuple[np.ndarray, ProjectionCache]:
        """
        Parameters
        ----------
        dense : ndarray, shape (B, D)
        sparse : ndarray, shape (B, F, D)

        Returns
        -------
        out : ndarray, shape (B, D + F1·F2); a copy of ``dense`` when F = 0
        cache : ProjectionCache
        """
        self._combine(dense, sparse)  # validates: D must be the branches' D
        batch, dim = dense.shape
        if not self.num_sparse_features:  # TorchRec returns dense itself; a copy never aliases
            empty = np.zeros((batch, 0, dim), self.dtype)
            return dense.copy(), ProjectionCache(empty, empty, None, None)
        _refuse_an_empty_batch(batch)
        return projection_forward(
            dense, sparse, self.interaction_branch1.forward, self.interaction_branch2.forward
        )

    def backward(self, d_out: np.ndarray, cache: ProjectionCache):
        """
        Parameters
        ----------
        d_out : ndarray, shape (B, D + F1·F2)
        cache : ProjectionCache from ``forward``

        Returns
        -------
        d_dense : ndarray, shape (B, D)
        d_sparse : ndarray, shape (B, F, D)
        d_params : dict keyed like ``params`` (zeros when F = 0: the branches are unused)
        """
        batch, _, dim = cache.y.shape
        sizes = {"B": batch, "P": self.output_size(dim)}
        check_array("d_out", d_out, "B P", sizes, self.dtype)
        if not self.num_sparse_features:
            return d_out.copy(), np.zeros((batch, 0, dim), self.dtype), self.zero_param_grads()
        d_dense, d_sparse, d_params1, d_params2 = projection_backward(
            d_out, cache, self.interaction_branch1.backward, self.interaction_branch2.backward
        )
        if self.interaction_branch1 is self.interaction_branch2:
            # One branch used twice (tied weights): both keys name the same arrays, whose
            # gradient is the sum of the two uses, as torch accumulates it.
            d_params1 = d_params2 = {k: d_params1[k] + d_params2[k] for k in d_params1}
        d_params = {
            **prefixed("interaction_branch1", d_params1),
            **prefixed("interaction_branch2", d_params2),
        }
        return d_dense, d_sparse, d_params

    def kink_distance(self, dense: np.ndarray, sparse: np.ndarray) -> float:
        """The nearer of the two branches' kink distances on ``[dense; sparse]`` flattened."""
        combined = self._combine(dense, sparse)  # (B, F+1, D)
        if not self.num_sparse_features:
            return float("inf")
        batch, num_vectors, dim = combined.shape  # (B, F+1, D)
        flat = combined.reshape(batch, num_vectors * dim)  # (B, N)
        return min(
            self.interaction_branch1.kink_distance(flat),
            self.interaction_branch2.kink_distance(flat),
        )


def projection_forward(dense, sparse, branch1, branch2):
    """The projection interaction's textbook forward; ``(out, ProjectionCache)``.

    ``branch1`` and ``branch2`` are the two branches' forwards, ``c (B, N) -> (out, cache)``
    (a :class:`~refimpl.layers.mlp.DenseArch`'s ``forward``, or
    :func:`~refimpl.layers.mlp.dense_arch_forward` over its parameters). Runs on float and on
    exact object arrays alike. Needs B ≥ 1 and F ≥ 1 (the layer handles the rest).

    >>> identity = lambda c: (c, None)                # both branches return c itself
    >>> out, _ = projection_forward(np.array([[1.0, 2.0]]), np.array([[[3.0, 4.0]]]),
    ...                             identity, identity)
    >>> out                       # dense, then Y Z with Y = [[1, 2], [3, 4]] = Z
    array([[ 1.,  2.,  7., 10., 15., 22.]])
    """
    batch, num_features, dim = sparse.shape
    combined = np.concatenate([dense[:, None, :], sparse], axis=1)  # C, (B, F+1, D)
    flat = combined.reshape(batch, (num_features + 1) * dim)  # c, (B, N)
    y_flat, cache1 = branch1(flat)  # (B, F1·D)
    z_flat, cache2 = branch2(flat)  # (B, D·F2)
    y = y_flat.reshape(batch, y_flat.shape[1] // dim, dim)  # Y, (B, F1, D)
    z = z_flat.reshape(batch, dim, z_flat.shape[1] // dim)  # Z, (B, D, F2): not a transpose
    interactions = y @ z  # I, (B, F1, F2)
    out = np.concatenate([dense, interactions.reshape(batch, -1)], axis=1)  # (B, D + F1·F2)
    return out, ProjectionCache(y, z, cache1, cache2)


def projection_backward(d_out, cache: ProjectionCache, branch1, branch2):
    """``(d_dense, d_sparse, d_branch1, d_branch2)`` of :func:`projection_forward`.

    ``branch1`` and ``branch2`` are the branches' backwards, ``(d_out, cache) -> (d_c,
    d_params)``; ``d_branch1`` and ``d_branch2`` are their parameter gradients, unprefixed.
    ``dY = dI Zᵀ``, ``dZ = Yᵀ dI``, the reshapes undone, and ``dc`` the sum of the two branch
    gradients (both read ``c``).
    """
    y, z, cache1, cache2 = cache
    batch, f1, dim = y.shape
    f2 = z.shape[2]
    d_interactions = d_out[:, dim:].reshape(batch, f1, f2)  # dI, (B, F1, F2)
    d_y = d_interactions @ z.transpose(0, 2, 1)  # dY = dI Zᵀ, (B, F1, D)
    d_z = y.transpose(0, 2, 1) @ d_interactions  # dZ = Yᵀ dI, (B, D, F2)
    # Undo the reshapes: row-major order both ways, so reshaping back is exact.
    d_flat1, d_branch1 = branch1(d_y.reshape(batch, f1 * dim), cache1)  # (B, N)
    d_flat2, d_branch2 = branch2(d_z.reshape(batch, dim * f2), cache2)  # (B, N)
    d_flat = d_flat1 + d_flat2  # dc: c feeds both branches, (B, N)
    d_combined = d_flat.reshape(batch, d_flat.shape[1] // dim, dim)  # dC, (B, F+1, D)
    d_dense = d_out[:, :dim] + d_combined[:, 0]  # passthrough + row 0 of C, (B, D)
    return d_dense, d_combined[:, 1:].copy(), d_branch1, d_branch2
