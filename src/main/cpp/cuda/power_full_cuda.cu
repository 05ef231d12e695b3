// power_full_cuda.cu: the CUDA path's entry (power_full_cuda.h): its precision rules and memory figures, and the
// choice between the fast path (fast_path.h) and the generic path (generic_path.h).
#include "cuda/power_full_cuda.h"

#include "cuda/common/traits.h"
#include "cuda/decode/decode.h"
#include "cuda/fast_path.h"
#include "cuda/generic_path.h"
#include "cuda/sympow2/sympow2.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstddef>

namespace power_attention {
namespace cuda {

Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying) {
  // amplifying (a log gate > 0): the weight then sits on a few distant keys, whose phi products do not average their
  // rounding out (H200 harness, log gates +5 a token: bf16 states gave y errors of order 1; fp32 compute still left
  // the gate gradients of 16-bit inputs at 0.1-0.27): fp64, both forms
  const bool fp64 = input == at::kDouble || p % 2 == 1 || amplifying;
  const bool small_chunk = chunk > 0 && chunk < 16;
  const bool wide = p >= 3 || small_chunk || input == at::kFloat;
  const at::ScalarType compute = fp64 ? at::kDouble : (wide ? at::kFloat : input);
  return {compute, fp64 ? at::kDouble : at::kFloat, fp64 ? at::kDouble : at::kFloat};
}

double state_bytes(const Problem& pr, bool grad) {
  const at::ScalarType compute = pr.precision.compute;
  const double X = static_cast<double>(pr.BH) * (pr.T / pr.chunk), E = static_cast<double>(pr.e + 8);
  if (pr.p == 2 && sympow2_supported(compute, pr.d, pr.e)) {
    // the fused degree-2 path: bf16 states entering each chunk in the internal layout, in backward their gradients;
    // no fp32 per-chunk states, no phi in memory
    return X * static_cast<double>(sympow2_dim(pr.d)) * E * 2 * (grad ? 2 : 1);
  }
  // all chunks at once: the states entering each chunk (compute dtype) and their fp32 sums, phi of every key and
  // query row, twice over in backward
  const double D = static_cast<double>(sympow_dim(pr.d, pr.p));
  const double elem = compute == at::kDouble ? 8 : 2, acc = compute == at::kDouble ? 8 : 4;
  return X * D * E * (elem + 2 * acc) + X * D * pr.chunk * (2.0 * pr.g + 1) * elem * (grad ? 2 : 1);
}

MemoryLimit memory_limit(const at::Tensor& q) {
  const c10::cuda::CUDAGuard guard(q.device());
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(q.device().index());
  const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const double cached = static_cast<double>(stats.reserved_bytes[agg].current - stats.allocated_bytes[agg].current);
  return {static_cast<double>(free_bytes) + std::max(0.0, cached), "the free memory of " + q.device().str()};
}

bool decode_supported(int64_t g, int64_t e, int64_t p) { return decode::supported(g, e, p); }

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final) {
  TORCH_CHECK(pr.chunk > 0 || (!initial.S.defined() && !want_final), "power_full: internal: states need the chunked path");
  TORCH_CHECK(pr.p <= kMaxDegree, "power_full: the CUDA path supports deg <= ", kMaxDegree, ", got ", pr.p);
  const c10::cuda::CUDAGuard guard(q.device());
  if (fast::takes(pr, q.scalar_type())) return fast::forward(pr, q, k, v, log_g, save, initial, want_final);
  return generic::forward(pr, q, k, v, log_g, save, initial, want_final);
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  const c10::cuda::CUDAGuard guard(q.device());
  if (fast::takes(pr, q.scalar_type())) return fast::backward(pr, q, k, v, log_g, saved, dy, needs, d_final);
  return generic::backward(pr, q, k, v, log_g, saved, dy, needs, d_final);
}

std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p) {
  return decode::step(q, k, v, lg, S, s, p);
}

}  // namespace cuda
}  // namespace power_attention
