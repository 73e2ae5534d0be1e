"""Loading the compiled extension: ``revgn._C`` built ahead of time, else a just-in-time build.

``load()`` imports or builds once per process and caches the outcome; a failed build warns once
and every op falls back to the reference path (``backend="auto"``). ``REVGN_SKIP_EXT=1`` skips
the extension altogether.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import warnings

_state: dict | None = None


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _aot_record() -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"built": True, "mode": "aot", "cpu": True, "cuda": False}


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
    if not glob.glob(os.path.join(build_dir, "*.so")):
        print(f"revgn: compiling the C++ extension just in time into {build_dir} (first use "
              "only, about a minute)", flush=True)
    cpp_extension.load(
        name="revgn_ext" + ("_cuda" if with_cuda else ""),
        sources=config.sources(root, with_cuda),
        extra_cflags=config.cxx_flags() + (["-DREVGN_WITH_CUDA"] if with_cuda else []),
        extra_cuda_cflags=config.nvcc_flags(),
        extra_ldflags=["-fopenmp"],
        extra_include_paths=config.include_dirs(),
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    return config.build_record(torch, with_cuda, why, "jit")


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
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
            warnings.warn(f"revgn: the C++ extension could not be built ({reason}); using the "
                          "pure-PyTorch reference path", RuntimeWarning, stacklevel=3)
            return {"built": False, "reason": reason}
    from revgn import _fake  # noqa: F401  (fake kernels for torch.compile / opcheck)
    return record


def has_kernels(device_type: str) -> bool:
    try:
        record = load()
    except RuntimeError:
        return False
    return device_type == "cpu" or (device_type == "cuda" and bool(record.get("cuda")))


def build_info() -> dict:
    """What was built (shown by ``revgn info``); loads the extension if needed."""
    try:
        return dict(load())
    except RuntimeError:
        return dict(_state or {"built": False})
