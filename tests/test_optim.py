"""Optimizers: hand values, the row-sparse rule, state dicts, parameter groups, bad input."""

import tracemalloc

import numpy as np
import pytest

from refimpl.layers.rowsparse import RowSparse
from refimpl.train import SGD, Adagrad, Adam, CombinedOptimizer, RowWiseAdagrad

ALL = [SGD, Adagrad, Adam, RowWiseAdagrad]


def sparse_grad(rng, num_rows, dim, rows):
    return RowSparse(np.asarray(rows), rng.standard_normal((len(rows), dim)), num_rows)


def test_hand_values_of_one_step():
    w = np.array([[1.0, 2.0]])
    g = np.array([[0.5, -1.0]])
    Adam({"w": w}, lr=0.1, weight_decay=0.5).step({"w": g})  # g + 0.5 w = (1, 0): m̂/√v̂ = ±1, 0
    np.testing.assert_allclose(w, [[0.9, 2.0]], rtol=1e-7)
    w = np.array([[1.0, 2.0]])
    Adagrad({"w": w}, lr=0.1, initial_accumulator_value=3.0).step({"w": g})  # √(3 + g²)
    np.testing.assert_allclose(w, [[1 - 0.05 / np.sqrt(3.25), 2 + 0.1 / 2]])
    w = np.array([[1.0, 2.0]])
    SGD({"w": w}, lr=0.1, momentum=0.9, nesterov=True).step({"w": g})  # g + 0.9 g
    np.testing.assert_allclose(w, [[1 - 0.095, 2 + 0.19]])


def test_adagrad_lr_decay_divides_by_one_plus_decay_times_steps_before():
    w = np.zeros(1)
    opt = Adagrad({"w": w}, lr=1.0, lr_decay=0.5, eps=0.0)
    for _ in range(3):
        opt.step({"w": np.ones(1)})  # steps of 1/1, (1/1.5)/√2, (1/2)/√3
    np.testing.assert_allclose(w, -(1 + 1 / (1.5 * np.sqrt(2)) + 1 / (2 * np.sqrt(3))))


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(rng, cls, dtype):
    w = rng.standard_normal((3, 2)).astype(dtype)
    opt = cls({"w": w}, lr=0.1)
    opt.step({"w": np.ones((3, 2), dtype)})
    opt.step({"w": RowSparse(np.array([1]), np.ones((1, 2), dtype), 3)})
    assert w.dtype == dtype
    assert all(v.dtype == dtype for v in opt.state_dict().values() if v.ndim)


SAME = [
    (SGD, {"lr": 0.1}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.1}),
    (RowWiseAdagrad, {"lr": 0.1, "lr_decay": 0.1}),
]
DIFFERENT = [
    (SGD, {"lr": 0.1, "weight_decay": 0.1}),
    (SGD, {"lr": 0.1, "momentum": 0.9}),
    (Adagrad, {"lr": 0.1, "weight_decay": 0.1}),
    (RowWiseAdagrad, {"lr": 0.1, "weight_decay": 0.1}),
    (Adam, {"lr": 0.1}),
]


def run_both(rng, cls, hyper, steps=6):
    """The same row-sparse gradients applied as RowSparse and as dense arrays."""
    start = rng.standard_normal((8, 3))
    sparse_w, dense_w = start.copy(), start.copy()
    sparse_opt, dense_opt = cls({"w": sparse_w}, **hyper), cls({"w": dense_w}, **hyper)
    for step in range(steps):
        grad = sparse_grad(rng, 8, 3, [step % 4, 4 + step % 3])  # rows 7 never, 0–6 sometimes
        sparse_opt.step({"w": grad})
        dense_opt.step({"w": grad.to_dense()})
    return start, sparse_w, dense_w, sparse_opt, dense_opt


@pytest.mark.parametrize(("cls", "hyper"), SAME)
def test_sparse_equals_dense_where_the_rules_agree(rng, cls, hyper):
    _, sparse_w, dense_w, sparse_opt, dense_opt = run_both(rng, cls, hyper)
    np.testing.assert_allclose(sparse_w, dense_w, rtol=1e-14, atol=1e-15)
    for name in sparse_opt.state_names:
        np.testing.assert_allclose(sparse_opt.state["w"][name], dense_opt.state["w"][name])


@pytest.mark.parametrize(("cls", "hyper"), DIFFERENT)
def test_sparse_leaves_absent_rows_where_dense_would_move_them(rng, cls, hyper):
    start, sparse_w, dense_w, sparse_opt, _ = run_both(rng, cls, hyper)
    np.testing.assert_array_equal(sparse_w[7], start[7])  # never in a batch: untouched
    assert not np.allclose(sparse_w, dense_w)  # the dense rule also moved absent rows
    fresh = cls({"w": np.zeros((8, 3))}, **hyper).state["w"]
    for name in sparse_opt.state_names:
        np.testing.assert_array_equal(sparse_opt.state["w"][name][7], fresh[name][7])


def test_sgd_momentum_buffer_waits_for_its_row(rng):
    w = np.zeros((3, 1))
    opt = SGD({"w": w}, lr=1.0, momentum=0.5, dampening=0.5)
    opt.step({"w": RowSparse(np.array([0]), np.ones((1, 1)), 3)})  # first step: b = g
    opt.step({"w": RowSparse(np.array([1]), np.ones((1, 1)), 3)})  # row 1: 0.5·0 + 0.5·1
    opt.step({"w": RowSparse(np.array([0]), np.ones((1, 1)), 3)})  # row 0: 0.5·1 + 0.5·1
    np.testing.assert_array_equal(w.ravel(), [-2.0, -0.5, 0.0])
    np.testing.assert_array_equal(opt.state["w"]["momentum_buffer"].ravel(), [1.0, 0.5, 0.0])


def test_sparse_step_costs_memory_of_its_rows_not_of_the_table(rng):
    table = np.zeros((1_000_000, 4))  # 32 MB: any dense temporary would show
    opt = RowWiseAdagrad({"t": table}, lr=0.1)
    grad = sparse_grad(rng, 1_000_000, 4, [3, 500_000, 999_999])
    tracemalloc.start()
    opt.step({"t": grad})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100_000, peak
    assert np.count_nonzero(table.any(axis=1)) == 3


@pytest.mark.parametrize("cls", ALL)
def test_state_dict_resumes_bit_for_bit(rng, cls):
    grads = [sparse_grad(rng, 5, 2, sorted([i % 5, (i + 2) % 5])) for i in range(8)]
    start = rng.standard_normal((5, 2))
    hyper = {"lr": 0.1, "weight_decay": 0.01} | ({"momentum": 0.9} if cls is SGD else {})
    straight = start.copy()
    opt = cls({"w": straight}, **hyper)
    for i, g in enumerate(grads):
        opt.step({"w": g if i % 2 else g.to_dense()})
        if i == 3:
            saved, saved_w = opt.state_dict(), straight.copy()
    resumed = saved_w
    opt2 = cls({"w": resumed}, **hyper)
    opt2.load_state_dict(saved)
    for i, g in enumerate(grads[4:], start=4):
        opt2.step({"w": g if i % 2 else g.to_dense()})
    np.testing.assert_array_equal(resumed, straight)
    assert opt2.state_dict()["w.step"] == 8


def test_state_dict_keys_and_copies():
    w = np.ones((2, 3))
    opt = Adam({"emb.weight": w}, amsgrad=True)
    sd = opt.state_dict()
    assert sorted(sd) == [
        "emb.weight.exp_avg",
        "emb.weight.exp_avg_sq",
        "emb.weight.max_exp_avg_sq",
        "emb.weight.step",
    ]
    assert sd["emb.weight.step"].dtype == np.int64 and sd["emb.weight.step"].shape == ()
    sd["emb.weight.exp_avg"][:] = 7  # a copy: the optimizer's state is not aliased
    assert not opt.state["emb.weight"]["exp_avg"].any()
    assert sorted(RowWiseAdagrad({"t": w}).state_dict()) == ["t.step", "t.sum"]
    assert RowWiseAdagrad({"t": w}).state_dict()["t.sum"].shape == (2, 1)
    assert sorted(SGD({"t": w}).state_dict()) == ["t.step"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("w.exp_avg"), "missing keys \\['w.exp_avg'\\]"),
        (lambda sd: sd.update({"v.exp_avg": np.zeros(2)}), "unexpected keys \\['v.exp_avg'\\]"),
        (lambda sd: sd.update({"w.exp_avg_sq": np.zeros((3, 2))}), "expected shape \\(2, 3\\)"),
        (lambda sd: sd.update({"w.exp_avg": np.zeros((2, 3), np.float32)}), "dtype float64"),
        (lambda sd: sd.update({"w.step": np.array(-1)}), "integer step >= 0"),
        (lambda sd: sd.update({"w.step": np.array(2.5)}), "integer step >= 0"),
        (lambda sd: sd.update({"w.step": np.array([1, 2])}), "integer step >= 0"),
    ],
)
def test_load_state_dict_refuses_and_changes_nothing(rng, edit, message):
    w = rng.standard_normal((2, 3))
    opt = Adam({"w": w})
    opt.step({"w": np.ones((2, 3))})
    before = opt.state_dict()
    sd = {k: v + 1 for k, v in before.items()}
    edit(sd)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_bad_gradients_are_refused_before_anything_changes(rng):
    params = {"a": np.ones((2, 2)), "b": np.ones(3)}
    opt = SGD(params, lr=0.1)
    cases = [
        ({"a": np.ones((2, 2)), "c": np.ones(1)}, ValueError, "unexpected keys \\['c'\\]"),
        ({"a": np.ones((2, 2)), "b": np.ones(4)}, ValueError, "expected shape \\(3,\\)"),
        ({"a": np.ones((2, 2)), "b": np.ones(3, np.float32)}, TypeError, "float32"),
        ({"a": np.ones((2, 2)), "b": [1.0, 1.0, 1.0]}, TypeError, "got list"),
        ({"b": RowSparse(np.array([0]), np.ones((1, 1)), 3)}, ValueError, "does not fit"),
        ({"a": RowSparse(np.array([0]), np.ones((1, 2)), 5)}, ValueError, "does not fit"),
        ([np.ones(3)], TypeError, "dict of gradients"),
    ]
    for grads, error, message in cases:
        with pytest.raises(error, match=message):
            opt.step(grads)
    assert (params["a"] == 1).all() and (params["b"] == 1).all()
    assert opt.state["a"]["step"] == 0


def test_a_parameter_without_gradient_is_skipped():
    params = {"a": np.ones(2), "b": np.ones(2)}
    opt = Adam(params, lr=0.1)
    opt.step({"a": np.ones(2)})
    assert opt.state["b"]["step"] == 0 and (params["b"] == 1).all()
    assert opt.state["a"]["step"] == 1


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: SGD(p, lr=-1.0), ValueError, "lr: expected a number >= 0"),
        (lambda p: SGD(p, lr=float("nan")), ValueError, "lr"),
        (lambda p: SGD(p, lr="0.1"), TypeError, "lr: expected a real number"),
        (lambda p: SGD(p, momentum=0.0, nesterov=True), ValueError, "nesterov"),
        (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), ValueError, "betas\\[1\\]"),
        (lambda p: Adam(p, betas=0.9), ValueError, "betas: expected a pair"),
        (lambda p: Adam(p, eps=-1e-8), ValueError, "eps"),
        (lambda p: Adagrad(p, lr_decay=-0.1), ValueError, "lr_decay"),
        (lambda p: Adagrad(p, initial_accumulator_value=-1), ValueError, "initial_accumulator"),
        (lambda p: RowWiseAdagrad({"v": np.ones(3)}), ValueError, "2-D \\(N, D\\)"),
        (lambda p: SGD({}), ValueError, "non-empty dict"),
        (lambda p: SGD({"w": np.ones(2, int)}), TypeError, "float32 or float64"),
        (lambda p: SGD({"a": p["w"], "b": p["w"]}), ValueError, "same array"),
    ],
)
def test_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make({"w": np.ones((2, 2))})


def test_combined_optimizer_routes_groups_and_prefixes_state(rng):
    params = {"dense.weight": rng.standard_normal((3, 2)), "emb.weight": np.zeros((5, 2))}
    dense_alone = params["dense.weight"].copy()
    combined = CombinedOptimizer(
        {
            "dense": Adam({"dense.weight": params["dense.weight"]}, lr=0.1),
            "sparse": RowWiseAdagrad({"emb.weight": params["emb.weight"]}, lr=0.1),
        }
    )
    alone = Adam({"dense.weight": dense_alone}, lr=0.1)
    for _ in range(3):
        g = rng.standard_normal((3, 2))
        combined.step({"dense.weight": g, "emb.weight": sparse_grad(rng, 5, 2, [1])})
        alone.step({"dense.weight": g})
    np.testing.assert_array_equal(params["dense.weight"], dense_alone)
    assert params["emb.weight"][[0, 2, 3, 4]].sum() == 0 and params["emb.weight"][1].all()
    assert sorted(combined.state_dict()) == [
        "dense.dense.weight.exp_avg",
        "dense.dense.weight.exp_avg_sq",
        "dense.dense.weight.step",
        "sparse.emb.weight.step",
        "sparse.emb.weight.sum",
    ]
    assert set(combined.params) == set(params)


def test_combined_optimizer_refuses_and_changes_nothing(rng):
    params = {"a": np.ones((2, 2)), "b": np.ones((2, 2))}
    combined = CombinedOptimizer({"x": SGD({"a": params["a"]}), "y": Adam({"b": params["b"]})})
    with pytest.raises(ValueError, match="no optimizer group owns \\['c'\\]"):
        combined.step({"a": np.ones((2, 2)), "c": np.ones(2)})
    with pytest.raises(ValueError, match="expected shape"):  # group y fails: x must not step
        combined.step({"a": np.ones((2, 2)), "b": np.ones(2)})
    assert (params["a"] == 1).all()
    combined.step({"a": np.ones((2, 2)), "b": np.ones((2, 2))})
    before = combined.state_dict()
    bad = dict(before)
    bad["y.b.exp_avg"] = np.zeros(3)
    bad["z.b.step"] = np.array(1)
    with pytest.raises(ValueError, match=r"keys of no group \['z\.b\.step'\].*group 'y'"):
        combined.load_state_dict(bad)
    bad = {k: v + 1 for k, v in before.items()}
    bad.pop("y.b.step")
    with pytest.raises(ValueError, match="missing keys"):  # x is fine, y not: x unchanged too
        combined.load_state_dict(bad)
    assert all(np.array_equal(combined.state_dict()[k], v) for k, v in before.items())
    combined.load_state_dict({k: v + 1 for k, v in before.items()})
    assert combined.state_dict()["x.a.step"] == 2


def test_combined_optimizer_refuses_overlapping_groups():
    w = np.ones(2)
    with pytest.raises(ValueError, match="'w' of group 'b' is also optimised by 'a'"):
        CombinedOptimizer({"a": SGD({"w": w}), "b": Adam({"w": np.ones(2)})})
    with pytest.raises(ValueError, match="also optimised"):
        CombinedOptimizer({"a": SGD({"w": w}), "b": Adam({"v": w})})
    with pytest.raises(ValueError, match="without '\\.'"):
        CombinedOptimizer({"a.b": SGD({"w": w})})
    with pytest.raises(TypeError, match="expected an Optimizer"):
        CombinedOptimizer({"a": object()})


@pytest.mark.parametrize("cls", ALL)
def test_an_empty_row_sparse_gradient_only_counts_the_step(cls):
    w = np.ones((3, 2))
    opt = cls({"w": w}, lr=0.1, weight_decay=0.1)
    opt.step({"w": RowSparse(np.zeros(0, np.int64), np.zeros((0, 2)), 3)})
    assert (w == 1).all() and opt.state["w"]["step"] == 1
