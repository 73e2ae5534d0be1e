"""The README's Python examples run as written, in order, in a fresh interpreter."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_readme_examples_run_as_written(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 2 and "loader" in blocks[0] and "optimizer.step(lambda" in blocks[1]
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = [line.split() for line in proc.stdout.splitlines()]
    assert len(printed) == 4  # 512 examples, batches of 128: one line per step
    losses = [float(loss) for loss, _, _ in printed]
    assert all(exact == "True" for _, exact, _ in printed)
    assert all(float(residual) < 1e-6 for _, _, residual in printed)
    assert all(loss == loss and loss > 0 for loss in losses)
