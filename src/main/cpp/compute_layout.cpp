// compute_layout.cpp: the compute layout of the CPU and the CUDA generic paths (compute_layout.h).
#include "compute_layout.h"

#include <vector>

namespace power_attention {
namespace layout {
namespace {

at::Tensor pad_tokens(const at::Tensor& x, int64_t dim, int64_t T) {
  const int64_t pad = T - x.size(dim);
  if (pad == 0) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[dim] = pad;
  return at::cat({x, at::zeros(shape, x.options())}, dim);
}

}  // namespace

// [b, t, hq, w] -> [b*h, T, g, w]
at::Tensor query_layout(const at::Tensor& x, const Problem& pr) {
  at::Tensor y = x.to(pr.precision.compute).view({pr.b, pr.t, pr.h, pr.g, x.size(3)}).permute({0, 2, 1, 3, 4});
  return pad_tokens(y, 2, pr.T).reshape({pr.BH, pr.T, pr.g, x.size(3)}).contiguous();
}
// [b, t, h, w] -> [b*h, T, w]
at::Tensor kv_layout(const at::Tensor& x, const Problem& pr) {
  at::Tensor y = x.to(pr.precision.compute).permute({0, 2, 1, 3});
  return pad_tokens(y, 2, pr.T).reshape({pr.BH, pr.T, x.size(3)}).contiguous();
}
// [b, t, h] -> [b*h, T] in the gate dtype
at::Tensor gate_layout(const at::Tensor& x, const Problem& pr) {
  if (!x.defined()) return at::Tensor();
  at::Tensor y = x.to(pr.precision.gates).permute({0, 2, 1});
  return pad_tokens(y, 2, pr.T).reshape({pr.BH, pr.T}).contiguous();
}
// The way back: one copy that permutes and converts at once (no intermediate in the compute dtype).
at::Tensor query_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype) {
  const int64_t w = y.size(3);
  at::Tensor out = at::empty({pr.b, pr.t, pr.h * pr.g, w}, y.options().dtype(dtype));
  out.view({pr.b, pr.t, pr.h, pr.g, w})
      .copy_(y.view({pr.b, pr.h, pr.T, pr.g, w}).narrow(2, 0, pr.t).permute({0, 2, 1, 3, 4}));
  return out;
}
at::Tensor kv_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype) {
  const int64_t w = y.size(2);
  at::Tensor out = at::empty({pr.b, pr.t, pr.h, w}, y.options().dtype(dtype));
  out.copy_(y.view({pr.b, pr.h, pr.T, w}).narrow(2, 0, pr.t).permute({0, 2, 1, 3}));
  return out;
}
at::Tensor gate_unlayout(const at::Tensor& y, const Problem& pr, at::ScalarType dtype) {
  at::Tensor out = at::empty({pr.b, pr.t, pr.h}, y.options().dtype(dtype));
  out.copy_(y.view({pr.b, pr.h, pr.T}).narrow(2, 0, pr.t).permute({0, 2, 1}));
  return out;
}

Inputs lay_out(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g) {
  return {query_layout(q, pr), kv_layout(k, pr), kv_layout(v, pr), gate_layout(log_g, pr)};
}

at::Tensor dy_layout(const at::Tensor& dy, const Problem& pr, const at::TensorOptions& like) {
  return dy.defined() ? query_layout(dy, pr)
                      : at::zeros({pr.BH, pr.T, pr.g, pr.e}, like.dtype(pr.precision.compute));
}

Grads grads_unlayout(const Grads& gr, const Problem& pr, const Needs& needs, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& log_g) {
  Grads out;
  if (needs.q) out.q = query_unlayout(gr.q, pr, q.scalar_type());
  if (needs.k) out.k = kv_unlayout(gr.k, pr, k.scalar_type());
  if (needs.v) out.v = kv_unlayout(gr.v, pr, v.scalar_type());
  if (needs.g && log_g.defined()) out.lg = gate_unlayout(gr.lg, pr, log_g.scalar_type());
  out.initial = gr.initial;
  return out;
}

}  // namespace layout
}  // namespace power_attention
