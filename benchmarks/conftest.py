import os

os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ.get("REVGN_BENCH_GPU") else "1")
