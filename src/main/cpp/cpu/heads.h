// heads.h: the CPU path's work on one key/value head, shared by its files: the quadratic form (quadratic_cpu.cpp),
// the chunked form (chunked_cpu.cpp), and the helpers both use. Tensors in the compute layout (compute_layout.h),
// T in {float, double}.
#pragma once

#include "cpu/attention_tile_cpu.h"
#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {
namespace cpu {

/// The gradients as this path writes them: q, k, v in the caller's layout directly when `direct` (the compute
/// dtype is the inputs'), else in the compute layout like the log gates.
struct HeadGrads : Grads {
  bool direct = false;
};

// 1 / x where x != 0, else 0 (a row with no weight at all gives y = 0 and no gradient).
inline at::Tensor safe_reciprocal(const at::Tensor& x) {
  return at::where(x == 0, at::zeros_like(x), x.reciprocal());
}

template <typename T>
TileShape<T> tile_shape(const Problem& pr, int64_t R, int64_t C, int64_t tq0, int64_t tk0, const double* gq,
                        const double* gk) {
  TileShape<T> sh;
  sh.R = R, sh.C = C, sh.g = pr.g, sh.tq0 = tq0, sh.tk0 = tk0, sh.p = pr.p;
  sh.scale = static_cast<T>(pr.scale), sh.gq = gq, sh.gk = gk;
  return sh;
}

// A head's gradients: with HeadGrads::direct they go straight into the caller's layout [b, t, heads, w] (no
// unlayout copy of the whole gradient afterwards, and no compute-layout gradient in memory), else into the compute
// layout. Query gradient of head bh as [tokens, g, d]; key or value gradient as [tokens, w]; tokens = t (direct)
// or T.
inline at::Tensor query_grad_rows(const Problem& pr, const HeadGrads& gr, int64_t bh) {
  if (!gr.direct) return gr.q[bh];
  const int64_t H = pr.BH / pr.b;
  return gr.q[bh / H].narrow(1, (bh % H) * pr.g, pr.g);
}
inline at::Tensor kv_grad_rows(const Problem& pr, const HeadGrads& gr, const at::Tensor& x, int64_t bh) {
  if (!gr.direct) return x[bh];
  const int64_t H = pr.BH / pr.b;
  return x[bh / H].select(1, bh % H);
}

/// Head bh of an input in the compute layout ([BH, T, ...], `dims` dimensions) or of the caller's tensor seen as
/// [b, h, t, ...] (dims + 1 dimensions: chunked_from_caller_layout).
inline at::Tensor head_of(const at::Tensor& x, int64_t bh, int64_t dims) {
  if (x.dim() == dims) return x[bh];
  return x[bh / x.size(1)][bh % x.size(1)];
}

/// Whether the chunked form reads q, k, v (and a contiguous dy) in the caller's layout, as strided views (no copies
/// into the compute layout on the way into the forward and again into the backward): fp32 inputs and compute, t a
/// multiple of the chunk (no padding), a head's query rows evenly spaced (g = 1 or h = 1), the fused state products
/// (phi_products_cpu.h: rows of any stride), contiguous inputs.
bool chunked_from_caller_layout(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
/// q [b, t, h g, d] as [b, h, t, g, d]; k or v [b, t, h, w] as [b, h, t, w] (views).
at::Tensor caller_query_heads(const at::Tensor& x, const Problem& pr);
at::Tensor caller_kv_heads(const at::Tensor& x);

/// The quadratic form of head bh: y, den (the row sums l), rowmax.
template <typename T>
void quadratic_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lg, Forward& f, int64_t bh);
template <typename T>
void quadratic_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                             HeadGrads& gr, int64_t bh);

/// Whether the quadratic form runs from the caller's layout (no compute-layout copies of q, k, v, dy): fp32 inputs
/// and compute, one query head per key/value head, quadratic_kernels_available. y, den and rowmax stay in the
/// compute layout for the backward.
bool quadratic_from_caller_layout(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
/// The op's forward and backward that way: q, k, v [b, t, h, w], log gates [b, t, h] (or undefined), dy [b, t, h, e]
/// (or undefined: zeros), all in the caller's layout.
Forward quadratic_forward_caller(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& log_g);
Grads quadratic_backward_caller(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_g, const Forward& f, const at::Tensor& dy, const Needs& needs);

/// The chunked form of head bh, chunks in order (forward) and in reverse (backward); states checkpointed by
/// state_interval (power_full_cpu.h).
template <typename T>
void chunked_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final,
                          int64_t bh);
template <typename T>
void chunked_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                           const State& d_final, HeadGrads& gr, int64_t bh);

}  // namespace cpu
}  // namespace power_attention
