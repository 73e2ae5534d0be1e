import os

# Triton kernels run on CPU tensors through the interpreter; it must be set before any
# @triton.jit module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI replays the same examples every run (a red build must be reproducible); locally every run
# draws new ones. `pytest --hypothesis-profile=ci` replays the CI set.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    # Device queries stay lazy: decided here, after collection, never at import.
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    yield
