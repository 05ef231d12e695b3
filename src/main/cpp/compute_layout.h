// compute_layout.h: the compute layout that the CPU path and the CUDA generic path lay the caller's tensors out in,
// each privately (path.h: tensors cross the path interface in the caller's layout). One batch index per (batch,
// key/value head) pair, BH = b h:
//   q   [BH, T, g, d]   the g = hq / h query heads that share a key/value head, token-major
//   k   [BH, T, d]      v [BH, T, e]
//   lg  [BH, T]         log gates in Problem::precision.gates, or undefined
// contiguous, in Problem::precision.compute. For the chunked form T is padded to a multiple of the chunk size with
// zeros (zero keys add nothing; padded query rows are cropped on the way back).
#pragma once

#include "path.h"

#include <ATen/ATen.h>

namespace power_attention {
namespace layout {

at::Tensor query_layout(const at::Tensor& x, const Problem& pr);  // [b, t, hq, w] -> [BH, T, g, w]
at::Tensor kv_layout(const at::Tensor& x, const Problem& pr);     // [b, t, h, w]  -> [BH, T, w]
at::Tensor gate_layout(const at::Tensor& x, const Problem& pr);   // [b, t, h]     -> [BH, T], gate dtype
// The way back, to the caller's layout in `dtype`: one copy that permutes and converts at once.
at::Tensor query_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype);
at::Tensor kv_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype);
at::Tensor gate_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype);

/// q, k, v and the log gates in the compute layout.
struct Inputs {
  at::Tensor q, k, v, g;
};
Inputs lay_out(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g);

/// dy [b, t, hq, e] in the compute layout, or zeros there where autograd gave none.
at::Tensor dy_layout(const at::Tensor& dy, const Problem& pr, const at::TensorOptions& like);

/// The gradients of the compute layout (Grads, fp32 or the compute dtype) in the caller's layout and the dtypes of
/// q, k, v and log_g; the initial state's gradient passes unchanged.
Grads grads_unlayout(const Grads& gr, const Problem& pr, const Needs& needs, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& log_g);

}  // namespace layout
}  // namespace power_attention
