"""CI: a wheel of revgn, installed outside the checkout, tells the truth about its build.

    python .ci/check_wheel.py SITE_DIR EXPECT_CUDA(0|1)

Run from a folder outside the checkout with SITE_DIR (where the wheel was installed) first on
PYTHONPATH. Checks that revgn is imported from there, that the build record came with it, that
the record and the dispatcher agree on the CUDA kernels, and that `revgn info` reports them.
"""
import json
import os
import subprocess
import sys

site, expect_cuda = os.path.realpath(sys.argv[1]), sys.argv[2] == "1"
import revgn  # noqa: E402
from revgn import _extension  # noqa: E402

where = os.path.realpath(revgn.__file__)
assert where.startswith(site), f"revgn imported from {where}, not from the wheel in {site}"
record_path = os.path.join(os.path.dirname(where), "_build_info.json")
assert os.path.exists(record_path), "the wheel did not ship revgn/_build_info.json"
info = _extension.build_info()
assert info.get("built") and info.get("mode") == "aot", info
assert info["cuda"] == _extension.registered("cuda") == expect_cuda, (info, expect_cuda)
with open(record_path) as f:
    assert json.load(f)["cuda"] == expect_cuda
shown = json.loads(subprocess.run([sys.executable, "-m", "revgn", "info"], check=True,
                                  capture_output=True, text=True).stdout)
assert shown["installed"]["extension"]["cuda"] == expect_cuda, shown
print(f"wheel check: revgn from {os.path.dirname(where)}, extension built (CUDA kernels: "
      f"{expect_cuda}), revgn info agrees")
