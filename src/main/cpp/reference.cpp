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
    z = z + (G.unsqueeze(-1) - G.unsqueeze(-2)).to(ct);
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
  const auto ct = compute_type(q);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3);
  const int64_t h = k.size(2), e = v.size(3), g = hq / h;
  const int64_t N = (t + c - 1) / c, pad = N * c - t;
  // [b, t, ...] -> [b, h, N, c, ...], zero padding at the end (zero keys add nothing; padded rows are cropped)
  auto chunk = [&](const at::Tensor& x) {
    at::Tensor y = x.to(ct);
    if (pad > 0) {
      std::vector<int64_t> shape = y.sizes().vec();
      shape[1] = pad;
      y = at::cat({y, at::zeros(shape, y.options())}, 1);
    }
    return y;
  };
  const at::Tensor qc = chunk(q).view({b, N, c, h, g, d}).permute({0, 3, 1, 2, 4, 5});  // [b, h, N, c, g, d]
  const at::Tensor kc = chunk(k).view({b, N, c, h, d}).permute({0, 3, 1, 2, 4});        // [b, h, N, c, d]
  const at::Tensor vc = chunk(v).view({b, N, c, h, e}).permute({0, 3, 1, 2, 4});        // [b, h, N, c, e]
  at::Tensor Gc = at::zeros({b, h, N, c}, q.options().dtype(at::kDouble));
  if (log_g.defined()) {
    Gc = chunk(log_g.to(at::kDouble)).view({b, N, c, h}).permute({0, 3, 1, 2}).to(at::kDouble).cumsum(-1);
  }
  const at::Tensor L = Gc.select(-1, c - 1);  // [b, h, N]

  // 1. in-chunk attention, unnormalised, in log space
  const at::Tensor s = at::einsum("bhncgd,bhnjd->bhncgj", {qc, kc}) * scale;  // [b, h, N, c, g, c]
  const at::Tensor causal = at::ones({c, c}, q.options().dtype(at::kBool)).tril().view({c, 1, c});
  const at::Tensor zero = s == 0;
  at::Tensor z = at::log(nonzero_or_one(s).abs()) * static_cast<double>(p) +
                 (Gc.view({b, h, N, c, 1, 1}) - Gc.view({b, h, N, 1, 1, c})).to(ct);
  z = at::where(causal.logical_and(zero.logical_not()), z, -std::numeric_limits<double>::infinity());
  at::Tensor m = std::get<0>(z.max(-1, true)).detach();
  m = at::where(at::isinf(m), at::zeros_like(m), m);  // [b, h, N, c, g, 1]
  at::Tensor P = at::exp(z - m);
  if (p % 2 == 1) P = P * at::sign(s);
  const at::Tensor numA = at::einsum("bhncgj,bhnje->bhncge", {P, vc});
  const at::Tensor lA = P.sum(-1, true);

  // 2-3. keys discounted to the chunk end, chunk states
  const at::Tensor kdisc = at::exp(L.unsqueeze(-1) - Gc).to(ct);                           // [b, h, N, c]
  const at::Tensor phiK = symmetric_power_embedding(kc, p) * kdisc.unsqueeze(-1);          // [b, h, N, c, D]
  const at::Tensor S = at::einsum("bhncD,bhnce->bhnDe", {phiK, vc});
  const at::Tensor sn = phiK.sum(3);                                                       // [b, h, N, D]

  // 4. gated prefix over chunks: the state entering chunk n
  std::vector<at::Tensor> Hs, hs;
  at::Tensor H = at::zeros_like(S.select(2, 0)), hn = at::zeros_like(sn.select(2, 0));
  const at::Tensor decay = at::exp(L).to(ct);  // [b, h, N]
  for (int64_t n = 0; n < N; ++n) {
    Hs.push_back(H);
    hs.push_back(hn);
    const at::Tensor dn = decay.select(2, n);
    H = H * dn.view({b, h, 1, 1}) + S.select(2, n);
    hn = hn * dn.view({b, h, 1}) + sn.select(2, n);
  }
  const at::Tensor Hst = at::stack(Hs, 2), hst = at::stack(hs, 2);  // [b, h, N, D, e], [b, h, N, D]

  // 5-6. queries discounted from the chunk start, combined with a shared rescaling
  const at::Tensor qdisc = (at::exp(Gc) * std::pow(scale, static_cast<double>(p))).to(ct);  // [b, h, N, c]
  const at::Tensor phiQ = symmetric_power_embedding(qc, p) * qdisc.view({b, h, N, c, 1, 1});
  const at::Tensor Bq = at::einsum("bhncgD,bhnDe->bhncge", {phiQ, Hst});
  const at::Tensor bq = at::einsum("bhncgD,bhnD->bhncg", {phiQ, hst}).unsqueeze(-1);
  const at::Tensor mu = at::clamp_min(m, 0);
  const at::Tensor a = at::exp(m - mu), cc = at::exp(-mu);
  const at::Tensor num = a * numA + cc * Bq;
  const at::Tensor den = a * lA + cc * bq;
  at::Tensor y = num / nonzero_or_one(den);                                   // [b, h, N, c, g, e]
  y = y.permute({0, 2, 3, 1, 4, 5}).reshape({b, N * c, hq, e});
  return y.narrow(1, 0, t).to(q.scalar_type());
}

}  // namespace reference
}  // namespace power_attention
