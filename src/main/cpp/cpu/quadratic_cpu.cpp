// quadratic_cpu.cpp: the CPU path's quadratic form, one head: tiles of query tokens against the keys up to the
// tile's end, the weights fused per row (attention_tile_cpu.h). fp32 at an even degree on AVX-512 or AVX2 machines runs
// attention_tile_cpu.h's quadratic_forward/backward_f32 (the products in micro-kernels, 64-token tiles); otherwise
// the products are ATen's.
#include "compute_layout.h"
#include "cpu/blas_threads.h"
#include "cpu/heads.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace power_attention {
namespace cpu {
namespace {

// Query tokens per tile of the quadratic form: about this many weights per tile.
constexpr int64_t kQuadraticTileWeights = int64_t(1) << 20;
constexpr int64_t kQuadraticTileTokens = 128;

// ---------------------------------------------------------------------------------------------------------------
// Quadratic form: tiles of query tokens against keys [0, tile end).
// ---------------------------------------------------------------------------------------------------------------

// G = cumsum(lg[bh]) in fp64, or empty without gating.
std::vector<double> gate_cumsum(const at::Tensor& lg, int64_t bh, int64_t T) {
  std::vector<double> G;
  if (!lg.defined()) return G;
  G.resize(T);
  const double* lp = lg[bh].data_ptr<double>();
  double acc = 0;
  for (int64_t i = 0; i < T; ++i) G[i] = (acc += lp[i]);
  return G;
}

// Tiles of at most kQuadraticTileTokens query tokens, so that the products skip most of the masked upper triangle
// (a tile sees only the keys up to its last token).
int64_t quadratic_tile_tokens(const Problem& pr) {
  return std::clamp<int64_t>(kQuadraticTileWeights / std::max<int64_t>(1, pr.g * pr.T), 16,
                             std::max<int64_t>(16, std::min(pr.T, kQuadraticTileTokens)));
}

// The head as quadratic_forward/backward_f32 take it (q, k, v contiguous: the compute layout's are).
QuadraticHead f32_head(const Problem& pr, const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& vh,
                       const std::vector<double>& G) {
  QuadraticHead h;
  h.T = pr.T, h.g = pr.g, h.d = pr.d, h.e = pr.e, h.p = pr.p;
  h.tile = std::min(quadratic_kernel_tile_tokens(), quadratic_tile_tokens(pr));
  h.scale = static_cast<float>(pr.scale);
  h.q = qh.data_ptr<float>(), h.k = kh.data_ptr<float>(), h.v = vh.data_ptr<float>();
  h.G = G.empty() ? nullptr : G.data();
  return h;
}

}  // namespace

template <typename T>
void quadratic_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lg, Forward& f, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const std::vector<double> G = gate_cumsum(lg, bh, T_);
  const at::Tensor yh = f.y[bh].view({T_ * g, e});
  const at::Tensor lh = f.den[bh], mh = f.rowmax[bh];
  if constexpr (std::is_same_v<T, float>) {
    if (quadratic_kernels_available(pr.p)) {
      const at::Tensor qc = qr.contiguous(), kc = kh.contiguous(), vc = vh.contiguous();
      quadratic_forward_f32(f32_head(pr, qc, kc, vc, G), yh.data_ptr<float>(), mh.data_ptr<float>(),
                            lh.data_ptr<float>());
      return;
    }
  }
  const int64_t tile = quadratic_tile_tokens(pr);
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    at::Tensor S = at::mm(qr.narrow(0, i0 * g, R), kh.narrow(0, 0, i1).t()).contiguous();
    const auto sh = tile_shape<T>(pr, R, i1, i0, 0, G.empty() ? nullptr : G.data() + i0, G.empty() ? nullptr : G.data());
    at::Tensor m = mh.narrow(0, i0 * g, R), l = lh.narrow(0, i0 * g, R);
    tile_weights_forward<T>(sh, S.data_ptr<T>(), m.data_ptr<T>(), l.data_ptr<T>());
    yh.narrow(0, i0 * g, R).copy_(at::mm(S, vh.narrow(0, 0, i1)).mul_(safe_reciprocal(l).unsqueeze(1)));
  }
}

template <typename T>
void quadratic_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                             HeadGrads& gr, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const bool gates = lg.defined() && needs.g;
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const std::vector<double> G = gate_cumsum(lg, bh, T_);
  std::vector<T> dG(gates ? T_ : 0, T(0));
  at::Tensor dq = needs.q ? query_grad_rows(pr, gr, bh) : at::Tensor();  // [T, g, d]
  at::Tensor dk = needs.k ? kv_grad_rows(pr, gr, gr.k, bh) : at::Tensor();
  at::Tensor dv = needs.v ? kv_grad_rows(pr, gr, gr.v, bh) : at::Tensor();
  const at::Tensor yh = f.y[bh].view({T_ * g, e}), dyh = dy[bh].view({T_ * g, e});
  bool fast = false;
  if constexpr (std::is_same_v<T, float>) {
    if (quadratic_kernels_available(pr.p)) {
      const at::Tensor qc = qr.contiguous(), kc = kh.contiguous(), vc = vh.contiguous();
      const at::Tensor yc = yh.contiguous(), dyc = dyh.contiguous();
      const at::Tensor mc = f.rowmax[bh].contiguous(), lc = f.den[bh].contiguous();
      // the gradients in place where their rows are unit-stride (the compute and the caller's layouts), else
      // through contiguous copies
      const bool rows = (!needs.q || (dq.stride(2) == 1 && dq.stride(1) == d)) && (!needs.k || dk.stride(1) == 1) &&
                        (!needs.v || dv.stride(1) == 1);
      at::Tensor dqc = needs.q ? (rows ? dq : at::empty({T_, g, d}, q.options())) : at::Tensor();
      at::Tensor dkc = needs.k ? (rows ? dk : at::empty({T_, d}, k.options())) : at::Tensor();
      at::Tensor dvc = needs.v ? (rows ? dv : at::empty({T_, e}, v.options())) : at::Tensor();
      QuadraticGrads out;
      if (needs.q) out.dq = dqc.data_ptr<float>(), out.ldq = dqc.stride(0);
      if (needs.k) out.dk = dkc.data_ptr<float>(), out.ldk = dkc.stride(0);
      if (needs.v) out.dv = dvc.data_ptr<float>(), out.ldv = dvc.stride(0);
      quadratic_backward_f32(f32_head(pr, qc, kc, vc, G), yc.data_ptr<float>(), dyc.data_ptr<float>(),
                             mc.data_ptr<float>(), lc.data_ptr<float>(), out, gates ? dG.data() : nullptr);
      if (!rows) {
        if (needs.q) dq.copy_(dqc);
        if (needs.k) dk.copy_(dkc);
        if (needs.v) dv.copy_(dvc);
      }
      fast = true;
    }
  }
  const int64_t tile = quadratic_tile_tokens(pr);
  for (int64_t i0 = 0; !fast && i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor inv = safe_reciprocal(f.den[bh].narrow(0, i0 * g, R));
    const at::Tensor dyt = dyh.narrow(0, i0 * g, R), yt = yh.narrow(0, i0 * g, R);
    const at::Tensor dnum = dyt * inv.unsqueeze(1);                     // y = num / l
    const at::Tensor dl = (dyt * yt).sum(1).mul_(inv).neg_();
    const at::Tensor qt = qr.narrow(0, i0 * g, R), kt = kh.narrow(0, 0, i1), vt = vh.narrow(0, 0, i1);
    at::Tensor S = at::mm(qt, kt.t()).contiguous();
    at::Tensor dP = at::mm(dnum, vt.t()).add_(dl.unsqueeze(1)).contiguous();
    {  // the rows' own keys: dy . (v - y) / l, the difference first (own_key_term)
      const at::Tensor own =
          (dyt * (vh.narrow(0, i0, i1 - i0).repeat_interleave(g, 0) - yt)).sum(1).mul_(inv).contiguous();
      own_key_term(dP.data_ptr<T>() + i0, i1, R, g, own.data_ptr<T>());
    }
    const at::Tensor m = f.rowmax[bh].narrow(0, i0 * g, R).contiguous();
    const auto sh = tile_shape<T>(pr, R, i1, i0, 0, G.empty() ? nullptr : G.data() + i0, G.empty() ? nullptr : G.data());
    tile_weights_backward<T>(sh, S.data_ptr<T>(), dP.data_ptr<T>(), m.data_ptr<T>(), gates ? dG.data() + i0 : nullptr,
                             gates ? dG.data() : nullptr);
    if (needs.v) dv.narrow(0, 0, i1).addmm_(S.t(), dnum);
    if (needs.q) dq.narrow(0, i0, i1 - i0).copy_(at::mm(dP, kt).view({i1 - i0, g, d}));
    if (needs.k) dk.narrow(0, 0, i1).addmm_(dP.t(), qt);
  }
  if (gates) {  // G = cumsum(lg): reverse cumsum
    double* out = gr.lg[bh].data_ptr<double>();
    double acc = 0;
    for (int64_t i = T_ - 1; i >= 0; --i) out[i] = (acc += static_cast<double>(dG[i]));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The fp32 kernels from the caller's layout (quadratic_from_caller_layout): q, k, v, dy read in place, no copies.
// ---------------------------------------------------------------------------------------------------------------
namespace {

// x with unit-stride rows and a nonzero token stride (x itself when it has them; an expanded x is copied).
at::Tensor unit_rows(const at::Tensor& x) { return x.stride(-1) == 1 && x.stride(1) != 0 ? x : x.contiguous(); }

// The gate cumsum of head (bi, hi) from the caller's log gates [b, t, h] (fp64, contiguous), or empty.
std::vector<double> caller_gate_cumsum(const at::Tensor& lgd, int64_t bi, int64_t hi, int64_t t, int64_t H) {
  std::vector<double> G;
  if (!lgd.defined()) return G;
  G.resize(t);
  const double* lp = lgd.data_ptr<double>() + bi * t * H + hi;
  double acc = 0;
  for (int64_t i = 0; i < t; ++i) G[i] = (acc += lp[i * H]);
  return G;
}

// Head (bi, hi) of the caller's [b, t, heads, w] tensors (one query head per key/value head).
QuadraticHead caller_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t bi,
                          int64_t hi, const std::vector<double>& G) {
  QuadraticHead h;
  h.T = pr.T, h.g = pr.g, h.d = pr.d, h.e = pr.e, h.p = pr.p;
  h.tile = std::min(quadratic_kernel_tile_tokens(), quadratic_tile_tokens(pr));
  h.scale = static_cast<float>(pr.scale);
  h.q = q.data_ptr<float>() + bi * q.stride(0) + hi * q.stride(2), h.ldq = q.stride(1);
  h.k = k.data_ptr<float>() + bi * k.stride(0) + hi * k.stride(2), h.ldk = k.stride(1);
  h.v = v.data_ptr<float>() + bi * v.stride(0) + hi * v.stride(2), h.ldv = v.stride(1);
  h.G = G.empty() ? nullptr : G.data();
  return h;
}

}  // namespace

bool quadratic_from_caller_layout(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return pr.chunk == 0 && pr.g == 1 && pr.b > 0 && pr.t > 0 && pr.T == pr.t && pr.precision.compute == at::kFloat &&
         q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
         quadratic_kernels_available(pr.p);
}

Forward quadratic_forward_caller(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& log_g) {
  const at::Tensor qc = unit_rows(q), kc = unit_rows(k), vc = unit_rows(v);
  const at::Tensor lgd = log_g.defined() ? log_g.to(at::kDouble).contiguous() : at::Tensor();
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, q.options());
  f.den = at::empty({pr.BH, pr.T * pr.g}, q.options());
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, q.options());
  const int64_t H = pr.BH / pr.b;
  for_each_head(pr.BH, [&](int64_t bh) {
    const int64_t bi = bh / H, hi = bh % H;
    const std::vector<double> G = caller_gate_cumsum(lgd, bi, hi, pr.t, H);
    quadratic_forward_f32(caller_head(pr, qc, kc, vc, bi, hi, G), f.y[bh].data_ptr<float>(),
                          f.rowmax[bh].data_ptr<float>(), f.den[bh].data_ptr<float>());
  });
  f.out = layout::query_unlayout(f.y, pr, q.scalar_type());
  return f;
}

Grads quadratic_backward_caller(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_g, const Forward& f, const at::Tensor& dy, const Needs& needs) {
  const at::Tensor qc = unit_rows(q), kc = unit_rows(k), vc = unit_rows(v);
  const at::Tensor dyc = dy.defined() ? unit_rows(dy) : at::zeros({pr.b, pr.t, pr.h * pr.g, pr.e}, q.options());
  const at::Tensor lgd = log_g.defined() ? log_g.to(at::kDouble).contiguous() : at::Tensor();
  const bool gates = log_g.defined() && needs.g;
  Grads gr;
  if (needs.q) gr.q = at::empty(q.sizes(), q.options());
  if (needs.k) gr.k = at::empty(k.sizes(), k.options());
  if (needs.v) gr.v = at::empty(v.sizes(), v.options());
  const at::Tensor dlg = gates ? at::empty({pr.BH, pr.T}, q.options().dtype(at::kDouble)) : at::Tensor();
  const int64_t H = pr.BH / pr.b;
  for_each_head(pr.BH, [&](int64_t bh) {
    const int64_t bi = bh / H, hi = bh % H;
    const std::vector<double> G = caller_gate_cumsum(lgd, bi, hi, pr.t, H);
    QuadraticHead h = caller_head(pr, qc, kc, vc, bi, hi, G);
    const float* dyp = dyc.data_ptr<float>() + bi * dyc.stride(0) + hi * dyc.stride(2);
    h.lddy = dyc.stride(1);
    QuadraticGrads out;
    if (needs.q) out.dq = gr.q.data_ptr<float>() + bi * gr.q.stride(0) + hi * gr.q.stride(2), out.ldq = gr.q.stride(1);
    if (needs.k) out.dk = gr.k.data_ptr<float>() + bi * gr.k.stride(0) + hi * gr.k.stride(2), out.ldk = gr.k.stride(1);
    if (needs.v) out.dv = gr.v.data_ptr<float>() + bi * gr.v.stride(0) + hi * gr.v.stride(2), out.ldv = gr.v.stride(1);
    std::vector<float> dG(gates ? pr.T : 0, 0.0f);
    quadratic_backward_f32(h, f.y[bh].data_ptr<float>(), dyp, f.rowmax[bh].data_ptr<float>(),
                           f.den[bh].data_ptr<float>(), out, gates ? dG.data() : nullptr);
    if (gates) {  // G = cumsum(lg): reverse cumsum
      double* o = dlg[bh].data_ptr<double>();
      double acc = 0;
      for (int64_t i = pr.T - 1; i >= 0; --i) o[i] = (acc += static_cast<double>(dG[i]));
    }
  });
  if (gates) gr.lg = layout::gate_unlayout(dlg, pr, log_g.scalar_type());
  return gr;
}

template void quadratic_forward_head<float>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, Forward&, int64_t);
template void quadratic_forward_head<double>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, Forward&, int64_t);
template void quadratic_backward_head<float>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const Forward&, const at::Tensor&, const Needs&,
                                             HeadGrads&, int64_t);
template void quadratic_backward_head<double>(const Problem&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&, const Forward&,
                                              const at::Tensor&, const Needs&, HeadGrads&, int64_t);

}  // namespace cpu
}  // namespace power_attention
