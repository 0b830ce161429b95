"""Optimizers against torch.optim and torchrec.optim, step for step in float64.

Skipped unless PyTorch and TorchRec are installed (requirements-parity.txt).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
rowwise = pytest.importorskip("torchrec.optim.rowwise_adagrad")

from refimpl.layers.rowsparse import RowSparse  # noqa: E402
from refimpl.train import SGD, Adagrad, Adam, RowWiseAdagrad  # noqa: E402

pytestmark = pytest.mark.parity

STEPS = 60

# (ours, theirs, hyper-parameters): every option away from its default at least once
CASES = [
    (SGD, torch.optim.SGD, {"lr": 0.05}),
    (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (SGD, torch.optim.SGD, {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    (Adagrad, torch.optim.Adagrad, {}),
    (
        Adagrad,
        torch.optim.Adagrad,
        {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02, "initial_accumulator_value": 0.3},
    ),
    (Adagrad, torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-3}),
    (Adam, torch.optim.Adam, {}),
    (Adam, torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.1}),
    (Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    (Adam, torch.optim.Adam, {"lr": 0.01, "betas": (0.3, 0.6)}),  # lerp from the far end
    (RowWiseAdagrad, rowwise.RowWiseAdagrad, {}),
    (
        RowWiseAdagrad,
        rowwise.RowWiseAdagrad,
        {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
    ),
]
IDS = [f"{ours.__name__}-{i}" for i, (ours, _, _) in enumerate(CASES)]

# torch's names for each of our state entries (ours "step" is an int, torch's a float tensor)
STATE = {"SGD": ("momentum_buffer",), "Adagrad": ("sum",), "RowWiseAdagrad": ("sum",)}
STATE["Adam"] = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def torch_kwargs(theirs, hyper):
    return {"foreach": False, **hyper} if theirs is not rowwise.RowWiseAdagrad else dict(hyper)


@pytest.mark.parametrize(("ours", "theirs", "hyper"), CASES, ids=IDS)
def test_dense_steps_match_torch(rng, ours, theirs, hyper):
    shapes = {"table": (7, 3), "weight": (4, 5)}
    if ours is not RowWiseAdagrad:
        shapes["bias"] = (4,)
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = ours(params, **hyper)
    topt = theirs(list(tensors.values()), **torch_kwargs(theirs, hyper))
    for _ in range(STEPS):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        opt.step(grads)
    errors = {k: rel(params[k], tensors[k].detach().numpy()) for k in params}
    for k, t in tensors.items():
        tstate = topt.state[t]
        if ours is not SGD:  # torch's SGD counts no steps
            assert opt.state[k]["step"] == int(tstate["step"]) == STEPS
        for name in STATE[ours.__name__]:
            if name in opt.state[k]:
                errors[f"{k}.{name}"] = rel(opt.state[k][name], tstate[name].numpy())
    assert max(errors.values()) < 1e-12, errors


def torch_step_on_rows(theirs, hyper, param, state, step_before, rows, values, names):
    """PyTorch's step on a tensor made of just ``rows``, with the state those rows had.

    This is the rule the sparse path claims: each step, torch's own update applied to the
    rows of the batch alone, the step counter counting every step taken.
    """
    sub = torch.tensor(param[rows], requires_grad=True)
    topt = theirs([sub], **torch_kwargs(theirs, hyper))
    if step_before > 0 or theirs is not torch.optim.SGD:
        sd = topt.state_dict()
        row_state = {n: torch.tensor(state[n][rows]) for n in names if n in state}
        if theirs is not torch.optim.SGD:
            row_state["step"] = torch.tensor(float(step_before))
        sd["state"] = {0: row_state}
        topt.load_state_dict(sd)
    sub.grad = torch.tensor(values)
    topt.step()
    new_state = topt.state[sub]
    return sub.detach().numpy(), {n: new_state[n].numpy() for n in names if n in new_state}


@pytest.mark.parametrize(("ours", "theirs", "hyper"), CASES, ids=IDS)
def test_row_sparse_steps_match_torch_on_the_touched_rows(rng, ours, theirs, hyper):
    num_rows, dim = 12, 3
    table = rng.standard_normal((num_rows, dim))
    initial = table.copy()
    opt = ours({"t": table}, **hyper)
    ref_param = table.copy()
    ref_state = {n: v.copy() for n, v in opt.state["t"].items() if n != "step"}
    initial_state = {n: v.copy() for n, v in ref_state.items()}
    names = STATE[ours.__name__]
    for step in range(STEPS):
        # rows 9, 10, 11 never appear: they and their state must not change at all
        rows = np.sort(rng.choice(num_rows - 3, size=rng.integers(1, 5), replace=False))
        values = rng.standard_normal((len(rows), dim))
        opt.step({"t": RowSparse(rows, values, num_rows)})
        new_rows, new_state = torch_step_on_rows(
            theirs, hyper, ref_param, ref_state, step, rows, values, names
        )
        ref_param[rows] = new_rows
        for n, v in new_state.items():
            ref_state[n][rows] = v
    np.testing.assert_array_equal(table[-3:], initial[-3:])
    for n, v in initial_state.items():
        np.testing.assert_array_equal(opt.state["t"][n][-3:], v[-3:])
    errors = {"t": rel(table, ref_param)}
    errors.update({n: rel(opt.state["t"][n], ref_state[n]) for n in ref_state})
    assert max(errors.values()) < 1e-12, errors


def to_torch_sparse(rows, values, num_rows):
    return torch.sparse_coo_tensor(
        torch.tensor(rows[None]), torch.tensor(values), (num_rows, 3), check_invariants=True
    )


@pytest.mark.parametrize(
    ("ours", "theirs", "hyper"),
    [
        (SGD, torch.optim.SGD, {"lr": 0.1}),
        (Adagrad, torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.02}),
        # SparseAdam adds eps before the bias correction, Adam after: equal once eps is negligible
        (Adam, torch.optim.SparseAdam, {"lr": 0.01, "eps": 1e-200}),
    ],
    ids=["SGD", "Adagrad", "SparseAdam"],
)
def test_row_sparse_steps_match_torch_sparse_gradients(rng, ours, theirs, hyper):
    table = rng.standard_normal((10, 3))
    tensor = torch.tensor(table, requires_grad=True)
    opt = ours({"t": table}, **hyper)
    topt = theirs([tensor], **hyper)
    for _ in range(STEPS):
        rows = np.sort(rng.choice(10, size=3, replace=False))
        values = rng.standard_normal((3, 3))
        tensor.grad = to_torch_sparse(rows, values, 10)
        with torch.sparse.check_sparse_tensor_invariants():  # and no warning that they are off
            topt.step()
        opt.step({"t": RowSparse(rows, values, 10)})
    assert rel(table, tensor.detach().numpy()) < 1e-12


def test_torch_sparse_sgd_momentum_is_the_dense_rule_not_ours(rng):
    """PyTorch's SGD keeps a row moving along its momentum after the row left the batch."""
    table = np.zeros((4, 3))
    tensor = torch.zeros((4, 3), dtype=torch.float64, requires_grad=True)
    opt, topt = SGD({"t": table}, lr=0.1, momentum=0.9), torch.optim.SGD([tensor], 0.1, 0.9)
    for row in (0, 1):
        tensor.grad = to_torch_sparse(np.array([row]), np.ones((1, 3)), 4)
        topt.step()
        opt.step({"t": RowSparse(np.array([row]), np.ones((1, 3)), 4)})
    np.testing.assert_allclose(tensor.detach().numpy()[0], -0.19)  # moved again at step 2
    np.testing.assert_array_equal(table[0], -0.1)  # waited: not in the second batch


def test_a_wrong_rule_fails_parity(rng):
    class EpsInsideSqrt(Adam):
        def _update(self, param, grad, state, step):
            self.eps, eps = 0.0, self.eps
            new_param, new_state = super()._update(param, grad, state, step)
            self.eps = eps
            return new_param, new_state

    params = {"w": rng.standard_normal((3, 2))}
    tensor = torch.tensor(params["w"], requires_grad=True)
    opt = EpsInsideSqrt(params, lr=0.01, eps=1e-3)
    topt = torch.optim.Adam([tensor], lr=0.01, eps=1e-3, foreach=False)
    for _ in range(5):
        grad = rng.standard_normal((3, 2)) * 1e-3
        tensor.grad = torch.tensor(grad)
        topt.step()
        opt.step({"w": grad})
    assert rel(params["w"], tensor.detach().numpy()) > 1e-6
