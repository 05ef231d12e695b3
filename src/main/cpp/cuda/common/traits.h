// traits.h: the sizes and types the CUDA path's stages agree on.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {
namespace cuda {

/// The largest degree of the generic path's phi kernels (and of the CUDA path).
constexpr int kMaxDegree = 8;

/// The sizes of the 16-bit tensor-core kernels (tile attention, degree-2 state products): bf16 / fp16, d == e in
/// {16, 32, 64, 128}.
inline bool fast_sizes(at::ScalarType dtype, int64_t d, int64_t e) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && d == e && (d == 16 || d == 32 || d == 64 || d == 128);
}

/// The dtype of phi and of the state-side matrix operands: the input dtype, but bf16 for fp16 inputs (whose range
/// the states can exceed).
template <typename T>
struct PhiType {
  using type = T;
};
template <>
struct PhiType<at::Half> {
  using type = at::BFloat16;
};

/// X(T, A) for every compute dtype T of the CUDA path and its accumulation type A = opmath(T) (explicit
/// instantiations of the stages' templates).
#define POWER_ATTENTION_FOR_EACH_COMPUTE_TYPE(X) X(double, double) X(float, float) X(at::Half, float) X(at::BFloat16, float)

/// Columns of the extended state layout [D, E]: S in [0, e), the normaliser s in column e, zeros to a multiple of 8.
inline int64_t ext_cols(int64_t e) { return (e + 1 + 7) / 8 * 8; }

}  // namespace cuda
}  // namespace power_attention
