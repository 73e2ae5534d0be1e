"""Side-by-side measurements of a GN step (``revgn bench`` and ``benchmarks/``).

Every timing here is a median over repeated runs in one process, and every figure reported is a
ratio of two such medians taken in the same run: absolute times on shared machines are noise.
Peak memory is the rise of the process's peak during one step: on CUDA the allocator's peak, on
CPU the kernel's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), measured
in a child process whose allocator maps every buffer of 64 KiB or more on its own
(``MALLOC_MMAP_THRESHOLD_``), so freed buffers leave the resident set and the peak is exact.
"""
from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import revgn


WORKLOADS = ("synthetic", "paper-mnist")

#: the paper's MNIST settings (Buffelli et al., their released configs): ExactGN's options and
#: Adam's learning rate
PAPER_GN_OPTIONS = dict(lr=0.1, loss="cross_entropy", curvature="identity",
                        step_scaling="per_block", rtol=1e-2, atol=1e-5)
PAPER_ADAM_LR = 1e-4


@dataclass
class Case:
    """One benchmark problem. ``workload="synthetic"``: a Gaussian batch and random labels
    (every coupling has full rank, the Cholesky route); ``"paper-mnist"``: the first ``n`` real
    MNIST training images and the paper's settings (``PAPER_GN_OPTIONS``; every coupling
    truncates). ``data_dir`` is the MNIST folder (None: ``revgn.data.default_mnist_dir()``)."""
    n: int = 256
    d: int = 784
    M: int = 2048
    L: int = 2
    k: int = 10
    dtype: str = "float32"
    device: str = "cpu"
    workload: str = "synthetic"
    data_dir: str | None = None

    def label(self) -> str:
        prefix = "" if self.workload == "synthetic" else f"{self.workload} "
        return f"{prefix}n={self.n} d={self.d} M={self.M} L={self.L} {self.dtype}"

    def gn_options(self) -> dict:
        if self.workload == "paper-mnist":
            return dict(PAPER_GN_OPTIONS)
        return dict(lr=1e-3)

    def adam_lr(self) -> float:
        return PAPER_ADAM_LR if self.workload == "paper-mnist" else 1e-6


def paper_mnist_case(device: str = "cpu", data_dir: str | None = None, n: int = 1024) -> Case:
    """The paper's MNIST full-batch workload: ``RevMLP(784, 10, depth=2, bottleneck=8000)`` on
    the first ``n`` training images."""
    return Case(n=n, d=784, M=8000, L=2, device=device, workload="paper-mnist",
                data_dir=data_dir)


def _mnist_batch(case: Case):
    from revgn.data import default_mnist_dir, load_mnist
    folder = case.data_dir or default_mnist_dir()
    if folder is None:
        raise FileNotFoundError("the paper-mnist workload needs MNIST: pass --data-dir or set "
                                "REVGN_MNIST_DIR to a folder of the IDX files")
    data = load_mnist(folder)
    if len(data.x_train) < case.n:
        raise ValueError(f"{folder} has {len(data.x_train)} training images; the workload "
                         f"needs {case.n}")
    return data.x_train[:case.n], data.y_train[:case.n]


def make_problem(case: Case, seed: int = 0):
    if case.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {case.workload!r}; choose one of {WORKLOADS}")
    torch.manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    model = revgn.RevMLP(case.d, case.k, depth=case.L, bottleneck=case.M).to(case.device, dtype)
    if case.workload == "paper-mnist":
        x, y = _mnist_batch(case)
        return model, x.to(case.device, dtype), y.to(case.device)
    x = torch.randn(case.n, case.d, device=case.device, dtype=dtype)
    y = torch.randint(0, case.k, (case.n,), device=case.device)
    return model, x, y


def gn_step(model, x, y, **options):
    opt = revgn.ExactGN(model, **options)

    def run():
        opt.step(x, y)
    return run


def authors_step(model, x, y, case: Case):
    """The authors' algorithm: forward-mode AD through the inverse and an SVD of every ``A~``,
    at the workload's thresholds and learning rate."""
    options = dict(case.gn_options(), solver="svd", tangent_mode="autodiff",
                   step_scaling="per_block", backend="reference")
    return gn_step(model, x, y, **options)


def adam_step(model, x, y, case: Case):
    opt = torch.optim.Adam(model.parameters(), lr=case.adam_lr())

    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return run


#: ``STEPS[name](model, x, y, case)``: a closure running one step of that implementation
STEPS = {
    "gn_auto": lambda m, x, y, c: gn_step(m, x, y, **c.gn_options(), backend="auto"),
    "gn_reference": lambda m, x, y, c: gn_step(m, x, y, **c.gn_options(), backend="reference"),
    # the GEMM-and-Cholesky truncated solve (solver="projector") in place of eigh
    "gn_projector": lambda m, x, y, c: gn_step(m, x, y, **dict(c.gn_options(), solver="projector")),
    "authors": authors_step,
    "adam": adam_step,
}


def coupling_routes(case: Case) -> list[dict]:
    """Each coupling's solver route and rank in one GN step of ``case`` (block order)."""
    model, x, y = make_problem(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = revgn.ExactGN(model, **case.gn_options()).step(x, y)
    rows = [dict(block=r.block, coupling=r.coupling, rank=r.rank, rows=r.rows, method=r.method,
                 residual=r.residual) for r in result.blocks]
    return sorted(rows, key=lambda r: (r["block"], r["coupling"]))


def gn_step_flops(case: Case) -> float:
    """Floating-point operations of one analytic GN step (2 per multiply-add), counting the GEMMs:
    the forward (``2 n h M`` per coupling), the sweep's inversion with tangent (``4 n h M``;
    tangents only in the top block, ``A_F`` only in the bottom block's F), the Gram
    (``n^2 M``) and the update (``n h M``)."""
    n, h, M, L = case.n, case.d // 2, case.M, case.L
    unit = n * h * M
    sweep = 0
    for l in range(L):
        top, bottom = l == L - 1, l == 0
        g = 2 if top else 4
        f = 0 if bottom and top else (1 if bottom else (2 if top else 4))
        sweep += g + f
    per_coupling_solve = n * n * M + unit
    return 2.0 * (2 * L * 2 * unit + sweep * unit + 2 * L * per_coupling_solve)


def adam_step_flops(case: Case) -> float:
    """Forward (``2 n h M`` per coupling) and backward (``3 n h M``; ``2`` for the first
    coupling, whose input needs no gradient)."""
    unit = case.n * (case.d // 2) * case.M
    couplings = 2 * case.L
    return 2.0 * unit * (2 * couplings + 3 * couplings - 1)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_times(fns: dict, device="cpu", repeats: int = 5, warmup: int = 2) -> dict:
    """Median wall time in seconds of each ``fns[name]()``, device synchronized around each run.

    The implementations take turns (one run of each per round), so a change in the machine's
    load during the measurement shifts all of them alike instead of biasing their ratios.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def peak_memory_rise(fn, device="cpu") -> int:
    """Bytes by which one call of ``fn`` raises the peak above what was in use before it."""
    fn()  # warm-up: lazily created state (optimizer moments, caches) is not a rise per step
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    base = _rss_bytes()
    fn()
    return _peak_rss_bytes() - base


def time_case(case: Case, names=tuple(STEPS), repeats: int = 5) -> dict:
    """Median seconds per step for each implementation, on the same model and batch."""
    fns = {}
    for name in names:
        model, x, y = make_problem(case)
        fns[name] = STEPS[name](model, x, y, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return median_times(fns, case.device, repeats)


def _memory_in_this_process(case: Case, name: str) -> int:
    model, x, y = make_problem(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return peak_memory_rise(STEPS[name](model, x, y, case), case.device)


def memory_case(case: Case, names=("gn_auto", "adam"), in_process: bool = False) -> dict:
    """Peak rise per step for each implementation (CPU: one child process each, unless
    ``in_process``: quicker, and less exact, since freed buffers may stay resident)."""
    if torch.device(case.device).type == "cuda" or in_process:
        return {name: _memory_in_this_process(case, name) for name in names}
    import subprocess
    import sys
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = {}
    for name in names:
        code = ("import json, sys; from revgn.cli.bench import Case, _memory_in_this_process; "
                "print(json.dumps(_memory_in_this_process(Case(**json.loads(sys.argv[1])), "
                "sys.argv[2])))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(case)), name],
                              env=env, capture_output=True, text=True, check=True)
        out[name] = int(proc.stdout.strip().splitlines()[-1])
    return out


def step_case(device="cpu", quick=False, workload="synthetic", data_dir=None) -> Case:
    """The timed problem of ``run_suite``."""
    if workload == "paper-mnist":
        if quick:
            return Case(n=128, d=784, M=1024, L=2, device=device, workload=workload,
                        data_dir=data_dir)
        return paper_mnist_case(device, data_dir)
    if workload != "synthetic":
        raise ValueError(f"unknown workload {workload!r}; choose one of {WORKLOADS}")
    if quick:
        return Case(n=64, d=128, M=256, L=2, device=device)
    if device == "cpu":
        return Case(device=device)
    return Case(n=1024, d=3072, M=8000, L=6, device=device)


def memory_cases(step: Case, quick=False) -> list[Case]:
    """The peak-memory problems: the timed one at the paper workload, else depths 2..8."""
    if step.workload != "synthetic":
        return [step]
    if quick:
        return [Case(n=128, d=32, M=512, L=L, device=step.device) for L in (2, 8)]
    return [Case(n=1024, d=64, M=4096, L=L, device=step.device) for L in (2, 4, 8)]


def run_suite(device="cpu", repeats=5, quick=False, workload="synthetic", data_dir=None) -> dict:
    step = step_case(device, quick, workload, data_dir)
    names = ("gn_auto", "gn_reference", "authors", "adam")
    if device != "cpu" and workload != "synthetic":
        # the truncated solve's GPU candidate; auto keeps eigh until this measures it faster
        names += ("gn_projector",)
    routes = coupling_routes(step)
    times = time_case(step, names, repeats)
    memory = [{"L": c.L, **memory_case(c, in_process=quick)} for c in memory_cases(step, quick)]
    ratios = {
        "gn_auto / adam": times["gn_auto"] / times["adam"],
        "authors / gn_auto": times["authors"] / times["gn_auto"],
        "gn_auto / gn_reference": times["gn_auto"] / times["gn_reference"],
    }
    if "gn_projector" in times:
        ratios["gn_projector / gn_auto"] = times["gn_projector"] / times["gn_auto"]
    first, last = memory[0], memory[-1]

    def ratio(a, b):  # an in-process (--quick) rise can be 0: freed memory was reused
        return a / b if b > 0 else float("nan")
    if len(memory) > 1:
        ratios[f"gn peak rise L={last['L']} / L={first['L']}"] = ratio(last["gn_auto"],
                                                                     first["gn_auto"])
        ratios[f"adam peak rise L={last['L']} / L={first['L']}"] = ratio(last["adam"],
                                                                       first["adam"])
    else:
        ratios["gn peak rise / adam peak rise"] = ratio(first["gn_auto"], first["adam"])
    report = {
        "step_case": asdict(step),
        "gn_options": step.gn_options(),
        "adam_lr": step.adam_lr(),
        "couplings": routes,
        "seconds": times,
        "repeats": repeats,
        "ratios": ratios,
        "memory_bytes": memory,
        "memory_in_process": quick,
        "backend_auto": revgn.backend.resolve("auto", torch.device(device)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device_name": (torch.cuda.get_device_name() if device == "cuda" else "cpu"),
    }
    if workload == "synthetic":
        # the GEMM count of the generic algorithm; the real workload's truncated and structured
        # solves have no such closed form
        report["tflops"] = {
            "gn_auto": gn_step_flops(step) / times["gn_auto"] / 1e12,
            "adam": adam_step_flops(step) / times["adam"] / 1e12,
        }
        report["flop_ratio_gn_over_adam"] = gn_step_flops(step) / adam_step_flops(step)
    return report


def format_report(report: dict) -> str:
    case = Case(**report["step_case"])
    lines = [f"GN step, {case.label()}, {report['device_name']}, {report['threads']} threads, "
             f"auto -> {report['backend_auto']}"]
    for row in report.get("couplings", []):
        lines.append(f"  block {row['block']} {row['coupling']}: rank {row['rank']}/{row['rows']}"
                     f"  {row['method']}")
    for name, sec in report["seconds"].items():
        lines.append(f"  {name:<14}{sec * 1e3:10.2f} ms")
    for name, rate in report.get("tflops", {}).items():
        lines.append(f"  {name:<14}{rate * 1e3:10.1f} GFLOP/s achieved (GEMM count)")
    if "flop_ratio_gn_over_adam" in report:
        lines.append(f"  GEMM flops GN / Adam: {report['flop_ratio_gn_over_adam']:.2f} (the floor)")
    lines.append("ratios (same run):")
    for name, value in report["ratios"].items():
        lines.append(f"  {name:<32}{value:8.2f}")
    lines.append("peak memory rise during one step (MiB)" + (
        ", measured in this process (--quick: reused memory hides rises):"
        if report.get("memory_in_process") else ":"))
    for row in report["memory_bytes"]:
        lines.append(f"  L={row['L']:<3} gn_auto {row['gn_auto'] / 2**20:9.1f}   "
                     f"adam {row['adam'] / 2**20:9.1f}")
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(report["seconds"])
    adam = report["seconds"]["adam"]
    ratios = [report["seconds"][k] / adam for k in names]
    bars = ax1.bar(names, ratios, color="#4a7ab5")
    ax1.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], fontsize=8)
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_ylabel("time / Adam step")
    ax1.set_title(Case(**report["step_case"]).label(), fontsize=9)
    Ls = [r["L"] for r in report["memory_bytes"]]
    for key, color in (("gn_auto", "#4a7ab5"), ("adam", "#d9822b")):
        ax2.plot(Ls, [r[key] / 2**20 for r in report["memory_bytes"]], "o-", color=color,
                 label=key)
    ax2.set_xlabel("depth L")
    ax2.set_ylabel("peak rise per step (MiB)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    report = run_suite(device=args.device, repeats=args.repeats, quick=args.quick,
                       workload=getattr(args, "workload", "synthetic"),
                       data_dir=getattr(args, "data_dir", None))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_report(report, os.path.join(args.out, "bench.png"))
    print(format_report(report))
    print(f"wrote {args.out}/bench.json and {args.out}/bench.png")
    return 0
