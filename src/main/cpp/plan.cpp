// plan.cpp: the plan of one call (plan.h).
#include "plan.h"

namespace power_attention {

Plan make_plan(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t p, double scale, int64_t chunk,
               bool stateful, bool grad) {
  Plan plan;
  plan.stateful = stateful, plan.grad = grad;
  Problem& pr = plan.problem;
  pr.b = q.size(0), pr.t = q.size(1), pr.d = q.size(3), pr.h = k.size(2), pr.e = v.size(3);
  pr.g = q.size(2) / pr.h;
  pr.p = p, pr.scale = scale;
  // t <= chunk: the quadratic form is the chunked form with a single chunk, minus the padding; stateful calls always
  // run the chunked form
  pr.chunk = (chunk > 0 && chunk < pr.t) ? chunk : (stateful ? pr.t : 0);
  pr.BH = pr.b * pr.h;
  pr.T = pr.chunk > 0 ? (pr.t + pr.chunk - 1) / pr.chunk * pr.chunk : pr.t;
  pr.precision = path::precision(q.device(), q.scalar_type(), p, pr.chunk, false);
  return plan;
}

void amplify(Plan& plan, const at::Tensor& q) {
  Problem& pr = plan.problem;
  plan.amplifying = true;
  pr.precision = path::precision(q.device(), q.scalar_type(), pr.p, pr.chunk, true);
}

}  // namespace power_attention
