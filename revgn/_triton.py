"""Loading the Triton kernels (the top-level ``kernels/`` folder, installed as
``revgn.kernels``), beside ``revgn._extension`` which loads the compiled extension."""
from __future__ import annotations

import importlib
import importlib.util as _ilu
import os as _os
import sys as _sys

_fakes_registered = False


def load_kernels():
    """Import the Triton kernels (``revgn.kernels``) on demand, with their fake (shape-only)
    implementations from ``revgn.ops`` registered.

    Installs map the top-level kernels/ folder to revgn.kernels (setup.py's package_dir); a plain
    source checkout on sys.path does not, so it is mapped here the same way. Importing is deferred
    because ``TRITON_INTERPRET`` must be set before Triton modules load.
    """
    module = _sys.modules.get("revgn.kernels") or _import()
    global _fakes_registered
    if not _fakes_registered:
        # The fakes live beside the references (kernels never import revgn.ops), once for
        # every backend; a kernels package imported by other means gets them here too.
        from revgn.ops.table import register_fakes
        register_fakes("revgn_triton")
        _fakes_registered = True
    return module


def _import():
    package = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(package)
    init = _os.path.join(root, "kernels", "__init__.py")
    # The kernels of this very revgn: installed inside the package, or in the source checkout
    # that holds it (an editable install's finder may map revgn.kernels to another checkout).
    # A checkout is told by its setup.py: site-packages may hold an unrelated kernels/ package.
    if _os.path.isdir(_os.path.join(package, "kernels")) or not (
            _os.path.exists(init) and _os.path.exists(_os.path.join(root, "setup.py"))):
        try:
            return importlib.import_module("revgn.kernels")
        except ModuleNotFoundError as exc:
            raise ImportError("revgn.kernels is not installed and no kernels/ folder is beside "
                              "revgn/") from exc
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
