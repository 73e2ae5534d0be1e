"""The package's layout: one op, one name in every layer; a library import path free of the
command line; kernels that never import the ops they implement; no import cycles."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from revgn.ops import FAKES, REFERENCES

ROOT = Path(__file__).resolve().parents[1]


def _module_file(op):
    return REFERENCES[op].__module__.rpartition(".")[2]  # revgn.ops.gram -> gram


def test_one_op_one_name_in_every_layer():
    """``revgn/ops/<file>.py`` holds the op's reference and its fake; the op's Triton kernel is
    in ``kernels/<file>.py`` and its compiled kernels, where it has any, in
    ``csrc/cpu/<file>.cpp`` and ``csrc/cuda/<file>_glue.cpp`` (launching ``<file>.cu``)."""
    compiled = {}
    for path in sorted((ROOT / "csrc").rglob("*.cpp")):
        for op in re.findall(r'm\.impl\("(\w+)"', path.read_text()):
            compiled.setdefault(op, []).append(path.relative_to(ROOT / "csrc").as_posix())
    schemas = re.findall(r'm\.def\("(\w+)\(', (ROOT / "csrc" / "revgn_ops.cpp").read_text())
    assert set(compiled) == set(schemas) <= set(REFERENCES)
    for op in REFERENCES:
        name = _module_file(op)
        assert FAKES[op].__module__ == REFERENCES[op].__module__, op
        assert f'"revgn_triton::{op}"' in (ROOT / "kernels" / f"{name}.py").read_text(), op
        for where in compiled.get(op, []):
            assert where in (f"cpu/{name}.cpp", f"cuda/{name}_glue.cpp"), (op, where)
            if where.startswith("cuda/"):
                assert (ROOT / "csrc" / "cuda" / f"{name}.cu").exists(), op


def _imports(path: Path, top_level_only: bool):
    """Absolute names ``path`` imports (``from a import b``: ``a.b``, a module or a name in
    one)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        inner = ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]
        for n in inner:
            if isinstance(n, ast.Import):
                names |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                names |= {f"{n.module}.{a.name}" for a in n.names}
    return names


def test_kernels_import_revgn_activations_at_most():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        ours = {n for n in _imports(path, top_level_only=False) if n.split(".")[0] == "revgn"}
        assert all(n.startswith("revgn.activations.") for n in ours), (path.name, ours)


def test_import_revgn_leaves_the_command_line_and_the_kernels_alone():
    code = "import sys, revgn; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    modules = loaded.stdout.split()
    assert "revgn.ops" in modules  # the probe sees revgn's modules
    unwanted = [m for m in modules if m.startswith(("revgn.cli", "revgn.experiments",
                                                    "revgn.kernels", "revgn._C", "triton"))]
    assert unwanted == []


def test_no_import_cycles():
    """Module-level imports between revgn's modules form no cycle (imports inside functions
    are deferred on purpose and do not count)."""
    files = {}
    for path in (ROOT / "revgn").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path

    def module_of(name):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {m: {module_of(n) for n in _imports(p, top_level_only=True)
                 if n.split(".")[0] == "revgn"} - {m, ""} for m, p in files.items()}
    state, path, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []
