// decode.h: the CUDA path's fused decode step (SPEC §6) without autograd.
#pragma once

#include "cuda/common/traits.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace power_attention {
namespace cuda {
namespace decode {

/// The largest g (query heads per key/value head) and value width e of the fused step.
constexpr int kDecodeMaxGroup = 8;
constexpr int64_t kDecodeMaxWidth = 1024;

/// Whether step takes the problem (g query heads per key/value head, value width e, degree p).
inline bool supported(int64_t g, int64_t e, int64_t p) {
  return g <= kDecodeMaxGroup && e <= kDecodeMaxWidth && p <= kMaxDegree;
}

/// One recurrent step: q [BH, g, d] (any magnitude: each row is brought to max-abs [1, 2) by a power of two), k
/// [BH, d], v [BH, e], lg [BH] or undefined, S [BH, D, e], s [BH, D], contiguous, one dtype (fp32 or fp64),
/// supported -> {y [BH, g, e], S', s', finite} (finite: a bool scalar, whether y, S' and s' are all finite).
std::vector<at::Tensor> step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lg,
                             const at::Tensor& S, const at::Tensor& s, int64_t p);

}  // namespace decode
}  // namespace cuda
}  // namespace power_attention
