// oracle.cpp: the harness's oracle (SPEC §2 in fp64 on the CPU), its error measure and the NaN poisoning of the
// device's free memory.
#include "harness.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <cmath>

namespace harness {

// ---------------------------------------------------------------------------------------------------------------
// The oracle: SPEC §2 directly, fp64 on the CPU, differentiable by autograd.
// ---------------------------------------------------------------------------------------------------------------

// q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e], lg [b, t, h] or undefined -> y [b, t, hq, e] for the query rows
// `rows` (all when empty).
at::Tensor oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lg, int64_t p,
                  double scale, const at::Tensor& rows) {
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), h = k.size(2), g = hq / h;
  at::Tensor qh = q.permute({0, 2, 1, 3});                                    // [b, hq, t, d]
  at::Tensor kh = k.permute({0, 2, 1, 3}).repeat_interleave(g, 1);            // [b, hq, t, d]
  at::Tensor vh = v.permute({0, 2, 1, 3}).repeat_interleave(g, 1);            // [b, hq, t, e]
  at::Tensor qi = rows.defined() ? qh.index_select(2, rows) : qh;
  at::Tensor idx_i = rows.defined() ? rows : at::arange(t, at::kLong);
  at::Tensor s = at::matmul(qi, kh.transpose(2, 3)) * scale;                  // [b, hq, r, t]
  at::Tensor w = s.pow(static_cast<double>(p));
  at::Tensor mask = idx_i.unsqueeze(1) >= at::arange(t, at::kLong).unsqueeze(0);  // [r, t]
  if (lg.defined()) {
    at::Tensor G = lg.cumsum(1).permute({0, 2, 1}).repeat_interleave(g, 1);  // [b, hq, t]
    at::Tensor Gi = G.index_select(2, idx_i);
    // mask the exponent, not the product: exp(G_i - G_j) overflows for masked j > i at long t; and take out each
    // row's largest exponent (a constant: the ratio does not depend on it), for positive gates overflow fp64 too
    at::Tensor expo = at::where(mask, Gi.unsqueeze(3) - G.unsqueeze(2), at::full({}, -INFINITY, G.options()));
    expo = expo - std::get<0>(expo.max(3, true)).detach();
    w = w * at::exp(expo);
  }
  w = w * mask.to(at::kDouble);
  at::Tensor y = at::matmul(w, vh) / w.sum(3, true);
  (void)b;
  return y.permute({0, 2, 1, 3});
}

// Relative L2 error. floor: the denominator's floor, for references that are zero by symmetry (at t = 1 the
// gradients of q and k vanish exactly; rounding leaves ~1e-8 |dy|).
double rel(const at::Tensor& x, const at::Tensor& ref, double floor) {
  const at::Tensor a = x.to(at::kCPU, at::kDouble), r = ref.to(at::kCPU, at::kDouble);
  if (!at::isfinite(a).all().item<bool>()) return INFINITY;
  return (a - r).norm().item<double>() / std::max(r.norm().item<double>(), floor);
}

// Fills the caching allocator's free blocks with NaN, so that an output the op forgets to write shows up.
void poison() {
  c10::cuda::CUDACachingAllocator::emptyCache();
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  const int64_t n = static_cast<int64_t>(std::min<size_t>(free_b / 4, size_t(4) << 30) / 4);
  {
    at::Tensor t = at::empty({n}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
    t.fill_(NAN);
  }
  cudaDeviceSynchronize();
}

}  // namespace harness
