// memory_budget.cpp: the affordability check (memory_budget.h).
#include "memory_budget.h"
#include "checks.h"
#include "errors.h"
#include "cpu/platform_util.h"
#include "cpu/power_full_cpu.h"
#include "sympow.h"
#ifdef POWER_ATTENTION_WITH_CUDA
#include "cuda/power_full_cuda.h"
#endif

#include <cstdlib>
#include <sstream>
#include <string>

namespace power_attention {
namespace {

double memory_limit_bytes() {
  if (const char* env = std::getenv("POWER_ATTENTION_MEMORY_LIMIT")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v > 0) return v;
  }
  if (const double physical = platform::physical_memory_bytes(); physical > 0) return 0.5 * physical;
  return 8.0 * (1ull << 30);
}

std::string gib(double bytes) {
  std::ostringstream o;
  o.precision(3);
  o << bytes / static_cast<double>(1ull << 30) << " GiB";
  return o.str();
}

}  // namespace

void check_affordable(const Resolved& r, bool grad, const at::Tensor& q) {
  if (r.problem.chunk <= 0) return;
  const Problem& pr = r.problem;
  const int64_t d = pr.d, p = pr.p;
  const int64_t D = sympow_dim(d, p);
  double need = 0, limit = 0;
  std::string where;
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) {
    need = cuda::state_bytes(pr, r.layout.ct, grad);
    limit = cuda::device_memory_limit_bytes(q);
    where = "the free memory of " + q.device().str();
  }
#endif
  if (where.empty()) {
    need = cpu::state_bytes(pr, r.layout.ct, grad);
    limit = memory_limit_bytes();
    where = "half the physical memory, or POWER_ATTENTION_MEMORY_LIMIT in bytes";
  }
  POWER_ATTENTION_CHECK_ARG(need <= limit, "power_full: the chunked form with d = ", d, ", deg = ", p,
                    " has state dimension D = C(d + deg - 1, deg) = ", D, " and needs about ", gib(need),
                    " for its states (b*h = ", pr.BH, ", ", pr.T / pr.chunk,
                    " chunks, D x (e + 1) numbers each", grad ? ", all kept for backward" : "",
                    "), over the limit of ", gib(limit), " (", where, "). Options: the "
                    "quadratic form (no chunk_size), a larger chunk_size, a smaller head dimension d or a "
                    "lower degree");
}

}  // namespace power_attention
