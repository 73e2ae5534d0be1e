"""The ``revgn`` command: its parser and the dispatch to demo, info, check, bench, experiment,
report and egn-examples."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings

import torch

from revgn.cli.common import (EXIT_STATUS, HelpFormatter, UsageError, device, positive_int,
                        quiet_third_party_warnings, require_device, require_mnist)


def info_report() -> dict:
    """Versions, what is installed, and what of it is usable on this machine's devices."""
    import revgn
    from revgn import backend
    summary = backend.summary()
    report = {
        "revgn": revgn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    report.update(summary)
    notes = []
    installed = summary["installed"]
    version = installed["triton"]
    if version is not None and not installed["triton_kernels_load"]:
        notes.append(f"triton {version} is installed but revgn's Triton kernels do not import "
                     "here; the triton backend is unusable")
    elif version is not None and "triton" not in summary["usable"]["cpu"]:
        notes.append(f"triton {version} is installed; it runs revgn's kernels on a CUDA device, "
                     "and on the CPU only under TRITON_INTERPRET=1 (the interpreter: slow, for "
                     "checking, e.g. TRITON_INTERPRET=1 revgn check --backend triton)")
    extension = installed["extension"]
    if not extension.get("built"):
        notes.append(f"the C++ extension is not built ({extension.get('reason')}): the "
                     "pure-PyTorch reference path runs")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f" (this torch, {torch.__version__}, is a CPU build)"
        elif extension.get("cuda"):
            why = ": the extension's CUDA kernels are installed but unused"
        else:
            why = ""
        notes.append(f"no CUDA device is visible{why}")
    report["notes"] = notes
    return report


def _info(args) -> int:
    print(json.dumps(info_report(), indent=2, default=str))
    return 0


def _demo(args) -> int:
    from revgn.cli import demo
    return demo.main(args)


def _check(args) -> int:
    require_device(args.device)
    from revgn.cli import backend_check
    return backend_check.main(args)


def _report(args) -> int:
    from revgn.experiments.report import summary
    for path in args.results:
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        if not (isinstance(result, dict) and {"experiment", "config", "runs"} <= set(result)
                and result["runs"]):
            raise UsageError(f"{path} is not a results.json written by revgn experiment "
                             "(a run's checkpoint under runs/ is not one either)")
        print(summary(result), end="\n\n")
    return 0


def _bench(args) -> int:
    require_device(args.device)
    if args.workload == "paper-mnist":
        args.data_dir = str(require_mnist(args.data_dir))
    print(f"revgn bench: writing bench.json and bench.png to {os.path.abspath(args.out)} (--out)",
          file=sys.stderr, flush=True)
    from revgn.cli import bench
    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revgn", description="Exact Gauss-Newton training for PyTorch: a demo, the "
                                  "backends and their checks, benchmarks and the papers' "
                                  "experiments. `revgn COMMAND --help` describes each command.",
        epilog=EXIT_STATUS,
        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = HelpFormatter

    demo = sub.add_parser(
        "demo", help="ExactGN vs Adam vs SGD on scikit-learn's digits (about a minute)",
        description="Trains a RevMLP on scikit-learn's bundled digits with ExactGN, Adam and SGD "
                    "and prints train loss, test accuracy and time per step to stdout (and as "
                    "JSON with --out).", epilog=EXIT_STATUS, formatter_class=formatter)
    demo.add_argument("--epochs", type=positive_int, default=5, help="passes over the training set")
    demo.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    demo.add_argument("--bottleneck", type=positive_int, default=1024,
                      help="width M of the inverted bottleneck")
    demo.add_argument("--depth", type=positive_int, default=2, help="reversible blocks")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, init and batches")
    demo.add_argument("--out", default=None, metavar="FILE",
                      help="also write the table and the run's settings as JSON to FILE")
    demo.set_defaults(func=_demo)

    info = sub.add_parser(
        "info", help="versions; what is installed and what is usable on this machine",
        description="Prints JSON to stdout: versions, what is installed (Triton, the C++ "
                    "extension and the kernels it holds), which backends are usable on each "
                    "device here, which one backend='auto' picks, and notes on the gaps.",
        epilog=EXIT_STATUS)
    info.set_defaults(func=_info)

    check = sub.add_parser(
        "check", help="every fast backend against the reference on this machine; exit status "
                      "1 on any mismatch",
        description="Runs every fast backend usable on --device against the pure-PyTorch "
                    "reference (each op over shapes with tails, every activation, float32 and "
                    "float64, then a whole GN step) and prints one row per backend, op and "
                    "dtype to stdout. On the CPU the Triton kernels run only under "
                    "TRITON_INTERPRET=1.", epilog=EXIT_STATUS, formatter_class=formatter)
    check.add_argument("--device", type=device, default="cpu",
                       help="cpu, cuda or cuda:N (a GPU must be visible)")
    check.add_argument("--backend", default="all", choices=["all", "cpp", "cuda", "triton"],
                       help="the backend to check; all: every one usable on --device")
    check.set_defaults(func=_check)

    bench = sub.add_parser(
        "bench", help="short benchmark: GN step vs Adam vs the authors' algorithm; writes "
                      "bench.json and bench.png into --out",
        description="Times a GN step against Adam and the authors' algorithm in one process and "
                    "measures peak memory against depth; prints the ratios to stdout and writes "
                    "bench.json and bench.png into --out.", epilog=EXIT_STATUS,
        formatter_class=formatter)
    bench.add_argument("--out", default="bench-out",
                       help="folder for bench.json and bench.png, created if needed, "
                            "relative to the current folder")
    bench.add_argument("--device", type=device, default="cpu",
                       help="cpu, cuda or cuda:N (a GPU must be visible)")
    bench.add_argument("--repeats", type=positive_int, default=5,
                       help="timed runs per implementation (the median is reported)")
    bench.add_argument("--quick", action="store_true",
                       help="small shapes: a smoke test of the benchmark, not a measurement")
    bench.add_argument("--workload", default="synthetic", choices=["synthetic", "paper-mnist"],
                       help="synthetic: random Gaussian batch; paper-mnist: the first 1024 real "
                            "MNIST training images at the paper's settings")
    bench.add_argument("--data-dir", default=None,
                       help="MNIST folder for paper-mnist (default: $REVGN_MNIST_DIR, else "
                            "shared/data/mnist beside the checkout)")
    bench.set_defaults(func=_bench)

    report = sub.add_parser(
        "report", help="the summary tables of stored experiment results",
        description="Prints the summary tables of each results.json (the last epoch, mean "
                    "over seeds, and each run at GN's final training loss), from the file "
                    "alone: nothing is trained.",
        epilog=EXIT_STATUS, formatter_class=formatter)
    report.add_argument("results", nargs="+", metavar="RESULTS_JSON",
                        help="results.json files written by revgn experiment")
    report.set_defaults(func=_report)

    # These two hand the rest of the command line to their own parsers.
    sub.add_parser("experiment", help="the papers' experiments (revgn experiment --help)",
                   add_help=False)
    sub.add_parser("egn-examples", help="EGN vs Adam vs SGD on digits and diabetes "
                                        "(revgn egn-examples --help)", add_help=False)
    return parser


def _dispatch(argv) -> int:
    if argv and argv[0] == "experiment":
        from revgn.experiments import main as experiment_main
        return experiment_main(argv[1:]) or 0
    if argv and argv[0] == "egn-examples":
        from revgn.cli.egn_examples import main as egn_main
        return egn_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        quiet_third_party_warnings()
        try:
            return _dispatch(argv)
        except UsageError as exc:
            command = f"revgn {argv[0]}" if argv else "revgn"
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("revgn: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
