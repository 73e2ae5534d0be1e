"""revgn: exact Gauss-Newton training for reversible networks and any nn.Module."""
from __future__ import annotations

__version__ = "0.1.0"

from revgn._triton import load_kernels  # noqa: E402,F401
from revgn.model import RevMLP  # noqa: E402
from revgn.exact_gn import ExactGN, GNStepResult, NonFiniteStepError  # noqa: E402
from revgn.egn import EGN, EGNResult, SGN  # noqa: E402
