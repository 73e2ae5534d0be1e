"""Pieces shared by the ``revgn`` commands: argument types, the usage error, the data and device
checks, and the filter for third-party warnings that tell a user nothing.

Exit statuses: 0 success, 1 a check that found a mismatch, 2 a usage or environment problem
(bad option, no GPU for ``--device cuda``, missing data), reported in one line on stderr.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

EXIT_STATUS = ("exit status: 0 success, 1 a failed check (revgn check), 2 a usage or environment "
               "problem (bad option, no GPU for --device cuda, missing data)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or there is none to show."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default is None or action.default is False or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


class UsageError(Exception):
    """A problem with the command line or the environment; ``revgn`` prints it in one line and
    exits with status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; whether it is usable is checked when the command runs."""
    import torch
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def require_device(name: str) -> None:
    """Raise ``UsageError`` when ``--device name`` cannot run here."""
    import torch
    parsed = torch.device(name)
    if parsed.type != "cuda":
        return
    if torch.version.cuda is None:
        why = f"this torch ({torch.__version__}) is a CPU build"
    elif not torch.cuda.is_available():
        why = "no CUDA device is visible (torch.cuda.is_available() is False)"
    elif parsed.index is not None and parsed.index >= torch.cuda.device_count():
        why = f"only {torch.cuda.device_count()} CUDA device(s) are visible"
    else:
        return
    raise UsageError(f"--device {name}: {why}; run on the CPU with --device cpu")


def require_mnist(data_dir) -> Path:
    """The MNIST folder of ``--data-dir`` (else ``$REVGN_MNIST_DIR``, else the shared copy
    beside the checkout); ``UsageError`` naming the flag, the variable and the files if none."""
    from revgn.data import MNIST_SOURCE, _find, default_mnist_dir
    folder = Path(data_dir) if data_dir else default_mnist_dir()
    if folder is None:
        raise UsageError(f"MNIST not found: pass --data-dir DIR or set REVGN_MNIST_DIR=DIR, a "
                         f"folder holding {MNIST_SOURCE}")
    if _find(folder, "t10k-images-idx3-ubyte") is None:
        raise data_error(FileNotFoundError(f"{folder}: no MNIST files there"), "mnist")
    return folder


def data_error(exc: Exception, dataset: str) -> UsageError:
    """A missing or unreadable dataset as a one-line usage error that says how to get it."""
    from revgn.data import CIFAR_SOURCE, MNIST_SOURCE
    message = str(exc)
    source = {"mnist": MNIST_SOURCE, "cifar10": CIFAR_SOURCE}.get(dataset)
    if source and source not in message:
        flag = "--data-dir DIR or REVGN_MNIST_DIR=DIR" if dataset == "mnist" else "--data-dir DIR"
        message += f" ({flag} must name a folder holding {source})"
    return UsageError(message)


# Third-party warnings that say nothing actionable to someone running a revgn command: torch's
# forward-mode AD loads decompositions through the deprecated torch.jit.script.
QUIET_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
)


def quiet_third_party_warnings() -> None:
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def write_record(path, record: dict) -> None:
    """Write a measurement as JSON to ``path``, with what reproduces it beside the numbers: the
    command line, Python's and torch's versions, and torch's thread count."""
    import json
    import platform
    import sys

    import torch
    provenance = dict(command=" ".join(["python", *sys.argv]), python=platform.python_version(),
                      torch=torch.__version__, threads=torch.get_num_threads())
    with open(path, "w") as f:
        json.dump({**provenance, **record}, f, indent=1)
