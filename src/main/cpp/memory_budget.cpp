// memory_budget.cpp: the affordability check (memory_budget.h).
#include "memory_budget.h"
#include "errors.h"
#include "path.h"
#include "sympow.h"

#include <sstream>
#include <string>

namespace power_attention {
namespace {

std::string gib(double bytes) {
  std::ostringstream o;
  o.precision(3);
  o << bytes / static_cast<double>(1ull << 30) << " GiB";
  return o.str();
}

}  // namespace

void check_affordable(const Plan& plan, const at::Tensor& q) {
  const Problem& pr = plan.problem;
  if (pr.chunk <= 0) return;
  const int64_t d = pr.d, p = pr.p;
  const int64_t D = sympow_dim(d, p);
  const bool grad = plan.grad;
  const double need = path::state_bytes(q.device(), pr, grad);
  const MemoryLimit limit = path::memory_limit(q);
  POWER_ATTENTION_CHECK_ARG(need <= limit.bytes, "power_full: the chunked form with d = ", d, ", deg = ", p,
                    " has state dimension D = C(d + deg - 1, deg) = ", D, " and needs about ", gib(need),
                    " for its states (b*h = ", pr.BH, ", ", pr.T / pr.chunk,
                    " chunks, D x (e + 1) numbers each", grad ? ", all kept for backward" : "",
                    "), over the limit of ", gib(limit.bytes), " (", limit.where, "). Options: the "
                    "quadratic form (no chunk_size), a larger chunk_size, a smaller head dimension d or a "
                    "lower degree");
}

}  // namespace power_attention
