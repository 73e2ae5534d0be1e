"""Sources and flags of the C++/CUDA extension, shared by setup.py and the just-in-time loader.

Imports nothing from torch at module level so that setup.py can read it before torch exists.
"""
from __future__ import annotations

import os


def make_extension(cpp_extension, root):
    """Return the ``revgn._C`` extension to build ahead of time, or None to skip it."""
    return None
