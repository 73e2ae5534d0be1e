"""Triton kernels of revgn (installed as ``revgn.kernels``).

Each public function here has the name and signature of the op it implements in ``revgn.ops``.
"""
