"""Build script for revgn.

The Python package always installs. The C++/CUDA extension (``revgn._C``) is built ahead of time
when torch is importable at build time (``pip install --no-build-isolation .``); otherwise the
same module is compiled just in time on first use (see ``revgn/_extension.py``). Both routes read
the same source list and flags from ``revgn/_build_config.py``.

Flags: ``REVGN_SKIP_EXT=1`` skips the extension, ``REVGN_FORCE_CUDA=1`` fails unless the CUDA part
builds.
"""
import importlib.util
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    spec = importlib.util.spec_from_file_location(
        "revgn_build_config", os.path.join(HERE, "revgn", "_build_config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("REVGN_SKIP_EXT") == "1":
        return [], {}
    config = _load_build_config()
    config.prefer_cuda_home()
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        if os.environ.get("REVGN_FORCE_CUDA") == "1":
            sys.exit("REVGN_FORCE_CUDA=1 but torch is not importable at build time; "
                     "install torch first and use `pip install --no-build-isolation`.")
        return [], {}
    ext = config.make_extension(cpp_extension, HERE)
    if ext is None:
        return [], {}
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

packages = find_packages(include=["revgn", "revgn.*"]) + ["revgn.kernels"]

setup(
    name="revgn",
    version="0.1.0",
    description="Exact Gauss-Newton training for reversible networks and any nn.Module",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(
        os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    # the build record setup.py writes beside the package (what was compiled, for which arch)
    package_data={"revgn": ["_build_info.json"]},
    # The Triton kernels live in the top-level kernels/ folder but install as revgn.kernels, so
    # that `import kernels` stays free for the unrelated package of that name.
    package_dir={"revgn.kernels": "kernels"},
    install_requires=["torch>=2.4", "numpy", "scikit-learn", "matplotlib", "ninja"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy"],
        "triton": ["triton>=3.0"],
    },
    entry_points={"console_scripts": ["revgn=revgn.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
