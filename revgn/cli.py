"""The ``revgn`` command line: demo, info, check, bench, experiment, egn-examples."""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch


def _info(args) -> int:
    import revgn
    from revgn import backend
    info = {
        "revgn": revgn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    info["backends"] = backend.summary()
    print(json.dumps(info, indent=2, default=str))
    return 0


def _demo(args) -> int:
    from revgn import demo
    return demo.main(args)


def _check(args) -> int:
    from revgn import check
    return check.main(args)


def _bench(args) -> int:
    from revgn import bench
    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revgn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="ExactGN vs Adam vs SGD on scikit-learn's digits")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--bottleneck", type=int, default=1024)
    demo.add_argument("--depth", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", help="versions and available backends")
    info.set_defaults(func=_info)

    check = sub.add_parser("check", help="every fast backend against the reference on this "
                                         "machine; exit status 1 on any mismatch")
    check.add_argument("--device", default="cpu")
    check.add_argument("--backend", default="all", choices=["all", "cpp", "cuda", "triton"])
    check.set_defaults(func=_check)

    bench = sub.add_parser("bench", help="short benchmark: GN step vs Adam vs the authors' "
                                         "algorithm; ratios, JSON and a plot")
    bench.add_argument("--out", default="bench-out")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--quick", action="store_true")
    bench.set_defaults(func=_bench)

    # These two hand the rest of the command line to their own parsers.
    sub.add_parser("experiment", help="the papers' experiments (revgn experiment --help)",
                   add_help=False)
    sub.add_parser("egn-examples", help="EGN vs Adam vs SGD on digits and diabetes",
                   add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "experiment":
        from revgn.experiments import main as experiment_main
        return experiment_main(argv[1:]) or 0
    if argv and argv[0] == "egn-examples":
        from revgn.egn.examples import main as egn_main
        return egn_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
