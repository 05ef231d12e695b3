// path.cpp: the device-path interface of path.h, answered by the CPU path or the CUDA path (when built with it). The
// only file outside cpu/ and cuda/ that includes their entry headers.
#include "path.h"

#include "cpu/power_full_cpu.h"
#include "magnitudes.h"
#ifdef POWER_ATTENTION_WITH_CUDA
#include "cuda/power_full_cuda.h"
#endif

#include <c10/core/GradMode.h>

#include <limits>

namespace power_attention {
namespace path {
namespace {

bool on_cuda(const at::Device& device) {
#ifdef POWER_ATTENTION_WITH_CUDA
  return device.is_cuda();
#else
  (void)device;
  return false;
#endif
}

}  // namespace

bool supports(const at::Device& device) { return on_cuda(device) || device.is_cpu(); }

Precision precision(const at::Device& device, at::ScalarType input, int64_t p, int64_t chunk, bool amplifying) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(device)) return cuda::precision(input, p, chunk, amplifying);
#endif
  return cpu::precision(input, p, chunk, amplifying);
}

double state_bytes(const at::Device& device, const Problem& pr, bool grad) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(device)) return cuda::state_bytes(pr, grad);
#endif
  return cpu::state_bytes(pr, grad);
}

MemoryLimit memory_limit(const at::Tensor& q) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(q.device())) return cuda::memory_limit(q);
#endif
  return cpu::memory_limit();
}

bool decode_supported(const at::Device& device, int64_t g, int64_t e, int64_t p) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(device)) return cuda::decode_supported(g, e, p);
#endif
  return device.is_cpu();
}

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(q.device())) return cuda::forward(pr, q, k, v, log_g, save, initial, want_final);
#endif
  return cpu::forward(pr, q, k, v, log_g, save, initial, want_final);
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(q.device())) return cuda::backward(pr, q, k, v, log_g, saved, dy, needs, d_final);
#endif
  return cpu::backward(pr, q, k, v, log_g, saved, dy, needs, d_final);
}

at::Tensor row_max_abs(const at::Tensor& x) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(x.device()) && cuda::max_abs_supported(x)) return cuda::row_max_abs(x);
#endif
  const auto wide = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::linalg_vector_norm(x, std::numeric_limits<double>::infinity(), {-1}, true, wide);
}

at::Tensor head_max_abs(const at::Tensor& x) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(x.device()) && cuda::max_abs_supported(x)) return cuda::head_max_abs(x);
#endif
  const auto wide = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::linalg_vector_norm(x, std::numeric_limits<double>::infinity(), {1, 3}, true, wide);
}

Extremes extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(q.device()) && cuda::extremes_supported(q, k, log_g)) {
    const std::vector<at::Tensor> x = cuda::extremes(q, k, log_g);
    return {x[0], x[1], x[2]};
  }
#endif
  if (q.is_cpu() && k.is_cpu()) {
    const std::vector<at::Tensor> x = cpu::extremes(q, k, log_g);
    if (!x.empty()) return {x[0], x[1], x[2]};
  }
  return {row_max_abs(q), head_max_abs(k), at::Tensor()};
}

std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (on_cuda(q.device())) return cuda::decode_step(q, k, v, lg, S, s, p);
#endif
  at::Tensor qn;
  {
    at::NoGradGuard no_grad;
    qn = q * pow2_factor(at::linalg_vector_norm(q, std::numeric_limits<double>::infinity(), {-1}, true,
                                                q.scalar_type()));
  }
  std::vector<at::Tensor> out = cpu::decode_step(qn, k, v, lg, S, s, p);
  out.push_back(at::stack({all_finite(out[0]), all_finite(out[1]), all_finite(out[2])}).all());
  return out;
}

}  // namespace path
}  // namespace power_attention
