"""The ``spa-nm`` argument parser: every subcommand's arguments, help and examples."""

from __future__ import annotations

import argparse

from spa_nm.cli._common import _float_arg, _positive, _ratio, _ratio_for, _ratios

_EPILOG_MAIN = """examples:
  spa-nm inspect models/onnx/resnet_basic.onnx
  spa-nm prune models/onnx -o pruned --ratio 0.5 --report pruned/report.json
  spa-nm prune model.onnx -o model_pruned.onnx --ratio 0.3 --global --round-to 8
"""


_EPILOG_PRUNE = """examples:
  spa-nm prune model.onnx -o small.onnx --ratio 0.5
  spa-nm prune a.onnx b.onnx zoo/ -o out/ --ratio 0.3 --criterion l1 --report out/report.json
  spa-nm prune model.onnx -o small.onnx --ratio 0.5 --global --round-to 8 --ignore 'head*'
  spa-nm prune gpt2.onnx -o small.onnx --ratio 0.25 --allow-approximate   # + residual stream
"""


def build_parser() -> argparse.ArgumentParser:
    from spa_nm import __version__
    from spa_nm.importance import AGGREGATIONS, CRITERIA
    from spa_nm.plan import DEFAULT_ROUND_TO
    from spa_nm.runtime import PROVIDERS

    p = argparse.ArgumentParser(
        prog="spa-nm",
        description="Structurally prune any ONNX model: find coupled channels, remove them for real.",
        epilog=_EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"spa-nm {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    g.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    pi = sub.add_parser(
        "inspect",
        parents=[common],
        help="show channel groups, blocked ops with reasons, params and MACs",
        epilog="examples:\n  spa-nm inspect model.onnx\n  spa-nm inspect model.onnx --json > groups.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pi.add_argument("model", help="an ONNX file")
    pi.add_argument("--json", action="store_true", help="print JSON instead of text")
    pi.add_argument(
        "--attention",
        choices=("heads", "head_dim"),
        default="heads",
        help="group attention by whole heads (default) or by head-dim indices",
    )
    pi.add_argument(
        "--allow-approximate",
        action="store_true",
        help="count groups whose removal is not exact (LayerNorm/RMSNorm residual streams) as prunable",
    )
    pi.add_argument("--force", action="store_true", help="read a model that fails the full ONNX checker anyway")

    pp = sub.add_parser(
        "prune",
        parents=[common],
        help="remove channels from one or many models",
        epilog=_EPILOG_PRUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="ONNX files and/or folders (searched for *.onnx)"
    )
    pp.add_argument("-o", "--output", required=True, help="output file (one input file) or folder")
    pp.add_argument(
        "--ratio",
        type=_ratio,
        required=True,
        help="fraction of channels to remove per group, in [0, 1)",
    )
    pp.add_argument(
        "--criterion",
        choices=sorted(CRITERIA),
        default="l2",
        help="importance criterion (default: l2)",
    )
    pp.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default="sum",
        help="how member slices combine (default: sum)",
    )
    pp.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        help="rank normalized scores across all groups",
    )
    pp.add_argument(
        "--round-to",
        type=_positive,
        default=DEFAULT_ROUND_TO,
        metavar="K",
        help="keep surviving channel counts multiples of K; odd counts can run slower than "
        f"dense (default: {DEFAULT_ROUND_TO})",
    )
    pp.add_argument(
        "--ignore",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="node names or wildcard patterns whose groups are kept",
    )
    pp.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default: 0)")
    pp.add_argument(
        "--attention",
        choices=("heads", "head_dim"),
        default="heads",
        help="attention: remove whole heads (default) or the same within-head indices of "
        "every head (head_dim)",
    )
    pp.add_argument(
        "--allow-approximate",
        action="store_true",
        help="also prune groups whose removal is not exact (a transformer's residual stream "
        "through LayerNorm/RMSNorm); the report marks them and measures the output error",
    )
    _add_obspa_args(pp)
    _add_schedule_args(pp)
    pp.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    _add_batch_args(pp, "pruned")
    pp.add_argument("--dry-run", action="store_true", help="show what would be pruned; write no model")

    _add_sensitivity_parser(sub, common)
    _add_regime_parser(sub, common)

    ps = sub.add_parser(
        "sparsify",
        parents=[common],
        help="N:M fine-grained sparsity on Conv/ConvTranspose/Gemm/MatMul weights",
        epilog="examples:\n  spa-nm sparsify model.onnx -o sparse.onnx --pattern 2:4\n"
        "  spa-nm sparsify pruned/ -o sparse/ --pattern 1:8 --ignore '*fc*' --report sparse/report.json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ps.add_argument("inputs", nargs="+", metavar="INPUT", help="ONNX files and/or folders (searched for *.onnx)")
    ps.add_argument("-o", "--output", required=True, help="output file (one input file) or folder")
    ps.add_argument("--pattern", required=True, metavar="N:M", help="keep N of every M weights along the reduction axis, e.g. 2:4, 1:8")
    ps.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns to leave dense")
    ps.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), default="magnitude",
                    help="which weights each block keeps: magnitude (default, no data), wanda or sparsegpt "
                    "(calibrated, docs/nm_oneshot.md)")  # fmt: skip
    ps.add_argument("--data", metavar="CALIB.npz", help="calibration inputs by graph input name (default for wanda/sparsegpt: "
                    "synthetic, reported); with magnitude: report each layer's reconstruction error")  # fmt: skip
    ps.add_argument("--calibration-samples", type=_positive, default=128, metavar="N",
                    help="calibration samples at most (default: 128)")  # fmt: skip
    ps.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    _add_batch_args(ps, "sparsified")

    _add_finetune_parser(sub, common)

    pv = sub.add_parser(
        "verify",
        parents=[common],
        help="compare a candidate model with the original on the same inputs",
        epilog="examples:\n  spa-nm verify model.onnx small.onnx\n  spa-nm verify model.onnx small.onnx --atol 1e-3 --data val.npz --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pv.add_argument("original")
    pv.add_argument("candidate")
    pv.add_argument("--atol", type=float, default=1e-4, help="largest allowed absolute difference (default: 1e-4)")
    pv.add_argument("--data", metavar="DATA.npz", help="inputs by name (or x_val of a training set); default: random")
    pv.add_argument("--provider", choices=PROVIDERS, default="cpu", help="execution provider (default: cpu)")
    pv.add_argument("--json", action="store_true", help="print JSON")

    pb = sub.add_parser(
        "bench",
        parents=[common],
        help="latency and throughput on onnxruntime, models interleaved",
        epilog="examples:\n  spa-nm bench model.onnx small.onnx\n  spa-nm bench small.onnx --provider cuda --batch 8 --iters 500 --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pb.add_argument("models", nargs="+", metavar="MODEL")
    pb.add_argument("--provider", choices=PROVIDERS, default="auto", help="execution provider (default: auto)")
    pb.add_argument("--batch", type=_positive, default=1, help="batch size for symbolic batch dims (default: 1)")
    pb.add_argument("--threads", type=_positive, default=None, help="intra-op threads (default: onnxruntime's)")
    pb.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default: 10)")
    pb.add_argument("--iters", type=_positive, default=100, help="timed runs per model (default: 100)")
    pb.add_argument("--json", action="store_true", help="print JSON")
    return p


_EPILOG_FINETUNE = """examples:
  spa-nm finetune model.onnx --data train.npz -o sparse.onnx --method sr-ste --pattern 2:4 --epochs 10
  spa-nm finetune model.onnx --data train.npz --val val.npz -o sparse.onnx --method mdgf-exp --pattern 1:8 \\
      --steps 2000 --lr 1e-3 --report sparse.json
  spa-nm finetune pruned.onnx --data train.npz -o tuned.onnx --method dense --epochs 3 --optimizer sgd --lr 0.01

data: an .npz with one array per model input, named like it (samples on axis 0), plus 'labels'
(integer class ids: cross-entropy on the first output). Without 'labels' the model is distilled
to the input model's outputs (MSE). The layout x_train, y_train, x_val, y_val also works for a
one-input model. Validation accuracy is measured by onnxruntime on the written model, with the
hard N:M masks applied (METHODS.md section 2.4). Needs torch: pip install 'spa_nm[train]'.
"""


def _add_finetune_parser(sub, common) -> None:
    from spa_nm.train.sparse import DEFAULT_GEOMETRIC_K, METHODS, SRSTE_LAMBDA

    pf = sub.add_parser(
        "finetune",
        parents=[common],
        help="train in torch with an N:M schedule (SR-STE, MDGF, SDGF, ...) or dense, write the ONNX back",
        epilog=_EPILOG_FINETUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pf.add_argument("model", help="an ONNX file")
    pf.add_argument("--data", required=True, metavar="TRAIN.npz", help="training arrays (see below)")
    pf.add_argument("--val", metavar="VAL.npz", help="validation arrays (default: a seeded split of --data, see --val-fraction)")
    pf.add_argument("-o", "--output", required=True, help="output ONNX file")
    pf.add_argument("--method", "--schedule", dest="method", choices=METHODS, default="sr-ste", help="training method (default: sr-ste)")
    pf.add_argument("--pattern", default="2:4", metavar="N:M", help="target N:M pattern (default: 2:4; ignored by dense)")
    budget = pf.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive, help="passes over the training data (default: 1)")
    budget.add_argument("--steps", type=_positive, help="optimizer steps instead of epochs")
    pf.add_argument("--lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate (default: 0.001)")
    pf.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule (default: cosine)")
    pf.add_argument("--batch-size", "--batch", dest="batch_size", type=_positive, default=64, help="samples per step (default: 64)")
    pf.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="optimizer (default: adamw; sgd uses momentum 0.9)")
    pf.add_argument("--weight-decay", type=_float_arg(0), default=0.0, help="weight decay (default: 0)")
    pf.add_argument("--seed", type=int, default=0, help="seed of the initial order, split and torch (default: 0)")
    pf.add_argument("--threads", type=_positive, metavar="N", help="torch CPU threads (default: torch's; 1 is often fastest for small models)")
    pf.add_argument("--val-fraction", type=_float_arg(0, 1, lo_open=True), default=0.2, help="validation share when --val is not given (default: 0.2)")
    pf.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns to leave dense")
    pf.add_argument("--lambda-w", type=_float_arg(0), default=SRSTE_LAMBDA, help=f"SR-STE's lambda_W (default: {SRSTE_LAMBDA:g})")
    pf.add_argument("--beta", type=_float_arg(0, lo_open=True), help="MDGF decay rate (default: from the budget, D near 0 at 70%% of the steps)")
    pf.add_argument("--geometric-k", type=_positive, default=DEFAULT_GEOMETRIC_K, metavar="K", help=f"SDGF-Geometric's k, a power of two (default: {DEFAULT_GEOMETRIC_K})")
    pf.add_argument("--dense-frac", type=_float_arg(0, 1), help="share of dense steps first (default: 0.05 for mdgf/sdgf, else 0)")
    pf.add_argument("--final-frac", type=_float_arg(0, 1), help="share of binary target-mask steps last (default: 0.15 for mdgf/sdgf, else 0)")
    pf.add_argument("--report", metavar="FILE.json", help="write a JSON report")


def _add_batch_args(parser, done: str) -> None:
    parser.add_argument("--jobs", type=_positive, default=1, metavar="N", help=f"models {done} in parallel, each in its own process (default: 1)")
    parser.add_argument("--timeout", type=_float_arg(0, lo_open=True), metavar="S",
                        help="seconds per model (in its own process); a model past it is stopped and reported as 'timeout'")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="try a model that fails the full ONNX checker anyway (the output may keep the input's "
                        "checker error, never a new one)")  # fmt: skip


def _add_obspa_args(parser) -> None:
    from spa_nm.obspa import DEFAULT_HESSIAN, HESSIANS

    parser.add_argument(
        "--hessian",
        choices=HESSIANS,
        default=None,
        help=f"how --criterion obspa estimates layer inputs (default: {DEFAULT_HESSIAN}; "
        "'data' when --calibration is given)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DATA.npz",
        help="calibration inputs for --criterion obspa (arrays by input name, or x_train)",
    )


def _add_schedule_args(parser) -> None:
    from spa_nm.iterative import SCHEDULES

    parser.add_argument(
        "--ratio-for", action="append", type=_ratio_for, default=[], metavar="PATTERN=R",
        help="ratio R for the groups touching nodes that match the glob PATTERN (repeatable; "
        "--ignore wins, then the last matching --ratio-for, then --ratio)",
    )  # fmt: skip
    parser.add_argument(
        "--data", metavar="DATA.npz",
        help="training arrays (by input name + labels, or x_train/y_train) for --criterion "
        "taylor/hessian/snip (default: random inputs labelled by the model) and --finetune-epochs",
    )  # fmt: skip
    parser.add_argument("--steps", type=_positive, default=1, metavar="K", help="prune in K rounds, re-scoring each round (default: 1)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="geometric", help="how the K rounds approach --ratio (default: geometric)")
    parser.add_argument("--finetune-epochs", type=int, default=0, metavar="E", help="fine-tune (dense) E epochs on --data after each round (default: 0)")
    parser.add_argument("--finetune-lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate of that fine-tuning (default: 0.001)")


_EPILOG_REGIME = """regimes (METHODS.md §1.8, §4.1):
  prune-train            prune at init (snip, l2, random), then train --epochs
  train-prune-finetune   [train --train-epochs] -> prune -> fine-tune --epochs
  train-prune            [train --train-epochs] -> prune (obspa; baseline l2), no fine-tuning
  scratch-e              pruned architecture, weights re-drawn, trained --epochs
  scratch-b              the same for --epochs x MACs(dense)/MACs(pruned), capped at 2x
examples:
  spa-nm regime prune-train init.onnx --data digits.npz --ratio 0.5 --criterion snip --epochs 20 -o p.onnx
  spa-nm regime train-prune trained.onnx --data digits.npz --ratio 0.3 --criterion obspa -o p.onnx
  spa-nm regime scratch-b trained.onnx --data digits.npz --ratio 0.5 --epochs 20 -o s.onnx
"""


def _add_regime_parser(sub, common) -> None:
    from spa_nm.importance import AGGREGATIONS, CRITERIA
    from spa_nm.plan import DEFAULT_ROUND_TO
    from spa_nm.regimes import REGIMES

    pr = sub.add_parser(
        "regime", parents=[common], help="prune at a time (the three regimes) or train a scratch baseline",
        epilog=_EPILOG_REGIME, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    pr.add_argument("regime", choices=REGIMES)
    pr.add_argument("model", help="an ONNX file (initial weights for prune-train, else trained unless --train-epochs)")
    pr.add_argument("--data", required=True, metavar="TRAIN.npz", help="labelled training arrays (by input name + labels, or x_train/y_train[/x_val/y_val])")
    pr.add_argument("--val", metavar="VAL.npz", help="validation arrays (default: x_val/y_val of --data, or a seeded 0.2 split)")
    pr.add_argument("-o", "--output", required=True, help="output ONNX file")
    pr.add_argument("--ratio", type=_ratio, required=True, help="fraction of channels to remove per group, in [0, 1)")
    pr.add_argument("--criterion", choices=sorted(CRITERIA), default="l2", help="importance criterion (default: l2)")
    pr.add_argument("--epochs", type=int, default=0, help="training epochs after pruning (scratch: the dense model's epochs)")
    pr.add_argument("--train-epochs", type=int, default=0, help="train the dense model first (regimes 2 and 3; default: 0, the model is trained)")
    pr.add_argument("--reinit", action="store_true", help="prune-train: re-draw the weights first (seeded)")
    pr.add_argument("--steps", type=_positive, default=1, metavar="K", help="prune in K rounds (default: 1)")
    pr.add_argument("--global", dest="global_ranking", action="store_true", help="rank normalized scores across all groups")
    pr.add_argument("--round-to", type=_positive, default=DEFAULT_ROUND_TO, metavar="K", help=f"keep surviving counts multiples of K (default: {DEFAULT_ROUND_TO})")
    pr.add_argument("--aggregation", choices=AGGREGATIONS, default="sum", help="how member slices combine (default: sum)")
    pr.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN", help="node names or wildcard patterns whose groups are kept")
    pr.add_argument("--lr", type=_float_arg(0, lo_open=True), default=1e-3, help="learning rate (default: 0.001)")
    pr.add_argument("--batch-size", type=_positive, default=64, help="samples per step (default: 64)")
    pr.add_argument("--seed", type=int, default=0, help="seed of training, random criterion and re-initialisation (default: 0)")
    pr.add_argument("--threads", type=_positive, metavar="N", help="torch CPU threads (default: torch's)")
    pr.add_argument("--report", metavar="FILE.json", help="write a JSON report")


def _add_sensitivity_parser(sub, common) -> None:
    from spa_nm.importance import CRITERIA
    from spa_nm.sensitivity import DEFAULT_RATIOS, PER

    pz = sub.add_parser(
        "sensitivity",
        parents=[common],
        help="prune each channel group alone at several ratios and measure the output error",
        epilog="examples:\n  spa-nm sensitivity model.onnx -o sens/\n"
        "  spa-nm sensitivity model.onnx --data val.npz --ratios 0.2,0.4 --per layer\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pz.add_argument("model", help="an ONNX file")
    pz.add_argument("-o", "--output", metavar="OUT_DIR", help="folder for sensitivity.json and .png (default: <model>_sensitivity)")
    pz.add_argument("--data", metavar="DATA.npz", help="evaluation inputs by name (or x_val), optional labels; default: random")
    pz.add_argument("--ratios", type=_ratios, default=list(DEFAULT_RATIOS), metavar="R1,R2,...",
                    help=f"ratios of each group to remove (default: {','.join(map(str, DEFAULT_RATIOS))})")  # fmt: skip
    pz.add_argument("--criterion", choices=sorted(CRITERIA), default="l2", help="importance criterion (default: l2)")
    pz.add_argument("--per", choices=PER, default="group", help="one row per channel group or per producer layer (default: group)")
    pz.add_argument("--samples", type=_positive, default=32, help="inputs evaluated (default: 32)")
    pz.add_argument("--round-to", type=_positive, default=1, metavar="K", help="keep surviving counts multiples of K (default: 1)")
    pz.add_argument("--seed", type=int, default=0, help="seed of random inputs and criterion (default: 0)")
    _add_obspa_args(pz)
