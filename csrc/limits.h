// Sizes shared by the CPU and CUDA implementations (torch-free: the .cu files include it too).
#pragma once

namespace revgn {

// Systems of order up to this are factored by revgn's own small-Cholesky kernels (one system
// per thread team on the CPU, per block on the GPU, the factor in shared memory there); larger
// ones go to LAPACK / cuSOLVER through ATen.
constexpr int kSmallCholeskyMax = 64;

}  // namespace revgn
