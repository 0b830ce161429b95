"""Every layer written again as plain loops: one sample, one multiply-add at a time.

Slow, obvious and independent of the vectorized layers, which the hand witness and the tests
check against them. A notebook may show one beside the matrix form it spells out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from refimpl.layers.activations import get_activation

KINDS = ("CrossNet", "LowRankCrossNet", "VectorCrossNet", "LowRankMixtureCrossNet")


def interaction_loop(
    dense: np.ndarray, sparse: np.ndarray, self_interaction: bool = False, pair_order="triu"
) -> np.ndarray:
    """The dot interaction written as plain loops, one multiply-add at a time.

    A didactic, independent implementation (slow) that the vectorized layer is tested against.

    >>> interaction_loop(np.array([[1.0, 2.0]]), np.array([[[3.0, 4.0], [5.0, 6.0]]]))
    array([[ 1.,  2., 11., 17., 39.]])
    """
    batch, num_features, dim = sparse.shape
    rows = [dense[b] for b in range(batch)]
    out = []
    for b in range(batch):
        features = [dense[b]] + [sparse[b, f] for f in range(num_features)]
        n = len(features)
        if pair_order == "triu":
            pairs = [
                (i, j) for i in range(n) for j in range(n) if j > i or (self_interaction and j == i)
            ]
        else:
            pairs = [
                (i, j) for i in range(n) for j in range(n) if j < i or (self_interaction and j == i)
            ]
        values = list(rows[b])
        if num_features:
            for i, j in pairs:
                total = 0.0
                for k in range(dim):
                    total += features[i][k] * features[j][k]
                values.append(total)
        out.append(values)
    return np.array(out, dtype=dense.dtype)


def crossnet_loop(
    x: np.ndarray, params: dict[str, np.ndarray], kind: str, activation: str = "relu"
) -> np.ndarray:
    """Any of the four cross networks written as plain loops over samples, layers and sums.

    Slow, obvious and independent of the vectorized layers, which are tested against it.
    ``params`` is a ``params``/``state_dict`` mapping; the layer count, rank and number of
    experts are read from its shapes. ``activation`` only matters for the mixture.

    >>> params = {"kernels.0": np.eye(2), "bias.0": np.zeros((2, 1))}
    >>> crossnet_loop(np.array([[1.0, -2.0]]), params, "CrossNet")
    array([[2., 2.]])
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    g = get_activation(activation).scalar
    p = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in params.items()}
    num_layers = sum(k.startswith("bias.") for k in params)
    num_gates = sum(k.startswith("gates.") for k in params)

    def matvec(matrix, vector):
        return [sum(m * v for m, v in zip(row, vector, strict=True)) for row in matrix]

    out = []
    for sample in np.asarray(x, dtype=np.float64).tolist():
        x0 = list(sample)
        xl = list(sample)
        n = len(x0)
        for l in range(num_layers):
            if kind == "CrossNet":
                wx = matvec(p[f"kernels.{l}"], xl)
                xl = [x0[i] * (wx[i] + p[f"bias.{l}"][i][0]) + xl[i] for i in range(n)]
            elif kind == "LowRankCrossNet":
                wvx = matvec(p[f"W_kernels.{l}"], matvec(p[f"V_kernels.{l}"], xl))
                xl = [x0[i] * (wvx[i] + p[f"bias.{l}"][i]) + xl[i] for i in range(n)]
            elif kind == "VectorCrossNet":
                score = sum(xl[i] * p[f"kernels.{l}"][i][0] for i in range(n))
                xl = [x0[i] * score + p[f"bias.{l}"][i][0] + xl[i] for i in range(n)]
            else:
                experts = []
                for k in range(len(p[f"U_kernels.{l}"])):
                    hidden = [g(a) for a in matvec(p[f"V_kernels.{l}"][k], xl)]
                    hidden = [g(e) for e in matvec(p[f"C_kernels.{l}"][k], hidden)]
                    uh = matvec(p[f"U_kernels.{l}"][k], hidden)
                    experts.append([x0[i] * (uh[i] + p[f"bias.{l}"][i][0]) for i in range(n)])
                if num_gates:
                    logits = [matvec(p[f"gates.{k}.weight"], xl)[0] for k in range(num_gates)]
                    top = max(logits)
                    exps = [math.exp(z - top) for z in logits]
                    probs = [e / sum(exps) for e in exps]
                else:
                    probs = [1.0]
                mix = [sum(p * e[i] for p, e in zip(probs, experts, strict=True)) for i in range(n)]
                xl = [mix[i] + xl[i] for i in range(n)]
        out.append(xl)
    return np.array(out, dtype=x.dtype)


def mlp_loop(
    input: np.ndarray,
    layers: Sequence[tuple[np.ndarray, np.ndarray | None]],
    activation: str = "relu",
    activation_on_last: bool = True,
) -> np.ndarray:
    """An MLP written as plain loops: one sample, one neuron, one multiply-add at a time.

    A didactic, independent implementation (slow) that the vectorized layers are tested
    against. ``layers`` lists ``(weight, bias)`` per layer, ``weight`` (O_i, I_i) and ``bias``
    (O_i,) or None. OverArch is ``activation_on_last=False`` over all its layers.

    >>> w = np.array([[1.0, -1.0], [0.5, 0.5]])
    >>> mlp_loop(np.array([[3.0, 1.0]]), [(w, np.array([0.0, -3.0]))])
    array([[2., 0.]])
    """
    batch, _ = input.shape
    out = []
    for b in range(batch):
        x = [float(v) for v in input[b]]
        for i, (weight, bias) in enumerate(layers):
            last = i == len(layers) - 1
            g = get_activation("identity" if last and not activation_on_last else activation).scalar
            y = []
            for o in range(weight.shape[0]):
                total = 0.0 if bias is None else float(bias[o])
                for k in range(weight.shape[1]):
                    total += float(weight[o, k]) * x[k]
                y.append(g(total))
            x = y
        out.append(x)
    return np.array(out, dtype=input.dtype)


def mlp_layers(params: Mapping[str, np.ndarray], prefix: str = "") -> list[tuple]:
    """``[(weight, bias or None), …]`` read from TorchRec-style keys ``{prefix}_mlp.i._linear.*``.

    >>> from refimpl import MLP
    >>> mlp = MLP(3, [2, 1], bias=False, seed=0)
    >>> [(w.shape, b) for w, b in mlp_layers(mlp.params)]
    [((2, 3), None), ((1, 2), None)]
    """
    layers = []
    i = 0
    while f"{prefix}_mlp.{i}._linear.weight" in params:
        key = f"{prefix}_mlp.{i}._linear"
        layers.append((params[f"{key}.weight"], params.get(f"{key}.bias")))
        i += 1
    return layers


def projection_loop(dense: np.ndarray, sparse: np.ndarray, branch1, branch2) -> np.ndarray:
    """The projection interaction written as plain loops, index arithmetic in place of reshape.

    A didactic, independent implementation (slow) that the vectorized layer is tested
    against. ``branch1`` and ``branch2`` map one sample's flattened ``[dense; sparse]``, a
    list of N floats, to a list of F1·D (resp. D·F2) floats (e.g. a closure over
    :func:`refimpl.mlp.mlp_loop`). Row-major reshapes become ``Y[i][k] = y[i·D + k]`` and
    ``Z[k][j] = z[k·F2 + j]``.

    >>> first_two = lambda c: c[:2]              # Y (1, 2) = first two values
    >>> first_four = lambda c: c[:4]             # Z (2, 2)
    >>> projection_loop(np.array([[1.0, 2.0]]), np.array([[[3.0, 4.0]]]), first_two, first_four)
    array([[ 1.,  2.,  7., 10.]])
    """
    batch, num_features, dim = sparse.shape
    out = []
    for b in range(batch):
        values = [float(v) for v in dense[b]]  # the passthrough
        if num_features:
            c = [float(v) for v in dense[b]]
            for f in range(num_features):
                c += [float(v) for v in sparse[b, f]]
            y, z = branch1(c), branch2(c)
            f1, f2 = len(y) // dim, len(z) // dim
            for i in range(f1):
                for j in range(f2):
                    total = 0.0
                    for k in range(dim):
                        total += y[i * dim + k] * z[k * f2 + j]  # Y[i, k] · Z[k, j]
                    values.append(total)
        out.append(values)
    return np.array(out, dtype=dense.dtype)


def fm_loop(embeddings: Sequence[np.ndarray], pairs: str = "scalars") -> np.ndarray:
    """The factorization machine by its definition: every pair, one product at a time, O(N²).

    ``pairs="scalars"`` (TorchRec): all pairs of the scalars of each flattened row.
    ``pairs="features"`` (the papers): all pairs of feature vectors, their dot products; a
    (B, D) input is one feature, a (B, F_i, D) input F_i features.

    >>> v = [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])]
    >>> fm_loop(v), fm_loop(v, "features")
    (array([[35.]]), array([[11.]]))
    """
    batch = embeddings[0].shape[0]
    out = []
    for b in range(batch):
        if pairs == "scalars":
            items = [[float(s)] for e in embeddings for s in np.ravel(e[b])]
        else:
            items = []
            for e in embeddings:
                rows = [e[b]] if e.ndim == 2 else list(e[b])
                items += [[float(s) for s in row] for row in rows]
        total = 0.0
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                for d in range(len(items[i])):
                    total += items[i][d] * items[j][d]
        out.append([total])
    return np.array(out, dtype=embeddings[0].dtype)


def fm_interaction_loop(
    dense: np.ndarray,
    sparse: Mapping[str, np.ndarray],
    names: Sequence[str],
    params: Mapping[str, np.ndarray],
    pairs: str = "scalars",
) -> np.ndarray:
    """TorchRec's FMInteractionArch as loops: ``[dense, deep, fm]`` for each sample.

    ``deep`` is ``relu(W x + b)`` over the flattened ``[dense, sparse[n] for n in names]``
    (``params`` keyed like TorchRec's: ``deep_fm.dense_module.0.weight``/``.bias``).
    """
    embeddings = [dense] + [sparse[n] for n in names]
    flat = np.concatenate(embeddings, axis=1)
    weight, bias = params["deep_fm.dense_module.0.weight"], params["deep_fm.dense_module.0.bias"]
    deep = mlp_loop(flat, [(weight, bias)], "relu")
    fm = fm_loop(embeddings, pairs)
    return np.concatenate([dense, deep, fm], axis=1)


def layer_norm_loop(x: np.ndarray, weight, bias, eps: float) -> np.ndarray:
    """Layer norm of every row (last axis), one number at a time.

    >>> layer_norm_loop(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2), 0.0)
    array([[-1.,  1.]])
    """
    rows = x.reshape(-1, x.shape[-1])
    out = []
    for row in rows:
        values = [float(v) for v in row]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        std = math.sqrt(var + eps)
        scaled = zip(values, weight, bias, strict=True)
        out.append([(v - mean) / std * float(w) + float(c) for v, w, c in scaled])
    return np.array(out, dtype=x.dtype).reshape(x.shape)


def attention_loop(x: np.ndarray, params: Mapping[str, np.ndarray], num_heads: int) -> np.ndarray:
    """Multi-head self-attention as loops over sequences, heads, queries and keys.

    ``x`` is (N, S, E): N sequences of S tokens; ``params`` has torch's keys
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``).
    """
    n_seq, seq, e = x.shape
    h = e // num_heads
    w_in, b_in = params["in_proj_weight"], params["in_proj_bias"]
    w_out, b_out = params["out_proj.weight"], params["out_proj.bias"]

    def project(token, row):  # one entry of in_proj applied to one token
        return float(b_in[row]) + sum(float(w_in[row, c]) * float(token[c]) for c in range(e))

    out = np.zeros(x.shape, dtype=x.dtype)
    for n in range(n_seq):
        tokens = [x[n, s] for s in range(seq)]
        q = [[project(t, r) for r in range(e)] for t in tokens]
        k = [[project(t, e + r) for r in range(e)] for t in tokens]
        v = [[project(t, 2 * e + r) for r in range(e)] for t in tokens]
        context = [[0.0] * e for _ in range(seq)]
        for head in range(num_heads):
            cols = range(head * h, (head + 1) * h)
            for i in range(seq):
                scores = [sum(q[i][c] * k[j][c] for c in cols) / math.sqrt(h) for j in range(seq)]
                top = max(scores)
                weights = [math.exp(z - top) for z in scores]
                total = sum(weights)
                for c in cols:
                    context[i][c] = sum(weights[j] / total * v[j][c] for j in range(seq))
        for i in range(seq):
            for r in range(e):
                value = float(b_out[r]) + sum(float(w_out[r, c]) * context[i][c] for c in range(e))
                out[n, i, r] = value
    return out


def encoder_layer_loop(
    x: np.ndarray, params: Mapping[str, np.ndarray], num_heads: int, eps: float
) -> np.ndarray:
    """torch's post-norm ReLU encoder layer on (N, S, E), from the loops above."""
    attention = {k[len("self_attn.") :]: v for k, v in params.items() if k.startswith("self_attn.")}
    summed = x + attention_loop(x, attention, num_heads)
    attended = layer_norm_loop(summed, params["norm1.weight"], params["norm1.bias"], eps)
    rows = attended.reshape(-1, attended.shape[-1])
    layers = [
        (params["linear1.weight"], params["linear1.bias"]),
        (params["linear2.weight"], params["linear2.bias"]),
    ]
    ff = mlp_loop(rows, layers, "relu", activation_on_last=False).reshape(attended.shape)
    return layer_norm_loop(attended + ff, params["norm2.weight"], params["norm2.bias"], eps)


def transformer_interaction_loop(
    dense: np.ndarray,
    sparse: np.ndarray,
    params: Mapping[str, np.ndarray],
    num_heads: int,
    eps: float = 1e-5,
    attend_across: str = "features",
) -> np.ndarray:
    """InteractionTransformerArch from the loops: per sample over its F+1 features
    (``"features"``), or per feature over the B samples (``"batch"``, TorchRec's)."""
    batch = dense.shape[0]
    x = np.concatenate([dense[:, None, :], sparse], axis=1)  # (B, F+1, D)
    if attend_across == "batch":
        x = x.transpose(1, 0, 2)
    i = 0
    while f"interarch_TE.layers.{i}.norm1.weight" in params:
        prefix = f"interarch_TE.layers.{i}."
        layer = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        x = encoder_layer_loop(x, layer, num_heads, eps)
        i += 1
    if attend_across == "batch":
        x = x.transpose(1, 0, 2)
    return x.reshape(batch, -1)


def embedding_bag_loop(weight, ids, lengths, per_id_weights=None, pooling="sum") -> np.ndarray:
    """One embedding bag written as plain loops: bag by bag, id by id, element by element.

    >>> weight = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    >>> embedding_bag_loop(weight, [0, 2, 0], [3, 0], pooling="mean")
    array([[1.33333333, 0.66666667],
           [0.        , 0.        ]])
    """
    dim = weight.shape[1]
    out, position = [], 0
    for length in lengths:
        bag = [0.0] * dim
        for _ in range(length):
            w = 1.0 if per_id_weights is None else float(per_id_weights[position])
            for k in range(dim):
                bag[k] += w * float(weight[ids[position], k])
            position += 1
        if pooling == "mean" and length:
            bag = [v / length for v in bag]
        out.append(bag)
    return np.array(out, dtype=np.float64).reshape(len(lengths), dim)


def embedding_bag_grad_loop(d_pooled, num_rows, ids, lengths, per_id_weights=None, pooling="sum"):
    """The table's gradient of :func:`embedding_bag_loop`, dense (num_rows, D), by loops: each
    lookup adds its bag's gradient (÷ length for the mean, × its weight) to its row.

    >>> embedding_bag_grad_loop(np.array([[1.0, 10.0]]), 3, [0, 2, 0], [3])
    array([[ 2., 20.],
           [ 0.,  0.],
           [ 1., 10.]])
    """
    dim = d_pooled.shape[1]
    grad = [[0.0] * dim for _ in range(num_rows)]
    position = 0
    for b, length in enumerate(lengths):
        for _ in range(length):
            scale = 1.0 if per_id_weights is None else float(per_id_weights[position])
            if pooling == "mean":
                scale /= length
            for k in range(dim):
                grad[ids[position]][k] += scale * float(d_pooled[b, k])
            position += 1
    return np.array(grad, dtype=np.float64).reshape(num_rows, dim)


def bce_with_logits_loop(logits, labels, pos_weight: float = 1.0) -> float:
    """Mean binary cross-entropy, ``−[q y log σ(x) + (1 − y) log(1 − σ(x))]``, logit by logit,
    straight from the definition (fine for moderate logits; the layer is the stable one).

    >>> round(bce_with_logits_loop([[0.0]], [[1.0]]), 12)    # log 2
    0.69314718056
    """
    flat_x = np.asarray(logits, dtype=np.float64).reshape(-1).tolist()
    flat_y = np.asarray(labels, dtype=np.float64).reshape(-1).tolist()
    total = 0.0
    for x, y in zip(flat_x, flat_y, strict=True):
        p = 1 / (1 + math.exp(-x))
        total += -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / len(flat_x)


def _embedded_loop(model, sparse_features) -> np.ndarray:
    """A model's pooled bags, (B, F, D), each by :func:`embedding_bag_loop`."""
    params = model.params
    ebc = model.sparse_arch.embedding_bag_collection
    embedded = []
    for table in ebc.tables:
        weight = params[f"sparse_arch.embedding_bag_collection.embedding_bags.{table.name}.weight"]
        for name in table.feature_names:
            ids, lengths, weights = sparse_features.feature(name)
            weights = weights if ebc.is_weighted else None
            embedded.append(embedding_bag_loop(weight, ids, lengths, weights, table.pooling))
    return np.stack(embedded, axis=1)  # (B, F, D)


def dlrm_loop(model, dense_features, sparse_features) -> np.ndarray:
    """A whole DLRM, DLRM_DCN, DLRM_Projection, DLRM_Transformer or DLRM_Baseline forward from
    the loop versions of its parts.

    Reads ``model``'s configuration and ``params`` only: each embedding bag by
    :func:`embedding_bag_loop`, the MLPs by :func:`mlp_loop`, the interaction by
    :func:`interaction_loop`, :func:`crossnet_loop`, :func:`projection_loop` or
    :func:`transformer_interaction_loop`.
    """
    params = model.params
    sparse = _embedded_loop(model, sparse_features)  # (B, F, D)
    dense = mlp_loop(dense_features, mlp_layers(params, "dense_arch.model."))  # (B, D)
    kind = type(model).__name__
    if kind == "DLRM_Transformer":
        prefix = "inter_arch."
        encoder = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        interaction = transformer_interaction_loop(
            dense, sparse, encoder, model.nhead, model.inter_arch.layer_norm_eps,
            model.attend_across,
        )  # fmt: skip
    elif kind == "DLRM_DCN":
        inter = {
            k[len("inter_arch.crossnet.") :]: v
            for k, v in params.items()
            if k.startswith("inter_arch.crossnet.")
        }
        combined = np.concatenate([dense[:, None, :], sparse], axis=1).reshape(len(dense), -1)
        interaction = crossnet_loop(combined, inter, "LowRankCrossNet")
    elif kind == "DLRM_Projection":
        branches = [mlp_layers(params, f"inter_arch.interaction_branch{i}.model.") for i in (1, 2)]

        def branch(layers):
            return lambda c: mlp_loop(np.array([c]), layers)[0].tolist()

        interaction = projection_loop(dense, sparse, branch(branches[0]), branch(branches[1]))
    elif kind == "DLRM_Baseline":
        batch, features, dim = sparse.shape
        interaction = np.zeros((batch, (features + 1) * dim))
        for b in range(batch):  # the dense vector first, then each feature's, end to end
            for d in range(dim):
                interaction[b, d] = dense[b, d]
            for f in range(features):
                for d in range(dim):
                    interaction[b, (f + 1) * dim + d] = sparse[b, f, d]
    else:
        interaction = interaction_loop(dense, sparse)
    over = mlp_layers(params, "over_arch.model.0.")
    over.append((params["over_arch.model.1.weight"], params["over_arch.model.1.bias"]))
    return mlp_loop(interaction, over, activation_on_last=False)


def deepfm_loop(model, dense_features, sparse_features) -> np.ndarray:
    """TorchRec's SimpleDeepFMNN forward from the loops: the bags, the two-layer dense arch,
    :func:`fm_interaction_loop`, the over arch's Linear and, with ``output="probabilities"``,
    its sigmoid. Reads ``model``'s configuration and ``params`` only."""
    params = model.params
    sparse = _embedded_loop(model, sparse_features)  # (B, F, D)
    dense_layers = [(params[f"dense_arch.model.{i}.weight"], params[f"dense_arch.model.{i}.bias"])
                    for i in (0, 2)]  # fmt: skip
    dense = mlp_loop(dense_features, dense_layers)  # (B, D)
    names = model.sparse_arch.sparse_feature_names
    by_name = {name: sparse[:, f] for f, name in enumerate(names)}
    prefix = "inter_arch."
    inter = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    interaction = fm_interaction_loop(dense, by_name, names, inter, model.fm_pairs)
    over = [(params["over_arch.model.0.weight"], params["over_arch.model.0.bias"])]
    logits = mlp_loop(interaction, over, activation_on_last=False)  # (B, 1)
    if model.output == "logits":
        return logits
    probabilities = [1 / (1 + math.exp(-float(z))) for z in logits[:, 0]]
    return np.array(probabilities, dtype=logits.dtype).reshape(-1, 1)
