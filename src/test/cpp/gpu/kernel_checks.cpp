// kernel_checks.cpp: the degree-2 state kernels (cuda/sympow2/sympow2.h) called directly, against phi made in ATen
// (fp32) from the documented internal layout; the query products of each kernel set against the sm_80 kernel's.
#include "harness.h"

#include "cuda/power_full_cuda.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <cuda_runtime.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace harness {

// The degree-2 state kernels (cuda/sympow2/sympow2.h) against phi made in ATen (fp32) from the documented internal layout:
// the fused scan (forward: Hs and the final state; backward: An, dL, dH0) over N chunks with random decays and
// starting states, B = phi'(x) H, and dx, u of phi'(x) . (y H^T) by autograd; plus the layout maps' round trip.
void check_sympow2_kernels() {
  const auto o = at::TensorOptions().device(at::kCUDA);
  for (int64_t d : {16, 64, 128})
    for (auto dt : {at::kBFloat16, at::kHalf}) {
      const int64_t BH = 2, N = 3, c = 100, X = BH * N, n = c, E = d + 8, nb = d / 16;
      std::vector<int64_t> ia, ib;
      std::vector<float> cf;
      for (int64_t A = 0; A < nb; ++A)
        for (int64_t a = 0; a < 16; ++a)
          for (int64_t B = A; B < nb; ++B)
            for (int64_t b = 0; b < 16; ++b) {
              ia.push_back(16 * A + a);
              ib.push_back(16 * B + b);
              cf.push_back(A == B ? 1.f : std::sqrt(2.f));
            }
      const int64_t D2 = static_cast<int64_t>(ia.size());
      const at::Tensor tia = at::tensor(ia).to(at::kCUDA), tib = at::tensor(ib).to(at::kCUDA);
      const at::Tensor tcf = at::tensor(cf).to(at::kCUDA);
      const at::Tensor x = at::randn({X, n, d}, o.dtype(dt));
      const at::Tensor rs = at::rand({X * n}, o.dtype(at::kFloat)) + 0.5;
      const at::Tensor y = at::randn({X, n, E}, o.dtype(at::kBFloat16));
      const at::Tensor H = (at::randn({X, D2, E}, o.dtype(at::kFloat)) * 0.1).to(at::kBFloat16);
      const at::Tensor decay = at::rand({X}, o.dtype(at::kFloat));
      const at::Tensor H0 = at::randn({BH, D2, E}, o.dtype(at::kFloat));
      at::Tensor xf = x.to(at::kFloat).requires_grad_(true);
      const at::Tensor phi = xf.index_select(2, tia) * xf.index_select(2, tib) * tcf * rs.view({X, n, 1});
      // scan references: H_{k+1} = decay_k H_k + S_k (forward), A_{k-1} = S_k + decay_k A_k (backward)
      const at::Tensor Sk = at::bmm(phi.detach().transpose(1, 2), y.to(at::kFloat)).view({BH, N, D2, E});
      const at::Tensor dec = decay.view({BH, N, 1, 1});
      std::vector<at::Tensor> hs, as(N);
      at::Tensor h = H0, acc = H0;
      for (int64_t k = 0; k < N; ++k) {
        hs.push_back(h);
        h = dec.select(1, k) * h + Sk.select(1, k);
      }
      // the backward reads the bf16 states: dL's reference dots them (its sums over D2 E products cancel, so fp32
      // states in the reference would differ from the kernel's input by more than the tolerance in some draws)
      const at::Tensor Hs_ref = at::stack(hs, 1).to(at::kBFloat16);
      at::Tensor dL_ref = at::zeros({BH, N}, o.dtype(at::kFloat));
      for (int64_t k = N - 1; k >= 0; --k) {
        as[k] = acc;
        dL_ref.select(1, k).copy_(decay.view({BH, N}).select(1, k) *
                                  (Hs_ref.select(1, k).to(at::kFloat) * acc).sum({1, 2}));
        acc = Sk.select(1, k) + dec.select(1, k) * acc;
      }
      at::Tensor Hs = at::empty({BH, N, D2, E}, o.dtype(at::kBFloat16)), fin = at::empty({BH, D2, E}, o.dtype(at::kFloat));
      pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, y.view({BH, N * n, E}), decay, H0, N, Hs, fin);
      at::Tensor An = at::empty_like(Hs), dL = at::zeros({BH * N}, o.dtype(at::kFloat)), dH0 = at::empty_like(fin);
      pa::cuda::sympow2_scan_backward(x.view({BH, N * n, d}), rs, y.view({BH, N * n, E}), decay, Hs_ref, H0, N, An,
                                      dL, dH0);
      const double fwd = std::max(rel(Hs, at::stack(hs, 1)), rel(fin, h));
      const double bwd_an = rel(An, at::stack(as, 1)), bwd_h0 = rel(dH0, acc), bwd_dl = rel(dL.view({BH, N}), dL_ref);
      const double bwd = std::max({bwd_an, bwd_h0, bwd_dl});
      // products against a given state
      const at::Tensor B_ref = at::bmm(phi, H.to(at::kFloat));
      const at::Tensor dphi = at::bmm(y.to(at::kFloat), H.to(at::kFloat).transpose(1, 2));
      const at::Tensor u_ref = (phi * dphi).sum(2).reshape({X * n});
      const at::Tensor dx_ref = torch::autograd::grad({(phi * dphi).sum()}, {xf})[0];
      const at::Tensor B = pa::cuda::sympow2_query(x, rs, H);
      auto [dx, u] = pa::cuda::sympow2_grad(x, rs, y, H);
      // the layout maps: to_official(to_internal(S)) = S (their composition is the identity)
      const at::Tensor ext = at::randn({2, pa::state_dim(d, 2), E}, o.dtype(at::kFloat));
      const double trip = rel(pa::cuda::sympow2_to_official(pa::cuda::sympow2_to_internal(ext, d), d), ext);
      // values given without their extended columns (bf16): the kernels make [v | 1 | 0] themselves, and must
      // match the same rows given whole
      double ones = 0;
      if (dt == at::kBFloat16) {
        const at::Tensor ve = y.narrow(2, 0, d).contiguous();
        const at::Tensor vx = at::cat({ve, at::ones({X, n, 1}, ve.options()), at::zeros({X, n, E - d - 1}, ve.options())}, 2);
        at::Tensor Hs1 = at::empty_like(Hs), Hs2 = at::empty_like(Hs), f1 = at::empty_like(fin), f2 = at::empty_like(fin);
        pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, ve.view({BH, N * n, d}), decay, H0, N, Hs1, f1);
        pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, vx.view({BH, N * n, E}), decay, H0, N, Hs2, f2);
        auto [dx1, u1] = pa::cuda::sympow2_grad(x, rs, ve, H);
        auto [dx2, u2] = pa::cuda::sympow2_grad(x, rs, vx, H);
        ones = std::max({rel(Hs1, Hs2), rel(f1, f2), rel(dx1, dx2), rel(u1, u2)});
      }
      Outcome oc;
      oc.y = fwd;
      oc.dq = bwd;
      oc.dk = rel(B, B_ref);
      oc.dv = std::max(rel(dx, dx_ref), rel(u, u_ref));
      oc.dg = std::max(trip, ones);  // both exact up to fp32 rounding
      const double tol = 1e-2;
      oc.ok = oc.y < tol && oc.dq < tol && oc.dk < tol && oc.dv < tol && oc.dg < 1e-6;
      char id[120];
      std::snprintf(id, sizeof id, "sympow2-kernels-d%ld-%s (scan fwd, scan bwd, B, dx+u, maps + ones)", d, c10::toString(dt));
      report(id, oc, Tol{tol, tol});
      if (!oc.ok) {
        std::printf("     scan bwd: An %.2e  dH0 %.2e  dL %.2e; dL / ref:", bwd_an, bwd_h0, bwd_dl);
        const at::Tensor a = dL.cpu(), r = dL_ref.reshape({BH * N}).cpu();
        for (int64_t i = 0; i < BH * N; ++i) std::printf(" %.4g/%.4g", a[i].item<double>(), r[i].item<double>());
        std::printf("\n");
      }
    }
}

}  // namespace harness

namespace harness {

// The query products of `set` against the sm_80 kernel's on the same inputs, x in the caller's layout through a
// chunk map (b = 1, t = 300, h = 2, g = 2, c = 128: X = 6 blocks of n = 256 rows, the last chunk of each head 44
// tokens, the rest of its rows padding), and the combination of each set against ATen (fp64) from the sm_80 B.
void check_query_set(const std::string& set) {
  namespace pc = pa::cuda;
  const auto o = at::TensorOptions().device(at::kCUDA);
  const auto f32 = o.dtype(at::kFloat);
  for (int64_t d : {64, 128})
    for (auto dt : {at::kBFloat16, at::kHalf}) {
      const int64_t b = 1, t = 300, h = 2, g = 2, c = 128, N = (t + c - 1) / c, X = b * h * N, n = c * g;
      const int64_t E = d + 8, e = d, D2 = pc::sympow2_dim(d);
      const at::Tensor x = at::randn({b, t, h * g, d}, o.dtype(dt));
      const pc::Operand xo = pc::Operand::caller(x, h, g, c);
      const at::Tensor rs = at::rand({X * n}, f32) + 0.5;
      const at::Tensor H = (at::randn({X, D2, E}, f32) * 0.1).to(at::kBFloat16);
      // the combination's row terms: |r - m| <= 2 (wa >= e^-2) and l = 1000 + U(0, 1), so that den = l wa + B[e] ws
      // (|B[e]| ~ 6-13 here) stays far from 0; block 0 an empty state (mu = -inf)
      const at::Tensor numA = at::randn({X, n, e}, f32);
      const at::Tensor l = at::rand({X * n}, f32) + 1000.0;
      const at::Tensor m = (at::rand({X * n}, f32) - 0.5) * 1.5;
      const at::Tensor gc = -at::rand({X, c}, f32) * 0.5;
      at::Tensor mu = ((at::rand({X}, o.dtype(at::kDouble)) - 0.5) * 1.5);
      mu.narrow(0, 0, 1).fill_(-INFINITY);
      struct Out {
        at::Tensor B, Be, y, den, yo;
      };
      auto run = [&](const std::string& which) {
        const ForceKernels force(which);
        Out r;
        r.B = pc::sympow2_query(xo, rs, H);
        r.Be = pc::sympow2_query(xo, rs, H, e);
        r.y = at::full({X, n, e}, NAN, f32);
        r.den = at::full({X * n}, NAN, f32);
        r.yo = at::full({b, t, h * g, e}, NAN, o.dtype(dt));
        pc::sympow2_query_combine(xo, rs, H, numA, l, m, gc, mu, r.y, r.den, pc::Operand::caller(r.yo, h, g, c));
        return r;
      };
      const Out s80 = run("sm80"), ss = run(set);
      // ATen from the sm_80 B: d = float((gc - m) + mu) as state_scale.cuh forms it (gc - m in fp32, + mu in fp64)
      const at::Tensor gcr = gc.repeat_interleave(g, 1).reshape({X * n});
      const at::Tensor dd = ((gcr - m).to(at::kDouble) + mu.repeat_interleave(n)).to(at::kFloat).to(at::kDouble);
      const at::Tensor wa = at::exp(at::clamp_max(-dd, 0.0)).view({X, n, 1});
      const at::Tensor ws = at::exp(at::clamp_max(dd, 0.0)).view({X, n, 1});
      const at::Tensor B = s80.B.to(at::kDouble);
      const at::Tensor den_ref = l.to(at::kDouble).view({X, n, 1}) * wa + B.narrow(2, e, 1) * ws;
      const at::Tensor y_ref = (numA.to(at::kDouble) * wa + B.narrow(2, 0, e) * ws) / den_ref;
      // y in the caller's layout: block (bh, chunk), row r -> token chunk c + r / g, head bh % h, member r % g
      auto caller = [&](const at::Tensor& y) {
        return y.view({b, h, N, c, g, e}).permute({0, 2, 3, 1, 4, 5}).reshape({b, N * c, h * g, e}).narrow(1, 0, t);
      };
      for (const std::string& which : {std::string("sm80"), set}) {
        const Out& r = which == "sm80" ? s80 : ss;
        Outcome q{};
        q.y = rel(r.y, y_ref);
        q.dq = rel(r.den, den_ref.view({X * n}));
        q.dk = rel(r.yo, caller(r.y).to(dt));  // the kernel's rounding of its own y: exact
        q.ok = q.y < 1e-5 && q.dq < 1e-5 && q.dk < 1e-6;
        char id[160];
        std::snprintf(id, sizeof id, "sympow2-combine-d%ld-%s-%s (y, den vs ATen from B; y out vs y)", d,
                      c10::toString(dt), which.c_str());
        report(id, q, Tol{1e-5, 1e-6});
      }
      Outcome q{};
      q.y = rel(ss.B, s80.B);
      q.dq = rel(ss.Be, s80.Be);
      q.dk = std::max({rel(ss.y, s80.y), rel(ss.den, s80.den), rel(ss.yo, s80.yo)});
      q.ok = q.y < 1e-5 && q.dq < 1e-5 && q.dk < 1e-5;
      char id[160];
      std::snprintf(id, sizeof id, "sympow2-query-d%ld-%s-%s vs sm80 (B, first e, combination)", d, c10::toString(dt),
                    set.c_str());
      report(id, q, Tol{1e-5, 1e-5});
    }
}

}  // namespace harness

namespace harness {

// The gradients through phi (sympow2_grad) of `set` against the sm_80 kernel's on the same inputs, and both against
// ATen (phi in fp32 from the internal layout, dx by autograd, u = phi' . dphi), on the operands the op passes: the
// queries' side (x in the caller's layout through a chunk map, b = 1, t = 300, h = 2, g = 2, c = 128: X = 6 blocks
// of n = 256 rows, the last chunk of each head 44 tokens; y = dB [X, n, E] bf16; row scales) and the keys' side
// (x and the values v through chunk maps of the caller's layout, g = 1: n = 128 rows, [v | 1 | 0] made in the
// kernel; no row scales).
void check_grad_set(const std::string& set) {
  namespace pc = pa::cuda;
  const auto o = at::TensorOptions().device(at::kCUDA);
  const auto f32 = o.dtype(at::kFloat);
  for (int64_t d : {64, 128})
    for (auto dt : {at::kBFloat16, at::kHalf})
      for (bool keys : {false, true}) {
        const int64_t b = 1, t = 300, h = 2, g = keys ? 1 : 2, c = 128, N = (t + c - 1) / c, X = b * h * N, n = c * g;
        const int64_t E = d + 8, nb = d / 16, D2 = pc::sympow2_dim(d);
        const at::Tensor x = at::randn({b, t, h * g, d}, o.dtype(dt));
        const pc::Operand xo = pc::Operand::caller(x, h, g, c);
        const at::Tensor rs = keys ? at::Tensor() : at::rand({X * n}, f32) + 0.5;
        const at::Tensor v = at::randn({b, t, h, d}, o.dtype(at::kBFloat16));
        const at::Tensor dB = at::randn({X, n, E}, o.dtype(at::kBFloat16));
        const pc::Operand yo = keys ? pc::Operand::caller(v, h, 1, c) : pc::Operand{dB};
        const at::Tensor H = (at::randn({X, D2, E}, f32) * 0.1).to(at::kBFloat16);
        auto run = [&](const std::string& which) {
          const ForceKernels force(which);
          return pc::sympow2_grad(xo, rs, yo, H);
        };
        const auto [dx80, u80] = run("sm80");
        const auto [dxs, us] = run(set);
        // ATen: the rows in the compute layout (block (bh, chunk), row r = token chunk c + r / g, member r % g;
        // tokens >= t zeros), y likewise ([v | 1 | 0] on the keys' side, zeros past t)
        auto blocks = [&](const at::Tensor& a, int64_t gg) {
          const int64_t w = a.size(-1);
          const at::Tensor p = at::constant_pad_nd(a, {0, 0, 0, 0, 0, N * c - t});
          return p.view({b, N, c, h, gg, w}).permute({0, 3, 1, 2, 4, 5}).reshape({X, c * gg, w});
        };
        at::Tensor xf = blocks(x, g).to(at::kFloat).requires_grad_(true);
        at::Tensor yf = dB.to(at::kFloat);
        if (keys) {
          const at::Tensor ve = at::cat({v, at::ones({b, t, h, 1}, v.options()), at::zeros({b, t, h, 7}, v.options())}, 3);
          yf = blocks(ve, 1).to(at::kFloat);
        }
        std::vector<int64_t> ia, ib;
        std::vector<float> cf;
        for (int64_t A = 0; A < nb; ++A)
          for (int64_t a = 0; a < 16; ++a)
            for (int64_t B = A; B < nb; ++B)
              for (int64_t bb = 0; bb < 16; ++bb) {
                ia.push_back(16 * A + a);
                ib.push_back(16 * B + bb);
                cf.push_back(A == B ? 1.f : std::sqrt(2.f));
              }
        at::Tensor phi = xf.index_select(2, at::tensor(ia).to(at::kCUDA)) *
                         xf.index_select(2, at::tensor(ib).to(at::kCUDA)) * at::tensor(cf).to(at::kCUDA);
        if (rs.defined()) phi = phi * rs.view({X, n, 1});
        const at::Tensor dphi = at::bmm(yf, H.to(at::kFloat).transpose(1, 2));
        const at::Tensor u_ref = (phi * dphi).sum(2).detach().reshape({X * n});
        const at::Tensor dx_ref = torch::autograd::grad({(phi * dphi).sum()}, {xf})[0];
        Outcome q{};
        q.y = rel(dxs, dx80);                       // dx against the sm_80 kernel's
        q.dq = rel(us, u80);                        // u likewise
        q.dk = std::max(rel(dxs, dx_ref), rel(us, u_ref));  // against ATen
        q.dv = std::max(rel(dx80, dx_ref), rel(u80, u_ref));
        q.ok = q.y < 1e-6 && q.dq < 1e-6 && q.dk < 1e-4 && q.dv < 1e-4;
        char id[180];
        std::snprintf(id, sizeof id, "sympow2-grad-d%ld-%s-%s-%s vs sm80 (dx, u; both vs ATen)", d, c10::toString(dt),
                      keys ? "keys" : "queries", set.c_str());
        report(id, q, Tol{1e-6, 1e-4});
      }
}

// The magnitudes' max-abs kernel (cuda/rows/max_abs.cu) against ATen's amax of |x|, bitwise: rows of 16-byte
// vectors and odd widths, the caller's strides (a transposed view), a NaN in one row, every 16-bit dtype and fp32.
void check_max_abs() {
  const auto o = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t w : {16, 64, 128, 17, 40})
      for (bool strided : {false, true}) {
        const int64_t b = 2, t = 157, H = 3;
        at::Tensor x = at::randn({b, t, H, w}, o.dtype(dt)) * 3;
        if (strided) x = at::randn({b, H, t, w}, o.dtype(dt)).transpose(1, 2);  // [b, t, H, w], head-major memory
        x.select(1, 100).select(1, 1).select(1, w / 2).fill_(std::nan(""));
        const at::Tensor ref_rows = x.abs().to(at::kFloat).amax({3}, true);
        const at::Tensor ref_heads = x.abs().to(at::kFloat).amax({1, 3}, true);
        const at::Tensor rows = power_attention::cuda::row_max_abs(x), heads = power_attention::cuda::head_max_abs(x);
        const auto same = [](const at::Tensor& a, const at::Tensor& r) {
          return a.sizes() == r.sizes() && at::isnan(a).equal(at::isnan(r)) &&
                 at::where(at::isnan(r), at::zeros_like(r), a).equal(at::where(at::isnan(r), at::zeros_like(r), r));
        };
        const bool ok = same(rows, ref_rows) && same(heads, ref_heads);
        Outcome oc{ok, ok ? 0.0 : 1.0, 0, 0, 0, 0};
        report(std::string("max-abs ") + (dt == at::kFloat ? "fp32" : dt == at::kHalf ? "fp16" : "bf16") + " w" +
                   std::to_string(w) + (strided ? " strided" : ""),
               oc, Tol{0, 0});
      }
}

// The extremes gathered by the max-abs passes (power_attention::cuda::extremes) against ATen's reductions of the same
// qa, ka and log gates, bitwise: q and k of one dtype, rows of 16-byte vectors and odd widths, the caller's strides,
// zero rows and an all-zero q (the smallest positive then inf), a NaN in q, gates of both signs at a transposed
// stride, a NaN gate.
void check_extremes() {
  const auto o = at::TensorOptions().device(at::kCUDA);
  for (auto dt : {at::kBFloat16, at::kHalf, at::kFloat})
    for (int64_t w : {64, 40})
      for (int kind = 0; kind < 4; ++kind) {
        const int64_t b = 2, t = 157, h = 3, g = 2;
        at::Tensor q = at::randn({b, t, h * g, w}, o.dtype(dt)) * 3;
        at::Tensor k = at::randn({b, h, t, w}, o.dtype(dt)).transpose(1, 2) * 0.01;
        at::Tensor lg = at::log_sigmoid(at::randn({b, h, t}, o.dtype(at::kFloat))).transpose(1, 2);  // [b, t, h]
        if (kind == 1) {
          q.select(1, 3).zero_();
          k.select(2, 1).zero_();  // one head of zeros
          lg.select(1, 50).fill_(2.5);
        }
        if (kind == 2) {
          q.zero_();
          q.select(1, 100).select(1, 1).select(1, w / 2).fill_(std::nan(""));
          lg = lg.contiguous();
        }
        if (kind == 3) lg.select(1, 7).select(1, 2).fill_(std::nan(""));
        const bool gated = !(kind == 2 && w == 40);
        const at::Tensor lgx = gated ? lg : at::Tensor();
        const std::vector<at::Tensor> x = power_attention::cuda::extremes(q, k, lgx);
        const at::Tensor qa = q.abs().to(at::kFloat).amax({3}, true), ka = k.abs().to(at::kFloat).amax({1, 3}, true);
        const at::Tensor inf = at::full({}, std::numeric_limits<double>::infinity(), qa.options());
        std::vector<at::Tensor> parts = {qa.max(), at::where(qa > 0, qa, inf).min(), ka.max(),
                                         at::where(ka > 0, ka, inf).min()};
        if (gated) parts.push_back(lg.max());
        const at::Tensor ref = at::stack(parts).to(at::kDouble).cpu(), got = x[2].cpu();
        const auto same = [](const at::Tensor& a, const at::Tensor& r) {
          return a.sizes() == r.sizes() && at::isnan(a).equal(at::isnan(r)) &&
                 at::where(at::isnan(r), at::zeros_like(r), a).equal(at::where(at::isnan(r), at::zeros_like(r), r));
        };
        const bool ok = same(got, ref) && same(x[0], qa) && same(x[1], ka);
        if (!ok) std::printf("extremes: got %s\nwanted %s\n", c10::str(got).c_str(), c10::str(ref).c_str());
        Outcome oc{ok, ok ? 0.0 : 1.0, 0, 0, 0, 0};
        report(std::string("extremes ") + (dt == at::kFloat ? "fp32" : dt == at::kHalf ? "fp16" : "bf16") + " w" +
                   std::to_string(w) + " kind" + std::to_string(kind) + (gated ? " gated" : ""),
               oc, Tol{0, 0});
      }
}

}  // namespace harness

