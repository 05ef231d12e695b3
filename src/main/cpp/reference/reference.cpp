// reference.cpp: the reference implementations of power_full in plain ATen ops (SPEC §2-4).
//
// First-class code, not test scaffolding: they are differentiable through autograd, they are the oracles the fast
// paths are tested against, and the quadratic one is the fallback for inputs the fast paths do not take.
// Both compute in fp64 for fp64 inputs and in fp32 otherwise; gate cumsums are always fp64.
#include "power_attention.h"
#include "sympow.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace power_attention {
namespace reference {
namespace {

at::ScalarType compute_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// where(x == 0, 1, x): keeps log() and division away from zero without changing any selected value.
at::Tensor nonzero_or_one(const at::Tensor& x) { return at::where(x == 0, at::ones_like(x), x); }

}  // namespace

at::Tensor symmetric_power_embedding(const at::Tensor& x, int64_t degree) {
  const int64_t d = x.size(-1);
  const int64_t D = sympow_dim(d, degree);
  // Index table of the layout in sympow.h: row k holds a_k of every multi-index.
  std::vector<int64_t> idx(static_cast<size_t>(degree * D));
  std::vector<int64_t> cur(degree, 0);
  for (int64_t a = 0; a < D; ++a) {
    for (int64_t k = 0; k < degree; ++k) idx[k * D + a] = cur[k];
    // next non-decreasing multi-index in lexicographic order
    int64_t k = degree - 1;
    while (k >= 0 && cur[k] == d - 1) --k;
    if (k < 0) break;
    ++cur[k];
    for (int64_t j = k + 1; j < degree; ++j) cur[j] = cur[k];
  }
  const at::Tensor index = at::tensor(idx, at::TensorOptions().dtype(at::kLong)).view({degree, D}).to(x.device());
  const at::Tensor coef =
      at::tensor(sympow_coefficients(d, degree), at::TensorOptions().dtype(at::kDouble)).to(x.device(), x.scalar_type());
  at::Tensor out = x.index_select(-1, index[0]);
  for (int64_t k = 1; k < degree; ++k) out = out * x.index_select(-1, index[k]);
  return out * coef;
}

// The gate part of the log-weights, (G_i - G_j) - gref_i with the row reference gref_i = G_i - min_{j<=i} G_j
// (docs/SPEC.md), a constant: every gradient goes to G_i and G_j. Formed in fp64, so that it is exact however large
// G grows. G [..., t] -> [..., t, t] (query i, key j); the causal mask is applied by the caller.
static at::Tensor gate_log_weights(const at::Tensor& G) {
  const at::Tensor gref = (G - std::get<0>(G.cummin(-1))).detach();
  return (G.unsqueeze(-1) - gref.unsqueeze(-1)) - G.unsqueeze(-2);
}

at::Tensor power_full_quadratic(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_g, int64_t p, double scale) {
  const auto ct = compute_type(q);
  const int64_t hq = q.size(2), h = k.size(2), g = hq / h, t = q.size(1);
  const at::Tensor qf = q.to(ct).permute({0, 2, 1, 3});                               // [b, hq, t, d]
  const at::Tensor kf = k.to(ct).repeat_interleave(g, 2).permute({0, 2, 1, 3});       // [b, hq, t, d]
  const at::Tensor vf = v.to(ct).repeat_interleave(g, 2).permute({0, 2, 1, 3});       // [b, hq, t, e]
  const at::Tensor s = at::matmul(qf, kf.transpose(-1, -2)) * scale;                  // [b, hq, t, t]
  const at::Tensor causal = at::ones({t, t}, q.options().dtype(at::kBool)).tril();
  const at::Tensor zero = s == 0;
  at::Tensor z = at::log(nonzero_or_one(s).abs()) * static_cast<double>(p);
  if (log_g.defined()) {
    const at::Tensor G = log_g.to(at::kDouble).cumsum(1).repeat_interleave(g, 2).permute({0, 2, 1});  // [b, hq, t]
    z = z + gate_log_weights(G).to(ct);
  }
  z = at::where(causal.logical_and(zero.logical_not()), z, -std::numeric_limits<double>::infinity());
  at::Tensor m = std::get<0>(z.max(-1, true)).detach();
  m = at::where(at::isinf(m), at::zeros_like(m), m);
  at::Tensor P = at::exp(z - m);
  if (p % 2 == 1) P = P * at::sign(s);
  const at::Tensor l = P.sum(-1, true);
  const at::Tensor y = at::matmul(P, vf) / nonzero_or_one(l);
  return y.permute({0, 2, 1, 3}).to(q.scalar_type());
}

at::Tensor power_full_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& log_g, int64_t p, double scale, int64_t c) {
  return power_full_chunked_with_state(q, k, v, log_g, p, scale, c, at::Tensor(), at::Tensor())[0];
}

std::vector<at::Tensor> power_full_chunked_with_state(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& log_g, int64_t p, double scale, int64_t c,
                                                      const at::Tensor& S0, const at::Tensor& s0) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  const auto ct = compute_type(q);
  const auto f64 = q.options().dtype(at::kDouble);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3);
  const int64_t h = k.size(2), e = v.size(3), g = hq / h;
  const int64_t N = (t + c - 1) / c, pad = N * c - t;
  // [b, t, ...] -> [b, h, N, c, ...], zero padding at the end (zero keys add nothing; padded rows are cropped)
  auto chunk = [&](const at::Tensor& x, at::ScalarType type) {
    at::Tensor y = x.to(type);
    if (pad > 0) {
      std::vector<int64_t> shape = y.sizes().vec();
      shape[1] = pad;
      y = at::cat({y, at::zeros(shape, y.options())}, 1);
    }
    return y;
  };
  const at::Tensor qc = chunk(q, ct).view({b, N, c, h, g, d}).permute({0, 3, 1, 2, 4, 5});  // [b, h, N, c, g, d]
  const at::Tensor kc = chunk(k, ct).view({b, N, c, h, d}).permute({0, 3, 1, 2, 4});        // [b, h, N, c, d]
  const at::Tensor vc = chunk(v, ct).view({b, N, c, h, e}).permute({0, 3, 1, 2, 4});        // [b, h, N, c, e]
  at::Tensor Gc = at::zeros({b, h, N, c}, f64);  // local inclusive cumsum, fp64
  if (log_g.defined()) {
    Gc = chunk(log_g, at::kDouble).view({b, N, c, h}).permute({0, 3, 1, 2}).cumsum(-1);
  }
  const at::Tensor L = Gc.select(-1, c - 1);                                   // [b, h, N]
  const at::Tensor sigma = (L - std::get<0>(Gc.min(-1))).detach();             // max_j (L - Gc_j) >= 0
  const at::Tensor gref = (Gc - std::get<0>(Gc.cummin(-1))).detach();          // [b, h, N, c], the rows' reference

  // 1. in-chunk attention, unnormalised, in log space relative to the rows' gate reference
  const at::Tensor s = at::einsum("bhncgd,bhnjd->bhncgj", {qc, kc}) * scale;  // [b, h, N, c, g, c]
  const at::Tensor causal = at::ones({c, c}, q.options().dtype(at::kBool)).tril().view({c, 1, c});
  const at::Tensor zero = s == 0;
  at::Tensor z = at::log(nonzero_or_one(s).abs()) * static_cast<double>(p) +
                 gate_log_weights(Gc).unsqueeze(-2).to(ct);                    // [b, h, N, c, 1, c] gate part
  z = at::where(causal.logical_and(zero.logical_not()), z, -std::numeric_limits<double>::infinity());
  at::Tensor m = std::get<0>(z.max(-1, true)).detach();
  m = at::where(at::isinf(m), at::zeros_like(m), m);  // [b, h, N, c, g, 1]
  at::Tensor P = at::exp(z - m);
  if (p % 2 == 1) P = P * at::sign(s);
  const at::Tensor numA = at::einsum("bhncgj,bhnje->bhncge", {P, vc});
  const at::Tensor lA = P.sum(-1, true);

  // 2-4. the scaled states exp(mu_n) (H^_n, h^_n) entering each chunk: mu' = max(mu + L, sigma), every factor <= 1
  const int64_t D = sympow_dim(d, p);
  at::Tensor H = S0.defined() ? S0.to(ct) : at::zeros({b, h, D, e}, q.options().dtype(ct));
  at::Tensor hn = s0.defined() ? s0.to(ct) : at::zeros({b, h, D}, q.options().dtype(ct));
  at::Tensor mu = at::full({b, h}, S0.defined() ? 0.0 : kNegInf, f64);
  std::vector<at::Tensor> Hs, hs, mus;
  for (int64_t n = 0; n < N; ++n) {
    Hs.push_back(H);
    hs.push_back(hn);
    mus.push_back(mu);
    const at::Tensor Ln = L.select(2, n), sn = sigma.select(2, n);
    const at::Tensor next = at::where(at::isinf(mu), sn, at::maximum(mu + Ln.detach(), sn));  // a stabiliser
    const at::Tensor alpha = at::exp(mu + Ln - next).to(ct);                                          // [b, h]
    const at::Tensor kf = at::exp(Ln.unsqueeze(-1) - Gc.select(2, n) - next.unsqueeze(-1)).to(ct);   // [b, h, c]
    const at::Tensor phiK = symmetric_power_embedding(kc.select(2, n), p) * kf.unsqueeze(-1);         // [b, h, c, D]
    H = H * alpha.view({b, h, 1, 1}) + at::einsum("bhcD,bhce->bhDe", {phiK, vc.select(2, n)});
    hn = hn * alpha.view({b, h, 1}) + phiK.sum(2);
    mu = next;
  }
  const at::Tensor Hst = at::stack(Hs, 2), hst = at::stack(hs, 2);  // [b, h, N, D, e], [b, h, N, D]
  const at::Tensor must = at::stack(mus, 2);                        // [b, h, N] fp64

  // 5-6. queries against the scaled states, combined at a shared row scale M = max(m + gref, r + log|b|)
  const at::Tensor phiQ = symmetric_power_embedding(qc, p) * std::pow(scale, static_cast<double>(p));
  const at::Tensor Bq = at::einsum("bhncgD,bhnDe->bhncge", {phiQ, Hst});
  const at::Tensor bq = at::einsum("bhncgD,bhnD->bhncg", {phiQ, hst}).unsqueeze(-1);  // [b, h, N, c, g, 1]
  const at::Tensor gr = gref.view({b, h, N, c, 1, 1});
  const at::Tensor r = (Gc + must.unsqueeze(-1)).view({b, h, N, c, 1, 1});            // fp64, -inf: empty state
  const at::Tensor bd = bq.detach().to(at::kDouble);
  const at::Tensor rho = at::where(bd != 0, r + at::log(nonzero_or_one(bd).abs()), r);
  const at::Tensor A = at::where(lA.detach() != 0, m.to(at::kDouble) + gr, at::full_like(gr, kNegInf));
  at::Tensor M = at::maximum(A, rho).detach();  // a stabiliser: y does not depend on it
  M = at::where(at::isinf(M), gr.expand_as(M), M);
  const at::Tensor wa = at::where(lA.detach() != 0, at::exp(m.to(at::kDouble) + gr - M), at::zeros_like(M)).to(ct);
  const at::Tensor ws = at::exp(r - M).to(ct);
  const at::Tensor num = wa * numA + ws * Bq;
  const at::Tensor den = wa * lA + ws * bq;
  at::Tensor y = num / nonzero_or_one(den);                                   // [b, h, N, c, g, e]
  y = y.permute({0, 2, 3, 1, 4, 5}).reshape({b, N * c, hq, e});
  // the state after the last token, true scale: exp(mu_N) (H^_N, h^_N)
  const at::Tensor out_scale = at::exp(mu).to(ct);
  const auto st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {y.narrow(1, 0, t).to(q.scalar_type()), (H * out_scale.view({b, h, 1, 1})).to(st),
          (hn * out_scale.view({b, h, 1})).to(st)};
}

}  // namespace reference
}  // namespace power_attention
