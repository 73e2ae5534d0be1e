"""Loading the Triton kernels (the top-level ``kernels/`` folder, installed as
``revgn.kernels``), beside ``revgn._extension`` which loads the compiled extension."""
from __future__ import annotations

import importlib.util as _ilu
import os as _os
import sys as _sys


def load_kernels():
    """Import the Triton kernels (``revgn.kernels``) on demand.

    Installs map the top-level kernels/ folder to revgn.kernels (setup.py's package_dir); a plain
    source checkout on sys.path does not, so it is mapped here the same way. Importing is deferred
    because ``TRITON_INTERPRET`` must be set before Triton modules load.
    """
    if "revgn.kernels" in _sys.modules:
        return _sys.modules["revgn.kernels"]
    try:
        if _ilu.find_spec("revgn.kernels") is not None:
            import importlib
            return importlib.import_module("revgn.kernels")
    except (ImportError, ValueError):
        pass
    init = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))),
                         "kernels", "__init__.py")
    if _os.path.exists(init):
        spec = _ilu.spec_from_file_location("revgn.kernels", init,
                                            submodule_search_locations=[_os.path.dirname(init)])
        module = _ilu.module_from_spec(spec)
        _sys.modules["revgn.kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del _sys.modules["revgn.kernels"]
            raise
        return module
    raise ImportError("revgn.kernels is not installed and no kernels/ folder is beside revgn/")
