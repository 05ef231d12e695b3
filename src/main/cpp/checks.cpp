// checks.cpp: the op's argument checks (checks.h).
#include "checks.h"

#include <c10/core/GradMode.h>
#include <cmath>
#include <sstream>

namespace power_attention {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

void check_rank(const at::Tensor& x, const char* name, const char* dims, int64_t rank) {
  POWER_ATTENTION_CHECK_ARG(x.defined(), "power_full: ", name, " must be a tensor ", dims, ", got an undefined tensor");
  POWER_ATTENTION_CHECK_ARG(x.dim() == rank, "power_full: ", name, " must have ", rank, " dimensions ", dims, ", got ",
                    x.dim(), " dimensions ", shape_str(x.sizes()));
}

void check_shape(const at::Tensor& x, const char* name, const char* dims, std::vector<int64_t> expected) {
  POWER_ATTENTION_CHECK_ARG(x.sizes().vec() == expected, "power_full: ", name, " must have shape ", dims, " = ",
                    shape_str(expected), ", got ", shape_str(x.sizes()));
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

Checked check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                     const PowerFullOptions& options) {
  // ---- checks: argument, expected, actual
  check_rank(q, "Q", "[b, t, hq, d]", 4);
  check_rank(k, "K", "[b, t, h, d]", 4);
  check_rank(v, "V", "[b, t, h, e]", 4);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3), h = k.size(2), e = v.size(3);
  POWER_ATTENTION_CHECK_ARG(b >= 1 && t >= 1 && hq >= 1 && d >= 1, "power_full: Q must have b, t, hq, d >= 1, got ",
                    shape_str(q.sizes()));
  POWER_ATTENTION_CHECK_ARG(h >= 1, "power_full: K must have at least one head, got ", shape_str(k.sizes()));
  check_shape(k, "K", "[b, t, h, d]", {b, t, h, d});
  POWER_ATTENTION_CHECK_ARG(e >= 1, "power_full: V must have e >= 1, got ", shape_str(v.sizes()));
  check_shape(v, "V", "[b, t, h, e]", {b, t, h, e});
  POWER_ATTENTION_CHECK_ARG(hq % h == 0, "power_full: the number of query heads hq = ", hq,
                    " must be a multiple of the number of key/value heads h = ", h);
  POWER_ATTENTION_CHECK_ARG(supported_dtype(q.scalar_type()), "power_full: Q must have dtype float32, float64, bfloat16 or ",
                    "float16, got ", q.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                    "power_full: Q, K and V must share one dtype, got Q ", q.scalar_type(), ", K ", k.scalar_type(),
                    ", V ", v.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.device() == q.device() && v.device() == q.device(),
                    "power_full: Q, K and V must be on one device, got Q on ", q.device(), ", K on ", k.device(),
                    ", V on ", v.device());
  if (log_g.defined()) {
    check_rank(log_g, "log_G", "[b, t, h]", 3);
    check_shape(log_g, "log_G", "[b, t, h]", {b, t, h});
    POWER_ATTENTION_CHECK_ARG(log_g.scalar_type() == at::kFloat || log_g.scalar_type() == at::kDouble ||
                          log_g.scalar_type() == at::kBFloat16 || log_g.scalar_type() == at::kHalf,
                      "power_full: log_G must have a floating dtype, got ", log_g.scalar_type());
    POWER_ATTENTION_CHECK_ARG(log_g.device() == q.device(), "power_full: log_G must be on Q's device ", q.device(),
                      ", got ", log_g.device());
  }
  const int64_t p = options.degree;
  POWER_ATTENTION_CHECK_ARG(p >= 1, "power_full: deg must be >= 1, got ", p);
  double scale = 1.0 / std::sqrt(static_cast<double>(d));
  if (options.scale.has_value()) {
    scale = *options.scale;
    POWER_ATTENTION_CHECK_ARG(std::isfinite(scale) && scale != 0, "power_full: scale must be finite and nonzero, got ",
                              scale);
    // Every weight of a row carries scale^p (SPEC §2), so Y is the same for scale and -scale (for odd p the
    // numerator and the normaliser both change sign): the kernels work with |scale|.
    scale = std::abs(scale);
  }
  int64_t chunk = 0;
  if (options.chunk_size.has_value()) {
    chunk = *options.chunk_size;
    POWER_ATTENTION_CHECK_ARG(chunk >= 1, "power_full: chunk_size must be >= 1, got ", chunk);
  }

  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                     (log_g.defined() && log_g.requires_grad()));

  return {p, scale, chunk, grad};
}

void check_state(const at::Tensor& S, const at::Tensor& s, const at::Tensor& q, int64_t b, int64_t h, int64_t D,
                 int64_t e) {
  POWER_ATTENTION_CHECK_ARG(S.defined() == s.defined(), "power_full: the state needs both S [b, h, D, e] and s [b, h, D], got ",
                    S.defined() ? "S only" : "s only");
  if (!S.defined()) return;
  check_rank(S, "state S", "[b, h, D, e]", 4);
  check_shape(S, "state S", "[b, h, D, e]", {b, h, D, e});
  check_rank(s, "state s", "[b, h, D]", 3);
  check_shape(s, "state s", "[b, h, D]", {b, h, D});
  POWER_ATTENTION_CHECK_ARG(at::isFloatingType(S.scalar_type()) && at::isFloatingType(s.scalar_type()),
                    "power_full: the state must have floating dtypes, got S ", S.scalar_type(), ", s ",
                    s.scalar_type());
  POWER_ATTENTION_CHECK_ARG(S.device() == q.device() && s.device() == q.device(), "power_full: the state must be on Q's device ",
                    q.device(), ", got S on ", S.device(), ", s on ", s.device());
}

void check_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                         int64_t degree) {
  check_rank(q, "Q", "[b, hq, d]", 3);
  check_rank(k, "K", "[b, h, d]", 3);
  check_rank(v, "V", "[b, h, e]", 3);
  const int64_t b = q.size(0), hq = q.size(1), d = q.size(2), h = k.size(1), e = v.size(2);
  POWER_ATTENTION_CHECK_ARG(b >= 1 && hq >= 1 && d >= 1, "power_full: Q must have b, hq, d >= 1, got ",
                            shape_str(q.sizes()));
  check_shape(k, "K", "[b, h, d]", {b, h, d});
  POWER_ATTENTION_CHECK_ARG(e >= 1, "power_full: V must have e >= 1, got ", shape_str(v.sizes()));
  check_shape(v, "V", "[b, h, e]", {b, h, e});
  POWER_ATTENTION_CHECK_ARG(h >= 1 && hq % h == 0, "power_full: the number of query heads hq = ", hq,
                            " must be a multiple of the number of key/value heads h = ", h);
  POWER_ATTENTION_CHECK_ARG(supported_dtype(q.scalar_type()) && k.scalar_type() == q.scalar_type() &&
                                v.scalar_type() == q.scalar_type(),
                            "power_full: Q, K and V must share one dtype of float32, float64, bfloat16, float16, got Q ",
                            q.scalar_type(), ", K ", k.scalar_type(), ", V ", v.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.device() == q.device() && v.device() == q.device(),
                            "power_full: Q, K and V must be on one device, got Q on ", q.device(), ", K on ",
                            k.device(), ", V on ", v.device());
  POWER_ATTENTION_CHECK_ARG(degree >= 1, "power_full: deg must be >= 1, got ", degree);
  if (log_g.defined()) {
    check_rank(log_g, "log_G", "[b, h]", 2);
    check_shape(log_g, "log_G", "[b, h]", {b, h});
    POWER_ATTENTION_CHECK_ARG(supported_dtype(log_g.scalar_type()), "power_full: log_G must have a floating dtype, got ",
                              log_g.scalar_type());
    POWER_ATTENTION_CHECK_ARG(log_g.device() == q.device(), "power_full: log_G must be on Q's device ", q.device(),
                              ", got ", log_g.device());
  }
}

}  // namespace power_attention
