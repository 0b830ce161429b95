"""TorchRec parity: run a TorchRec module and a refimpl layer on the same weights and inputs.

Needs PyTorch and TorchRec (``requirements-parity.txt``); importing this module does not, so
refimpl stays NumPy-only. The module is cast to float64, the refimpl layer loads its
``state_dict()`` unchanged, and torch autograd supplies the reference gradients.
"""

from __future__ import annotations

import numpy as np

from refimpl.layers.base import Layer, as_rng
from refimpl.tools.gradcheck import rel_error


class ParityUnavailable(RuntimeError):
    """PyTorch or TorchRec is not installed."""


def require_torchrec():
    """Import and return ``(torch, torchrec)``, or raise :class:`ParityUnavailable`."""
    try:
        import torch
        import torchrec
    except Exception as exc:  # ImportError, or a broken binary extension
        raise ParityUnavailable(
            "TorchRec parity needs the optional requirements: pip install -r "
            "requirements-parity.txt && pip install --no-deps torchrec==1.8.0"
        ) from exc
    return torch, torchrec


def load_from_torch(layer: Layer, module) -> None:
    """Copy a TorchRec module's ``state_dict()`` into ``layer`` (no renaming needed)."""
    layer.load_state_dict({k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})


def compare_with_torch(
    layer: Layer, module, inputs: tuple[np.ndarray, ...], seed=0
) -> dict[str, float]:
    """Relative errors between refimpl and TorchRec: output, every input and parameter gradient.

    ``module`` is cast to float64 in place and its weights are loaded into ``layer``. The same
    random upstream gradient drives both backward passes.

    Returns
    -------
    dict
        ``"out"``, then one entry per input name, then one per parameter key.
    """
    ours, theirs = paired_results(layer, module, inputs, seed)
    return {name: rel_error(ours[name], theirs[name]) for name in ours}


def paired_results(
    layer: Layer, module, inputs: tuple[np.ndarray, ...], seed=0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """refimpl's and TorchRec's output and gradients, as two dicts with the same keys.

    What :func:`compare_with_torch` compares, for checks that need the arrays themselves.
    """
    torch, _ = require_torchrec()
    module.double()
    module.zero_grad(set_to_none=True)  # a reused module must not accumulate old gradients
    load_from_torch(layer, module)
    torch_inputs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    torch_out = module(*torch_inputs)
    out, cache = layer.forward(*[np.asarray(x, dtype=np.float64) for x in inputs])
    upstream = as_rng(seed).standard_normal(out.shape)
    torch_out.backward(torch.tensor(upstream))
    *d_inputs, d_params = layer.backward(upstream, cache)

    ours, theirs = {"out": out}, {"out": torch_out.detach().numpy()}
    names = getattr(layer, "input_names", None) or [f"input {i}" for i in range(len(inputs))]
    for name, mine, tensor in zip(names, d_inputs, torch_inputs, strict=True):
        ours[name] = mine
        theirs[name] = tensor.grad.numpy() if tensor.grad is not None else np.zeros_like(mine)
    # remove_duplicate=False: a tensor shared by two submodules (tied branches) is listed under
    # both names, as refimpl's params are.
    torch_params = dict(module.named_parameters(remove_duplicate=False))
    for key, mine in d_params.items():
        grad = torch_params[key].grad
        ours[key] = mine
        theirs[key] = np.zeros_like(mine) if grad is None else grad.numpy()
    return ours, theirs
