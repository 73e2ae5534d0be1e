// Elementwise activations s and their derivatives s', shared by the CPU and CUDA kernels.
// Plain C++ (no torch): the CUDA kernels include it too.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define REVGN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define REVGN_HOST_DEVICE inline
#endif

namespace revgn {

enum class Activation : int { Identity = 0, Relu = 1, LeakyRelu = 2, Tanh = 3, Gelu = 4, Silu = 5 };

constexpr double kLeakySlope = 0.01;  // must match revgn/activations.py

// value = s(p), slope = s'(p), computed together because they share transcendental work.
template <typename T>
REVGN_HOST_DEVICE void activation_and_slope(Activation act, T p, T& value, T& slope) {
  value = p;  // identity unless a case below says otherwise
  slope = T(1);
  switch (act) {
    case Activation::Identity:
      return;
    case Activation::Relu:
      value = p > T(0) ? p : T(0);
      slope = p > T(0) ? T(1) : T(0);
      return;
    case Activation::LeakyRelu:
      value = p > T(0) ? p : T(kLeakySlope) * p;
      slope = p > T(0) ? T(1) : T(kLeakySlope);
      return;
    case Activation::Tanh: {
      T t = tanh(p);
      value = t;
      slope = T(1) - t * t;
      return;
    }
    case Activation::Gelu: {
      // s(p) = p Phi(p), s'(p) = Phi(p) + p phi(p)
      const T inv_sqrt2 = T(0.70710678118654752440);
      const T inv_sqrt2pi = T(0.39894228040143267794);
      T cdf = T(0.5) * (T(1) + erf(p * inv_sqrt2));
      value = p * cdf;
      slope = cdf + p * inv_sqrt2pi * exp(T(-0.5) * p * p);
      return;
    }
    case Activation::Silu: {
      T sig = T(1) / (T(1) + exp(-p));
      value = p * sig;
      slope = sig * (T(1) + p * (T(1) - sig));
      return;
    }
  }
}

}  // namespace revgn
