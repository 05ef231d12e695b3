// generic_path.h: the CUDA path's generic path: every problem the fast path (fast_path.h) does not take (fp32 and
// fp64, degrees other than 2 in the chunked form, head sizes outside the tensor-core kernels', positive gates in
// fp64). It lays the caller's tensors out in the compute layout (compute_layout.h) and runs cuBLAS products with
// the simple kernels of cuda/generic and cuda/rows; phi of the chunked form in sympow.h's layout.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

namespace power_attention {
namespace cuda {
namespace generic {

/// path::forward / path::backward on the generic path.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final);
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final);

}  // namespace generic
}  // namespace cuda
}  // namespace power_attention
