// magnitudes.cpp: inputs brought into range, the gate range of returned states (magnitudes.h).
#include "magnitudes.h"
#include "errors.h"
#include "path.h"

#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace power_attention {

// 2^-floor(log2(a)) for a > 0, 1 for a == 0, as fp32 (fp64 for fp64 amax).
at::Tensor pow2_factor(const at::Tensor& amax) {
  const at::Tensor e = at::floor(at::log2(at::where(amax > 0, amax, at::ones_like(amax))));
  return at::exp2(-e);
}

// 2^-e for a = m 2^e (m in [1, 2)) where e < 0 (a brought up to [1, 2)) or e > top (down to [2^top, 2^(top + 1))),
// 1 for e in [0, top] and for a == 0.
at::Tensor pow2_factor_beyond(const at::Tensor& amax, double top) {
  const at::Tensor e = at::floor(at::log2(at::where(amax > 0, amax, at::ones_like(amax))));
  return at::exp2(-at::where(e < 0, e, at::clamp_min(e - top, 0)));
}

// x * f with f a power of two per row or head: in x's dtype where that is exact (fp16 cannot hold every factor).
at::Tensor times_pow2(const at::Tensor& x, const at::Tensor& f) {
  if (x.scalar_type() == at::kHalf) return (x.to(at::kFloat) * f).to(at::kHalf);
  return x * f.to(x.scalar_type());
}

MagnitudeRead read_magnitudes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
  at::NoGradGuard no_grad;
  MagnitudeRead rd;
  // fp16 on CUDA: always brought into range (its tile products run in fp16, whose range is narrow), with no read
  // back. Everywhere else the factors are applied only where needed, decided from one read of the extremes (a device
  // sync on CUDA, which also reads the largest log gate for amplifying_gates: the sync a gated call makes anyway).
  if (q.is_cuda() && q.scalar_type() == at::kHalf) {
    rd.qa = path::row_max_abs(q);   // [b, t, hq, 1]
    rd.ka = path::head_max_abs(k);  // [b, 1, h, 1]
    return rd;
  }
  const path::Extremes ex = path::extremes(q, k, log_g);
  rd.qa = ex.qa;
  rd.ka = ex.ka;
  at::Tensor stats = ex.stats;
  if (!stats.defined()) {
    const at::Tensor& qa = rd.qa;
    const at::Tensor& ka = rd.ka;
    const at::Tensor inf = at::full({}, std::numeric_limits<double>::infinity(), qa.options());
    std::vector<at::Tensor> parts = {qa.max(), at::where(qa > 0, qa, inf).min(), ka.max(),
                                     at::where(ka > 0, ka, inf).min()};
    if (log_g.defined()) parts.push_back(log_g.max().to(qa.scalar_type()).to(qa.device()));
    stats = at::stack(parts).to(at::kDouble);
  }
  rd.read = true;
  rd.gate = log_g.defined();
  if (stats.is_cpu()) {
    rd.host = stats;
    return rd;
  }
  rd.host = at::empty(stats.sizes(), stats.options().device(at::kCPU).pinned_memory(true));
  rd.host.copy_(stats, /*non_blocking=*/true);
  const c10::impl::VirtualGuardImpl impl(stats.device().type());
  rd.copied.emplace(stats.device().type());
  rd.copied->record(impl.getStream(stats.device()));
  return rd;
}

Scaled scale_to_safe_range(const at::Tensor& q, const at::Tensor& k, int64_t p, double scale,
                           const at::Tensor& log_g) {
  return scale_to_safe_range(read_magnitudes(q, k, log_g), q, k, p, scale);
}

Scaled scale_to_safe_range(const MagnitudeRead& rd, const at::Tensor& q, const at::Tensor& k, int64_t p,
                           double scale) {
  Scaled sc;
  sc.q = q, sc.k = k, sc.scale = scale;
  const double d = static_cast<double>(q.size(3));
  const at::Tensor& qa = rd.qa;
  const at::Tensor& ka = rd.ka;
  if (rd.read) {
    if (rd.copied) rd.copied->synchronize();
    const double* st = rd.host.data_ptr<double>();
    const double qmax = st[0], qmin = st[1], kmax = st[2], kmin = st[3];
    if (rd.gate) sc.gate_max = st[4], sc.gate_max_read = true;
    if (qmax == 0 || kmax == 0) return sc;  // all weights are zero: nothing to bring into range
    // The largest score scale d |q| |k| and the smallest relevant one |q| |k| (per row and head) must stay well
    // inside the range where their p-th powers, summed over the sequence, are finite and normal in fp32; and so
    // must |q|^p and |k|^p each (the chunked form's states hold sums of |k|^p |v|, its queries |q|^p times those:
    // |q| = 1e-19 against |k| = 1e19 keeps every score at 1 but no state in fp32).
    const double hi = std::exp2(64.0 / static_cast<double>(p)), lo = std::exp2(-64.0 / static_cast<double>(p));
    const double each = std::exp2(32.0 / static_cast<double>(p));
    const bool safe = std::isfinite(qmax) && std::isfinite(kmax) && scale * d * qmax * kmax <= hi &&
                      scale * qmin * kmin >= lo && scale <= hi && scale >= lo && qmax <= each && kmax <= each &&
                      qmin >= 1 / each && kmin >= 1 / each;
    if (safe) return sc;
  }
  at::NoGradGuard no_grad;
  if (q.is_cuda() && q.scalar_type() == at::kHalf) {
    // fp16: the kernels return the gradients of q f, k f in fp16, 1 / f times the true ones, so a factor under 1
    // would take gradients in range past 65504 (max|k| = 4.3 halves a head's k twice: dk 28804 came back inf).
    // Rows and heads whose extremes lie in [1, 2^(top + 1)) keep f = 1: with sqrt(d) |q| |k| < 2^(64 / p) and
    // |q|, |k| < 2^(32 / p) there (top = floor(32 / p - 1 - log2(d) / 4)), the bounds above hold at the scale
    // 1 / sqrt(d) without bringing them down; smaller extremes are brought up to [1, 2), larger ones down to
    // [2^top, 2^(top + 1)).
    const double top = std::max(0.0, std::floor(32.0 / static_cast<double>(p) - 1 - std::log2(d) / 4));
    sc.qf = pow2_factor_beyond(qa, top);
    sc.kf = pow2_factor_beyond(ka, top);
  } else {
    sc.qf = pow2_factor(qa);
    sc.kf = pow2_factor(ka);
  }
  sc.q = times_pow2(q, sc.qf);
  sc.k = times_pow2(k, sc.kf);
  sc.scale = 1.0 / std::sqrt(d);
  sc.state_logscale = (at::log(sc.kf.to(at::kDouble)) * static_cast<double>(p)).reshape({-1});  // [b * h]
  return sc;
}

at::Tensor all_finite(const at::Tensor& x) {
  at::NoGradGuard no_grad;
  return x.scalar_type() == at::kDouble ? at::isfinite(x).all() : at::isfinite(x.sum(at::kDouble));
}

// The gradient of x from that of x * f (f a constant power of two per row or head), in x's dtype.
at::Tensor unscale_grad(const at::Tensor& grad, const at::Tensor& f) {
  if (!grad.defined() || !f.defined()) return grad;
  return times_pow2(grad, f);
}

// A state that the op returns is a plain tensor (SPEC §6): exp(G_t - G_j) must fit its dtype. Positive log gates
// that add up past that are refused before any work (the plain power_full serves any log gates).
double state_gate_limit(at::ScalarType st) { return st == at::kDouble ? 354.0 : 44.0; }  // ln 2^512, ln 2^64

void check_state_gates(const at::Tensor& log_g, bool has_initial, at::ScalarType st) {
  if (!log_g.defined()) return;
  double worst;
  {
    at::NoGradGuard no_grad;
    const at::Tensor G = log_g.to(at::kDouble).cumsum(1);                  // [b, t, h]
    const at::Tensor last = G.select(1, G.size(1) - 1);                    // [b, h]
    at::Tensor lowest = std::get<0>(G.min(1));                             // min_j G_j
    if (has_initial) lowest = at::minimum(lowest, at::zeros_like(lowest));  // the entering state decays by exp(G_t)
    worst = (last - lowest).max().item<double>();
  }
  const double limit = state_gate_limit(st);
  POWER_ATTENTION_CHECK_ARG(
      std::isfinite(worst) && worst <= limit, "power_full: log_G adds up to exp(G_t - G_j) = exp(", worst,
      ") in the state returned after the last token (positive log gates grow the past), over the exp(", limit,
      ") that a ", st == at::kDouble ? "float64" : "float32",
      " state can hold. Options: power_full without states (it serves log gates of any sign and size), float64 "
      "inputs (states up to exp(354)), or shorter pieces");
}

// The true state [b, h, D, e] / [b, h, D] from the path's scaled one: exp(final_logscale - state_logscale) (S^, s^).
at::Tensor state_factor(const at::Tensor& final_logscale, const Scaled& sc, int64_t BH) {
  at::Tensor lf = final_logscale.defined() ? final_logscale.to(at::kDouble)
                                           : at::zeros({BH}, at::TensorOptions().dtype(at::kDouble));
  if (sc.applied()) lf = lf - sc.state_logscale.to(lf.device());
  return at::exp(lf);
}

// Read for every gated CUDA call (one device sync: the only one the op makes, shared with scale_to_safe_range's
// read where that made one) and for the CPU's chunked form (its quadratic form keeps fp32 precision there).
bool amplifying_gates(const at::Tensor& log_g, int64_t chunk, const Scaled& sc) {
  if (!log_g.defined() || (log_g.device().is_cpu() && chunk <= 0)) return false;
  if (sc.gate_max_read) return sc.gate_max > 0;
  at::NoGradGuard no_grad;
  return log_g.max().item<double>() > 0;
}

}  // namespace power_attention
