"""``python -m refimpl train``: train DLRM, DLRM_DCN, DLRM_Projection, DLRM_Transformer,
SimpleDeepFMNN (DeepFM) or the no-interaction baseline with NumPy alone.

Exit status: 0 when the run is done (or paused by ``--stop-after``), 2 for bad input (nothing
is written), 1 when the loss became NaN or inf (the last checkpoint is kept), 130 after Ctrl-C
(a checkpoint is saved first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from refimpl.train.loop import (
    DATA_DEFAULTS,
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    MODELS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 64,16, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


def parser() -> argparse.ArgumentParser:
    synthetic = DATA_DEFAULTS["synthetic"]
    p = argparse.ArgumentParser(
        prog="python -m refimpl train",
        description="Train a DLRM with NumPy alone: a progress bar, validation metrics each "
        "epoch, metrics.csv, history.json, curves.png and checkpoint.npz (keyed by TorchRec's "
        "state_dict() names) in the output directory, test metrics at the end. Ctrl-C saves a "
        "checkpoint; --resume DIR continues exactly where it stopped. Sizes and "
        "hyper-parameters left out take the data set's defaults.",
    )
    # Every option defaults to None: "not given", so that --resume can tell what was asked.
    run = p.add_argument_group("the run")
    run.add_argument(
        "--model", choices=list(MODELS),
        help="dlrm (default), dcn, projection, transformer (DLRM_Transformer), deepfm "
        "(SimpleDeepFMNN), or baseline (no interaction)",
    )  # fmt: skip
    run.add_argument(
        "--data",
        help="synthetic (default), movielens-100k, or criteo:TRAIN[,VALIDATION[,TEST]] "
        "(Criteo TSV files, plain or .gz)",
    )
    run.add_argument("--epochs", type=int, help="default per data set (synthetic: 2)")
    run.add_argument("--batch-size", type=int, help="default per data set (synthetic: 512)")
    run.add_argument("--eval-batch-size", type=int, help="default 8192")
    run.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    run.add_argument("--seed", type=int, help="model initialisation and shuffling (default 0)")
    run.add_argument(
        "--out", type=Path, help="output directory (default runs/<model>-<data>-<time>)"
    )
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue the run saved in DIR")
    run.add_argument(
        "--stop-after", type=int, metavar="STEPS", help="take this many steps, save, exit"
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=0, metavar="STEPS",
        help="also save every STEPS steps (default: at the end of each epoch)",
    )  # fmt: skip
    run.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="the progress bar (default: on a terminal only)",
    )  # fmt: skip
    run.add_argument("--data-dir", help="the data cache for movielens-100k ($REFIMPL_DATA)")
    run.add_argument(
        "--torchrec-check", action="store_true",
        help="after the run, train TorchRec's model on the same batches from the same initial "
        "weights with torch.optim/torchrec.optim, and compare the metrics of every epoch and "
        "the final parameters (float64 runs; needs the parity extra; writes torchrec_check.json)",
    )  # fmt: skip
    run.add_argument(
        "--threads", type=int,
        help="threads for NumPy's BLAS and refimpl's stacked products (default: NumPy's). "
        "Small models train faster on 1 thread, much faster on a busy machine",
    )  # fmt: skip

    opt = p.add_argument_group("optimizers")
    opt.add_argument("--dense-optimizer", choices=list(DENSE_OPTIMIZERS), help="default adam")
    opt.add_argument("--dense-lr", type=float, help=f"default {synthetic['dense_lr']}")
    opt.add_argument(
        "--embedding-optimizer", choices=list(EMBEDDING_OPTIMIZERS), help="default rowwise-adagrad"
    )
    opt.add_argument("--embedding-lr", type=float, help=f"default {synthetic['embedding_lr']}")

    size = p.add_argument_group("model sizes")
    size.add_argument("--embedding-dim", type=int, help="D (default 16)")
    size.add_argument(
        "--dense-arch", type=_sizes, dest="dense_arch_layer_sizes",
        help="bottom MLP sizes, the last = D (default 64,D for synthetic)",
    )  # fmt: skip
    size.add_argument(
        "--over-arch", type=_sizes, dest="over_arch_layer_sizes",
        help="top MLP sizes, the last = 1 (default 128,64,1 for synthetic)",
    )  # fmt: skip
    size.add_argument("--dcn-layers", type=int, dest="dcn_num_layers", help="default 3")
    size.add_argument("--dcn-low-rank", type=int, dest="dcn_low_rank_dim", help="default 64")
    size.add_argument(
        "--branch1", type=_sizes, dest="interaction_branch1_layer_sizes",
        help="projection branch 1, last a multiple of D (default 128,4D)",
    )  # fmt: skip
    size.add_argument(
        "--branch2", type=_sizes, dest="interaction_branch2_layer_sizes",
        help="projection branch 2, last a multiple of D (default 128,4D)",
    )  # fmt: skip

    size.add_argument("--nhead", type=int, help="transformer: attention heads (default 2)")
    size.add_argument(
        "--transformer-layers", type=int, dest="ntransformer_layers",
        help="transformer: encoder layers (default 2)",
    )  # fmt: skip
    size.add_argument(
        "--dim-feedforward", type=int, help="transformer: feed-forward width (default 64)"
    )
    size.add_argument(
        "--attend-across", choices=["features", "batch"],
        help="transformer: per sample over its features (default), or across the batch as "
        "TorchRec's model does",
    )  # fmt: skip
    size.add_argument(
        "--hidden-layer-size", type=int, help="deepfm: the dense arch's hidden width (default 64)"
    )
    size.add_argument(
        "--deep-fm-dimension", type=int, help="deepfm: the deep branch's width (default 32)"
    )

    data = p.add_argument_group("data")
    data.add_argument(
        "--synthetic-tables", type=int, help=f"F (default {synthetic['synthetic_tables']})"
    )
    data.add_argument(
        "--synthetic-rows", type=int, help=f"rows per table (default {synthetic['synthetic_rows']})"
    )
    data.add_argument(
        "--synthetic-train", type=int,
        help=f"training samples (default {synthetic['synthetic_train']:,})",
    )  # fmt: skip
    data.add_argument(
        "--synthetic-eval", type=int,
        help=f"validation and test samples, each (default {synthetic['synthetic_eval']:,})",
    )  # fmt: skip
    data.add_argument("--data-seed", type=int, help="the planted model's seed (default 0)")
    data.add_argument(
        "--criteo-rows", type=int, help="rows per table, ids hashed modulo (default 100000)"
    )
    data.add_argument(
        "--criteo-holdout", type=int, metavar="LINES",
        help="with criteo:TRAIN alone: validation and test are TRAIN's last LINES lines "
        "(the first half validation), training the lines before them (Kaggle's train.txt is "
        "in time order; facebookresearch/dlrm holds out its last 6548659 lines)",
    )  # fmt: skip
    return p


FLOAT64_ONLY = (
    "--torchrec-check: compares float64 runs (in float32 rounding alone makes two correct "
    "implementations part ways after a few hundred steps); train with --dtype float64"
)

# The options that make up a TrainConfig (all but the run's own: out, resume, progress, ...).
CONFIG_FIELDS = tuple(TrainConfig.__dataclass_fields__)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS and v is not None}
    try:
        if args.stop_after is not None and args.stop_after < 1:
            raise ValueError(f"--stop-after: expected an integer >= 1, got {args.stop_after}")
        if args.threads is not None:
            set_threads(args.threads)
        if args.torchrec_check:
            from refimpl.tools.parity import ParityUnavailable, require_torchrec

            try:
                require_torchrec()
            except ParityUnavailable as error:
                raise ValueError(f"--torchrec-check: {error}") from None
            if args.resume is None and TrainConfig(**given).dtype != "float64":
                raise ValueError(FLOAT64_ONLY)
        if args.checkpoint_every < 0:
            raise ValueError(
                f"--checkpoint-every: expected an integer >= 0, got {args.checkpoint_every}"
            )
        if args.resume is not None:
            if args.out is not None and args.out.resolve() != args.resume.resolve():
                raise ValueError(
                    f"--out {args.out}: a resumed run writes into its own directory, {args.resume}"
                )
            epochs = given.pop("epochs", None)
            trainer = Trainer.resume(
                args.resume, epochs=epochs, expect=given, data_dir=args.data_dir
            )
            if args.torchrec_check and trainer.config.dtype != "float64":
                raise ValueError(FLOAT64_ONLY)
            pos = trainer.position
            print(
                f"resuming {args.resume} at epoch {pos.epoch + 1}, batch {pos.batch} (step "
                f"{pos.step})"
            )
        else:
            config = TrainConfig(**given)
            out = args.out or Path("runs") / (
                f"{config.model}-{config.data.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            trainer = Trainer(config, out, data_dir=args.data_dir)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{trainer.model!r}\n{_describe(trainer)}", flush=True)
    try:
        result = trainer.run(
            progress=args.progress,
            stop_after=args.stop_after,
            checkpoint_every=args.checkpoint_every,
        )
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result.status == "interrupted":
        return 130
    if args.torchrec_check and result.status == "done":
        return torchrec_check(trainer, args.threads)
    return 0


def torchrec_check(trainer: Trainer, threads: int | None) -> int:
    """Replay the finished run in TorchRec, print the comparison, write torchrec_check.json;
    status 0 when both agree within the tolerance, else 1."""
    import json

    from refimpl.tools.parity import replay_run_in_torchrec
    from refimpl.train.checkpoint import atomic_write_text
    from refimpl.train.loop import METRICS, finite_or_null

    report = replay_run_in_torchrec(
        trainer.out_dir, source=trainer.source, log=print, threads=threads
    )
    c = trainer.config
    print(
        f"TorchRec replay: {report['steps']:,} steps on the same batches from the same initial "
        f"weights ({c.dtype}; dense torch.optim.{c.dense_optimizer}, embeddings "
        f"{c.embedding_optimizer}); {report['samples'] / report['torchrec_seconds']:,.0f} "
        "samples/s"
    )
    print(f"{'test':<14}{'refimpl':>14}{'TorchRec':>14}{'difference':>12}")
    ours, theirs = report["test"]["refimpl"], report["test"]["torchrec"]
    for name in METRICS:
        gap = ours[name] - theirs[name]
        print(f"  {name:<12}{ours[name]:>14.8f}{theirs[name]:>14.8f}{gap:>12.1e}")
    key = max(report["parameters"], key=report["parameters"].get)
    print(
        f"largest metric difference over every epoch and the test split "
        f"{report['worst_metric']:.1e}; largest parameter difference "
        f"{report['worst_parameter']:.1e} relative ({key}); tolerance {report['tolerance']:.0e}: "
        + ("they agree" if report["agree"] else "THEY DISAGREE")
    )
    text = json.dumps(finite_or_null(report), indent=1, allow_nan=False)
    atomic_write_text(trainer.out_dir / "torchrec_check.json", text + "\n")
    return 0 if report["agree"] else 1


def set_threads(threads: int) -> None:
    """Limit NumPy's BLAS (through threadpoolctl, if installed) and refimpl's own threads."""
    if threads < 1:
        raise ValueError(f"--threads: expected an integer >= 1, got {threads}")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by refimpl.fast.threads at each call
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print(
            "note: --threads cannot reach NumPy's BLAS without threadpoolctl (pip install "
            "threadpoolctl); set OMP_NUM_THREADS before starting Python instead",
            file=sys.stderr,
        )
        return
    threadpool_limits(threads)


def _describe(trainer: Trainer) -> str:
    c = trainer.config
    return (
        f"data {c.data}, {c.dtype}, batch {c.batch_size}, {c.epochs} epochs, seed {c.seed}; "
        f"dense {c.dense_optimizer} lr {c.dense_lr}, embeddings {c.embedding_optimizer} lr "
        f"{c.embedding_lr}; writing to {trainer.out_dir}"
    )
