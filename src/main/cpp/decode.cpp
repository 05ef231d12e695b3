// decode.cpp: the decode step (SPEC §6): checks, the fused path of the device when it takes the step, else ATen ops.
#include "checks.h"
#include "errors.h"
#include "magnitudes.h"
#include "path.h"
#include "power_attention.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <limits>
#include <vector>

namespace power_attention {

namespace {

// A decode step's new state and output must be finite: a state that overflows its dtype (positive log gates that
// have added up, or values near the dtype's limit) is reported, naming log_G, instead of turning y into NaN.
constexpr const char* kStepOverflows =
    ": exp(log_G) times the state (positive log gates add up step after step) or phi(K) V leaves the dtype's range; "
    "float64 states carry up to 1e308";

void check_step_finite(const at::Tensor& y, const at::Tensor& S1, const at::Tensor& s1) {
  at::NoGradGuard no_grad;
  const bool finite = at::stack({all_finite(S1), all_finite(s1), all_finite(y)}).all().item<bool>();  // one read
  POWER_ATTENTION_CHECK_ARG(finite, "power_full: the state after this decode step overflows ", S1.scalar_type(),
                            kStepOverflows);
}

}  // namespace

std::vector<at::Tensor> power_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                          int64_t degree) {
  check_decode_inputs(q, k, v, log_g, degree);
  const int64_t b = q.size(0), hq = q.size(1), d = q.size(2), h = k.size(1), e = v.size(2);
  const int64_t D = sympow_dim(d, degree);
  POWER_ATTENTION_CHECK_ARG(S.defined() && s.defined(), "power_full: a decode step needs a state (S, s)");
  check_state(S, s, q, b, h, D, e);
  const auto ct = (q.scalar_type() == at::kDouble || degree % 2 == 1) ? at::kDouble : at::kFloat;
  const int64_t g = hq / h;
  const auto st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() || S.requires_grad() ||
                     s.requires_grad() || (log_g.defined() && log_g.requires_grad()));
  if (!grad && path::decode_supported(q.device(), g, e, degree)) {
    // Generation: one fused pass over the state per head (the ATen composition below made ~10 passes); the path
    // brings the query rows into range and says whether the step is finite.
    const auto flat = [&](const at::Tensor& x, std::vector<int64_t> shape) {
      return x.to(ct).reshape(shape).contiguous();
    };
    const at::Tensor q3 = flat(q, {b * h, g, d}), k2 = flat(k, {b * h, d}), v2 = flat(v, {b * h, e});
    const at::Tensor lg1 = log_g.defined() ? flat(log_g, {b * h}) : at::Tensor();
    const at::Tensor S3 = flat(S, {b * h, D, e}), s2 = flat(s, {b * h, D});
    const auto out = path::decode_step(q3, k2, v2, lg1, S3, s2, degree);
    std::vector<at::Tensor> res = {out[0].view({b, hq, e}).to(q.scalar_type()), out[1].view({b, h, D, e}).to(st),
                                   out[2].view({b, h, D}).to(st)};
    // what the returned dtypes may have lost on the way (a narrower dtype's range), read with the path's flag
    at::Tensor finite = out[3];
    {
      at::NoGradGuard no_grad;
      if (q.scalar_type() != ct) finite = finite.logical_and(all_finite(res[0]));
      if (st != ct) finite = finite.logical_and(all_finite(res[1])).logical_and(all_finite(res[2]));
    }
    POWER_ATTENTION_CHECK_ARG(finite.item<bool>(), "power_full: the state after this decode step overflows ", st,
                              kStepOverflows);
    return res;
  }
  // y is invariant to the scale of each query row: max-abs [1, 2) by a power of two (exact), so phi(q) . S stays
  // finite for any |q|.
  at::Tensor qn;
  {
    at::Tensor f;
    {
      at::NoGradGuard no_grad;
      f = pow2_factor(at::linalg_vector_norm(q, std::numeric_limits<double>::infinity(), {-1}, true, ct));
    }
    qn = q.to(ct) * f;
  }
  const at::Tensor phiK = reference::symmetric_power_embedding(k.to(ct), degree);               // [b, h, D]
  at::Tensor S1 = S.to(ct), s1 = s.to(ct);
  if (log_g.defined()) {
    const at::Tensor gate = at::exp(log_g.to(ct));                                              // [b, h]
    S1 = S1 * gate.view({b, h, 1, 1});
    s1 = s1 * gate.view({b, h, 1});
  }
  S1 = S1 + phiK.unsqueeze(-1) * v.to(ct).unsqueeze(-2);
  s1 = s1 + phiK;
  const at::Tensor phiQ = reference::symmetric_power_embedding(qn.view({b, h, g, d}), degree);  // [b, h, g, D]
  const at::Tensor num = at::matmul(phiQ, S1);                                                  // [b, h, g, e]
  const at::Tensor den = at::matmul(phiQ, s1.unsqueeze(-1));                                    // [b, h, g, 1]
  const at::Tensor y = num / at::where(den == 0, at::ones_like(den), den);
  std::vector<at::Tensor> res = {y.reshape({b, hq, e}).to(q.scalar_type()), S1.to(st), s1.to(st)};
  check_step_finite(res[0], res[1], res[2]);
  return res;
}

std::vector<at::Tensor> power_decode_step_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                               int64_t degree) {
  return at_binding_boundary([&] { return power_decode_step(q, k, v, log_g, S, s, degree); });
}

int64_t state_dim_flat(int64_t head_dim, int64_t degree) {
  return at_binding_boundary([&] { return state_dim(head_dim, degree); });
}

}  // namespace power_attention
