"""Where one GN step's time goes: ``torch.profiler`` over steps of a benchmark workload.

    python benchmarks/profile_step.py --workload paper-mnist --out DIR

Prints the ops with the largest self CPU time (total over the profiled steps, then per step) and
writes them to ``DIR/profile_<workload>.json``. One warm-up step runs unprofiled first.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from revgn.cli.bench import STEPS, WORKLOADS, make_problem, step_case


def profile_step(case, name="gn_auto", steps=3, top=15):
    model, x, y = make_problem(case)
    run = STEPS[name](model, x, y, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run()
        activities = [ProfilerActivity.CPU]
        if torch.device(case.device).type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [dict(op=e.key, calls_per_step=e.count / steps,
                 self_ms_per_step=e.self_cpu_time_total / 1e3 / steps) for e in events[:top]]
    return dict(implementation=name, steps=steps, step_case=vars(case),
                total_self_ms_per_step=total / 1e3 / steps, top=rows,
                threads=torch.get_num_threads(), torch=torch.__version__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, default="paper-mnist")
    parser.add_argument("--implementation", choices=list(STEPS), default="gn_auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    case = step_case(args.device, workload=args.workload, data_dir=args.data_dir)
    report = profile_step(case, args.implementation, args.steps)
    print(f"{args.implementation}, {case.label()}: {report['total_self_ms_per_step']:.0f} ms "
          f"self CPU per step ({report['threads']} threads)")
    for row in report["top"]:
        print(f"  {row['op']:<36}{row['calls_per_step']:7.1f} calls {row['self_ms_per_step']:9.1f} ms")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"profile_{args.workload}_{args.implementation}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
