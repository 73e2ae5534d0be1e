"""Loading the compiled extension ``revgn._C``: built ahead of time (setup.py), else just in time.

Both builds make the same module from the same sources and flags (``revgn._build_config``):
``_C``, whose import registers the ops in ``torch.ops.revgn``. The just-in-time one is built in a
cache folder per torch version and CPU/CUDA choice, imported from there and entered in
``sys.modules`` as ``revgn._C``, so that the rest of the package sees one module either way.

``load()`` imports or builds once per process and caches the outcome; a failed build warns once
and every op falls back to the reference path (``backend="auto"``). ``REVGN_SKIP_EXT=1`` skips
the extension altogether.

A failed just-in-time build leaves its full log (``build-failure.log``) and a small record
(``build-failure.json``) in the build folder. The record is keyed by a hash of the sources, the
torch version, the compiler and the flags: until one of them changes, later processes do not
build again (a failed build costs seconds to minutes on every import otherwise) and warn with the
recorded reason instead. ``REVGN_REBUILD=1`` (or deleting the record) forces a new attempt.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import warnings

_state: dict | None = None

FAILURE_RECORD = "build-failure.json"
FAILURE_LOG = "build-failure.log"


class BuildFailed(RuntimeError):
    """A just-in-time build failed (now or in an earlier process with the same inputs)."""

    def __init__(self, reason: str, log_path: str | None, earlier: bool = False):
        super().__init__(reason)
        self.reason, self.log_path, self.earlier = reason, log_path, earlier


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _aot_record() -> dict:
    """The record setup.py wrote beside the package (installed as package data), with what the
    dispatcher says the loaded module registered; without the record, the dispatcher alone."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")
    record = {"built": True, "mode": "aot"}
    if os.path.exists(path):
        with open(path) as f:
            record.update(json.load(f))
    else:
        record["note"] = "no _build_info.json beside the package: kernels read off the dispatcher"
    record["cpu"], record["cuda"] = registered("cpu"), registered("cuda")
    return record


def _jit_build() -> dict:
    import torch
    from revgn import _build_config as config
    config.prefer_cuda_home()
    # torch notes at import that no CUDA runtime is present; on a CPU machine that is expected
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension
    root = _package_root()
    if not os.path.isdir(os.path.join(root, "csrc")):
        raise RuntimeError("the C++ sources (csrc/) are not beside the package; install from a "
                           "source checkout or build ahead of time (pip install "
                           "--no-build-isolation .)")
    with_cuda, why = config.cuda_decision(torch, cpp_extension)
    # At run time a CUDA build is only worth its minutes when a GPU is there to use it.
    if with_cuda and not torch.cuda.is_available():
        with_cuda, why = False, "no GPU in this process (just-in-time builds CPU only)"
    if with_cuda:
        config.set_default_arch_list(torch)
    build_dir = os.path.join(os.environ.get("REVGN_CACHE", os.path.expanduser("~/.cache/revgn")),
                             f"ext-torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}")
    os.makedirs(build_dir, exist_ok=True)
    options = dict(
        name=config.EXT_NAME.rpartition(".")[2],  # _C: one module, whichever build made it
        sources=config.sources(root, with_cuda),
        extra_cflags=config.cxx_flags() + (["-DREVGN_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=config.nvcc_flags(),
        extra_ldflags=["-fopenmp"],
        extra_include_paths=config.include_dirs(),
    )
    key = build_key(root, torch.__version__, with_cuda, options)
    earlier = _read_failure(build_dir)
    if earlier is not None and earlier.get("key") == key and os.environ.get("REVGN_REBUILD") != "1":
        raise BuildFailed(earlier.get("reason", "unknown"), earlier.get("log"), earlier=True)
    if not glob.glob(os.path.join(build_dir, "*.so")):
        print(f"revgn: compiling the C++ extension just in time into {build_dir} (first use "
              "only, about a minute)", flush=True)
    try:
        module = cpp_extension.load(**options, build_directory=build_dir, is_python_module=True,
                                    verbose=False)
    except Exception as exc:
        raise _record_failure(build_dir, key, exc) from exc
    _clear_failure(build_dir)
    sys.modules[config.EXT_NAME] = module
    setattr(sys.modules["revgn"], "_C", module)
    return config.build_record(torch, with_cuda, why, "jit")


def _compiler_identity(command: str | None) -> list:
    """Path, size and modification time of the compiler: changes when one is installed,
    upgraded or chosen through ``CXX``."""
    if not command:
        return [None]
    path = shutil.which(command)
    if path is None:
        return [command, None]
    real = os.path.realpath(path)
    stat = os.stat(real)
    return [command, real, stat.st_size, stat.st_mtime_ns]


def build_key(root: str, torch_version: str, with_cuda: bool, options: dict) -> str:
    """Hash of what a build's outcome depends on: every source and header under ``csrc/``, the
    torch version, the compilers (``CXX``, and ``nvcc`` for a CUDA build), ninja and the
    flags."""
    digest = hashlib.sha256()
    csrc = os.path.join(root, "csrc")
    for path in sorted(glob.glob(os.path.join(csrc, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, csrc).encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    nvcc = None
    if with_cuda:
        home = os.environ.get("CUDA_HOME") or ""
        nvcc = os.path.join(home, "bin", "nvcc") if home else "nvcc"
    identity = dict(torch=torch_version, cuda=with_cuda,
                    cxx=_compiler_identity(os.environ.get("CXX", "c++")),
                    nvcc=_compiler_identity(nvcc),
                    ninja=_compiler_identity("ninja"),
                    options={k: v for k, v in options.items() if k != "sources"})
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# Lines of a ninja/compiler log that frame the error rather than state it.
_NOISE = re.compile(r"^(\[\d+/\d+\]|FAILED:|ninja:|In file included from|Error building extension|"
                    r"\s*\^|\s*\||\d+ errors? generated)")
_ERROR = re.compile(r"\berror\b|not found|No such file|cannot find|undefined reference|"
                    r"command not found|Permission denied", re.IGNORECASE)


def first_error_line(log: str) -> str:
    """The line of a build log that says what went wrong (the compiler's first error)."""
    lines = [line.strip() for line in log.splitlines()]
    # compile commands (echoed by ninja) carry flags such as -Werror: not errors themselves
    candidates = [line for line in lines if line and not _NOISE.match(line)
                  and not (" -c " in line and " -o " in line)]
    for line in candidates:
        if _ERROR.search(line):
            return line
    if candidates:
        return candidates[0]
    return lines[-1] if lines else "no output"


def _read_failure(build_dir: str) -> dict | None:
    try:
        with open(os.path.join(build_dir, FAILURE_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _record_failure(build_dir: str, key: str, exc: Exception) -> BuildFailed:
    log = f"{type(exc).__name__}: {exc}"
    reason = first_error_line(str(exc)) if str(exc) else type(exc).__name__
    log_path = os.path.join(build_dir, FAILURE_LOG)
    try:
        with open(log_path, "w") as f:
            f.write(log)
        with open(os.path.join(build_dir, FAILURE_RECORD), "w") as f:
            json.dump(dict(key=key, reason=reason, log=log_path), f, indent=1)
    except OSError:  # a read-only cache: the failure is still reported, only not remembered
        log_path = None
    return BuildFailed(reason, log_path)


def _clear_failure(build_dir: str) -> None:
    for name in (FAILURE_RECORD, FAILURE_LOG):
        try:
            os.remove(os.path.join(build_dir, name))
        except OSError:
            pass


def _failure_message(exc: Exception) -> tuple[str, str]:
    """(reason kept in the state, the one warning shown)."""
    if isinstance(exc, BuildFailed):
        where = f"; full log: {exc.log_path}" if exc.log_path else ""
        if exc.earlier:
            return exc.reason, (
                f"revgn: the C++ extension failed to build in an earlier run ({exc.reason}){where}; "
                "not retried until its sources, torch or the compiler change (REVGN_REBUILD=1 "
                "retries now); using the pure-PyTorch reference path")
        return exc.reason, (f"revgn: the C++ extension could not be built ({exc.reason}){where}; "
                            "using the pure-PyTorch reference path (this build is not retried "
                            "until its sources, torch or the compiler change)")
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
    return reason, (f"revgn: the C++ extension could not be built ({reason}); using the "
                    "pure-PyTorch reference path")


def load() -> dict:
    """Import or build the extension; returns its build record, raises RuntimeError if absent."""
    global _state
    if _state is None:
        _state = _load_once()
    if not _state.get("built"):
        raise RuntimeError(f"the revgn extension is not available: {_state.get('reason')}")
    return _state


def _load_once() -> dict:
    if os.environ.get("REVGN_SKIP_EXT") == "1":
        return {"built": False, "reason": "REVGN_SKIP_EXT=1"}
    try:
        import revgn._C  # noqa: F401
        record = _aot_record()
    except ImportError:
        try:
            record = _jit_build()
        except Exception as exc:  # a missing compiler or a failed build: fall back, once, loudly
            reason, message = _failure_message(exc)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            record = {"built": False, "reason": reason}
            if isinstance(exc, BuildFailed) and exc.log_path:
                record["log"] = exc.log_path
            return record
    from revgn.ops.table import register_fakes
    register_fakes("revgn")  # shape-only kernels for torch.compile and opcheck
    return record


#: an op every build of the extension implements on every device type it was built for
PROBE_OP = "coupling_inverse_with_tangent"


def registered(device_type: str, op: str = PROBE_OP) -> bool:
    """Whether the loaded extension registered a kernel of ``op`` for ``device_type`` ("cpu"
    or "cuda"): asked of the dispatcher itself, so an install that lost its build record still
    tells the truth."""
    import torch
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"revgn::{op}", key))
    except RuntimeError:  # the op was never defined: nothing was loaded
        return False


def has_kernels(device_type: str) -> bool:
    try:
        load()
    except RuntimeError:
        return False
    return registered(device_type)


def build_info() -> dict:
    """What was built (shown by ``revgn info``); loads the extension if needed."""
    try:
        return dict(load())
    except RuntimeError:
        return dict(_state or {"built": False})
