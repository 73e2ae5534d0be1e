// Schemas of the revgn ops. Always built; the CPU and CUDA implementations of op <op> register
// separately, in cpu/<file>.cpp and cuda/<file>_glue.cpp, named as revgn/ops/<file>.py where
// the equation is, beside the pure-PyTorch reference. An op the reference already does as one
// library call (jt_update_'s addmm, gram on a GPU: one cuBLAS GEMM) has no compiled kernel.
#include <torch/library.h>

TORCH_LIBRARY(revgn, m) {
  // x = y - s(u C) W^T - b,  k = (s'(u C) * (du C)) W^T,  dx = dy - k,  A = s(u C)
  m.def("coupling_inverse_with_tangent(Tensor u, Tensor du, Tensor y, Tensor dy, Tensor? C, "
        "Tensor W, Tensor? b, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  // k = (s'(P) * (du C)) W^T, given the pre-activation P = u C
  m.def("coupling_tangent(Tensor pre, Tensor du, Tensor? C, Tensor W, str activation) -> Tensor");
  // K = A A^T (+ 1 1^T)
  m.def("gram(Tensor A, bool bias) -> Tensor");
  // K + damping I = L L^T,  Z = (L L^T)^-1 R; info per system (LAPACK convention)
  m.def("cholesky_factor_solve(Tensor K, Tensor R, float damping) -> (Tensor, Tensor, Tensor)");
}

// Imported as revgn._C whether built ahead of time (setup.py) or just in time
// (revgn/_extension.py); the module itself is empty, the ops live in torch.ops.revgn.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
