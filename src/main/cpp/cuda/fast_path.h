// fast_path.h: the CUDA path's fast path: 16-bit inputs with d == e in {16, 32, 64, 128}, the quadratic form or
// the chunked form of degree 2. It reads and writes the caller's tensors in place through their row maps
// (cuda/common/operand.h): the tile kernels (cuda/attention) for the in-chunk and quadratic attention, the fused
// degree-2 state products (cuda/sympow2) for the states, the row stages (cuda/rows) between them. No layout copies;
// what stays in a compute layout (row terms, states) is the path's own.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

namespace power_attention {
namespace cuda {
namespace fast {

/// Whether the fast path takes the problem with inputs of dtype `input`.
bool takes(const Problem& pr, at::ScalarType input);

/// path::forward / path::backward on the fast path.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final);
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final);

}  // namespace fast
}  // namespace cuda
}  // namespace power_attention
