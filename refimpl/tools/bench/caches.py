"""What a layer's cache holds: each array once, views and forward inputs marked.

The report's "cache B/sample" column and its "Cache contents" section come from here, with
what each backward needs beside it (:data:`BACKWARD_NEEDS`), so a reader can check that a cache
holds no more than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def walk_cache(cache, prefix: str = ""):
    """``(name, array)`` for every array in a cache: NamedTuples, tuples, dicts, nested caches."""
    if isinstance(cache, np.ndarray):
        yield prefix or "cache", cache
    elif hasattr(cache, "_fields"):  # NamedTuple
        for name in cache._fields:
            yield from walk_cache(getattr(cache, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(cache, tuple | list):
        for i, item in enumerate(cache):
            yield from walk_cache(item, f"{prefix}[{i}]")
    elif isinstance(cache, dict):
        for key, item in cache.items():
            yield from walk_cache(item, f"{prefix}[{key!r}]")


@dataclass
class CacheEntry:
    name: str
    shape: str  # with the batch axis written as "B"
    dtype: str
    nbytes: int
    note: str = ""  # "input": (a view of) a forward input; "view of X": memory already counted


def _extent(array: np.ndarray) -> tuple[int, int]:
    """The byte range ``[start, end)`` an array's elements occupy."""
    start = end = array.__array_interface__["data"][0]
    for size, stride in zip(array.shape, array.strides, strict=True):
        if size == 0:
            return start, start
        reach = (size - 1) * stride
        start, end = (start + reach, end) if reach < 0 else (start, end + reach)
    return start, end + array.itemsize


def describe_cache(cache, batch: int, inputs=()) -> list[CacheEntry]:
    """The arrays a cache holds; memory that another entry already covers is marked a view.

    An entry whose bytes lie inside an earlier entry's (the same array kept twice, or a
    reshape of it) is "view of <name>" and not counted again; one that shares memory with a
    forward input is marked "input" (counted: the cache keeps it alive).
    """
    entries, seen = [], []
    for name, array in walk_cache(cache):
        axes = [str(s) for s in array.shape]
        if batch in array.shape:  # the first axis of size B is the batch axis
            axes[array.shape.index(batch)] = "B"
        start, end = _extent(array)
        owner = next((n for n, (a, b) in seen if a <= start and end <= b), None)
        if owner is not None:
            note = f"view of {owner}"
        elif any(np.may_share_memory(array, x) for x in inputs):
            note = "input"
        else:
            note = ""
        if owner is None:
            seen.append((name, (start, end)))
        shape = "(" + ", ".join(axes) + ("," if len(axes) == 1 else "") + ")"
        entries.append(CacheEntry(name, shape, str(array.dtype), array.nbytes, note))
    return entries


def cache_bytes(entries: list[CacheEntry]) -> int:
    """Bytes of the distinct arrays (inputs the cache refers to included)."""
    return sum(e.nbytes for e in entries if not e.note.startswith("view of"))


# What each backward reads, and so the least a cache must hold (without recomputing).
BACKWARD_NEEDS = {
    "InteractionArch": "C = [dense; sparse], (F+1)·D: dC = (G + Gᵀ) C",
    "CrossNet": "x_l (for dW_l) and c_l = W_l x_l + b_l (for dx₀ += c_l ⊙ g), 2·L·N",
    "LowRankCrossNet": "x_l (dV_l), V_l x_l (dW_l), c_l (dx₀): L·(2N + r)",
    "VectorCrossNet": (
        "x̂ and, per layer, s_l = x_l·w_l and x̂·w_l: N + 2L. Every x_l is x̂ scaled per row "
        "plus a constant row (x_l = a_l x̂ + β_l with a_l = 1 + Σ_{m<l} s_m, β_l = Σ_{m<l} b_m), "
        "so no x_l is kept"
    ),
    "LowRankMixtureCrossNet": (
        "x_l (dV, dG), h = φ(V x_l) (dC, φ'), h̃ = φ(C h) (dU, dp, φ'), m = Σ_k p_k c_k "
        "(dx₀ += m ⊙ g) and p (softmax): L·(2N + 2K·r + K), exactly what the cache holds. "
        "No pre-activations (φ' is read from φ's output) and no experts' crosses c_k (K·N per "
        "layer): with dm = x₀ ⊙ g, dp_k = h̃_k·(dm U_k) + b·dm and dU_k = dmᵀ(p_k h̃_k), and "
        "dm U_k is needed for dh̃_k anyway"
    ),
    "InteractionDCNArch": "its cross network's (the flattened C is its x₀)",
    "InteractionProjectionArch": (
        "Y and Z (dY = dI Zᵀ, dZ = Yᵀ dI) and the branches' caches; Y, Z are the branches' "
        "outputs, kept once"
    ),
    "MLP": (
        "each Linear's input (dW) and φ' of each layer: the inputs plus the last layer's "
        "output, exactly what the cache holds (layer i's output is layer i+1's input; φ' is "
        "read from φ's output, so no pre-activations)"
    ),
}
BACKWARD_NEEDS["DenseArch"] = BACKWARD_NEEDS["OverArch"] = BACKWARD_NEEDS["MLP"]
