"""A failed just-in-time build of the extension: one warning with the compiler's first error and
the log's path, the reference path in its place, and no new attempt until an input changes.

Each case runs in a fresh interpreter that cannot import the ahead-of-time ``revgn._C``, with
the compiler (``CXX``, which torch's cpp_extension reads) replaced by a script that fails the way
a compiler does, and the build cache in a temporary folder."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from revgn import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent("""
    import json, sys, warnings
    sys.modules["revgn._C"] = None  # as if no ahead-of-time build were installed
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch, revgn
        model = revgn.RevMLP(6, 3, depth=1, bottleneck=8).double()
        result = revgn.ExactGN(model).step(torch.randn(4, 6, dtype=torch.float64),
                                           torch.tensor([0, 1, 2, 0]))
        backend = revgn.backend.resolve("auto", torch.device("cpu"))
    ours = [str(w.message) for w in caught if "C++ extension" in str(w.message)]
    print(json.dumps(dict(warnings=ours, backend=backend, loss=result.loss,
                          info=revgn._extension.build_info())))
""")


def _fake_compiler(folder, name, error):
    """A compiler that fails every compile with ``error`` and counts the compiles."""
    path = folder / name
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        for arg in "$@"; do
            if [ "$arg" = "-c" ]; then
                echo compile >> "{folder}/{name}.count"
                echo "In file included from /somewhere/revgn_ops.cpp:1:" >&2
                echo "{error}" >&2
                echo "1 error generated." >&2
                exit 1
            fi
        done
        echo "fake compiler"
    """))
    path.chmod(0o755)
    return path


def _compiles(folder, name):
    count = folder / f"{name}.count"
    return len(count.read_text().splitlines()) if count.exists() else 0


def _run(cache, cxx, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("REVGN_SKIP_EXT", "REVGN_REBUILD")}
    env.update(CXX=str(cxx), REVGN_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
               **extra)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_a_failed_build_warns_once_and_is_not_retried(tmp_path):
    error = "/somewhere/revgn_ops.cpp:7:3: error: 'boom' was not declared in this scope"
    cxx = _fake_compiler(tmp_path, "cxx-a", error)
    cache = tmp_path / "cache"

    first, stderr = _run(cache, cxx)
    assert len(first["warnings"]) == 1, first["warnings"]
    message = first["warnings"][0]
    assert error in message and "could not be built" in message
    log = first["info"]["log"]
    assert log in message and os.path.isfile(log)
    assert "ninja: build stopped" in open(log).read()  # the whole log is kept
    assert first["backend"] == "reference" and first["loss"] > 0  # the step still ran
    assert "Traceback" not in stderr
    compiles = _compiles(tmp_path, "cxx-a")
    assert compiles >= 1

    second, _ = _run(cache, cxx)
    assert _compiles(tmp_path, "cxx-a") == compiles  # no new attempt
    assert len(second["warnings"]) == 1
    assert "earlier run" in second["warnings"][0] and error in second["warnings"][0]
    assert log in second["warnings"][0]

    # REVGN_REBUILD=1 tries again on request
    _run(cache, cxx, REVGN_REBUILD="1")
    assert _compiles(tmp_path, "cxx-a") > compiles

    # another compiler is another build
    other = _fake_compiler(tmp_path, "cxx-b", "fatal error: missing.h: No such file")
    third, _ = _run(cache, other)
    assert _compiles(tmp_path, "cxx-b") >= 1
    assert "missing.h" in third["warnings"][0] and "earlier" not in third["warnings"][0]
    record = json.loads((cache / os.listdir(cache)[0] / _extension.FAILURE_RECORD).read_text())
    assert "missing.h" in record["reason"]


def test_a_missing_compiler_names_itself(tmp_path):
    out, _ = _run(tmp_path / "cache", tmp_path / "no-such-c++")
    assert len(out["warnings"]) == 1
    assert "no-such-c++: not found" in out["warnings"][0]


def test_the_key_follows_sources_torch_and_compiler(tmp_path, monkeypatch):
    (tmp_path / "csrc").mkdir()
    source = tmp_path / "csrc" / "a.cpp"
    source.write_text("int a;")
    options = dict(name="x", extra_cflags=["-O3"])
    monkeypatch.setenv("CXX", "c++")
    key = _extension.build_key(str(tmp_path), "2.0", False, options)
    assert key == _extension.build_key(str(tmp_path), "2.0", False, dict(options))
    assert key != _extension.build_key(str(tmp_path), "2.1", False, options)
    assert key != _extension.build_key(str(tmp_path), "2.0", False,
                                       dict(options, extra_cflags=["-O2"]))
    monkeypatch.setenv("CXX", str(tmp_path / "other-c++"))
    assert key != _extension.build_key(str(tmp_path), "2.0", False, options)
    monkeypatch.setenv("CXX", "c++")
    source.write_text("int b;")
    assert key != _extension.build_key(str(tmp_path), "2.0", False, options)


@pytest.mark.parametrize("log,want", [
    ("Error building extension 'x': [1/2] c++ -Werror -c a.cpp -o a.o\nFAILED: a.o\n"
     "c++ -Werror -c a.cpp -o a.o\nIn file included from a.cpp:1:\n"
     "b.h:3:9: error: expected ';'\n    3 | int a\n      |      ^\n"
     "a.cpp:9:1: error: second\nninja: build stopped: subcommand failed.",
     "b.h:3:9: error: expected ';'"),
    ("Error building extension 'x': [2/2] c++ a.o -o x.so\nFAILED: x.so\n"
     "/usr/bin/ld: cannot find -lgomp\ncollect2: error: ld returned 1 exit status\n"
     "ninja: build stopped: subcommand failed.", "/usr/bin/ld: cannot find -lgomp"),
    ("Ninja is required to load C++ extensions", "Ninja is required to load C++ extensions"),
])
def test_first_error_line(log, want):
    assert _extension.first_error_line(log) == want
