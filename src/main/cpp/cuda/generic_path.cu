// generic_path.cu: the CUDA generic path (generic_path.h), forward and backward of both forms, every chunk of every
// head at once, in the compute layout:
//
//   stage                          kernels
//   in-chunk / quadratic attention cuBLAS products (S = Q K^T, P V, ...) and the weights kernels (cuda/generic)
//   chunk states + gated prefix    phi_forward + cuBLAS + the state scans (cuda/generic)
//   queries against the states     phi_forward + cuBLAS; phi_backward for the gradients
//   combination, gates             cuda/rows
//
// Precision: scores, weights' row sums, states and every reduction in A = opmath(T) (fp32, fp64 for fp64 compute);
// phi, the weights P and the state-side matrix operands in the compute dtype (bf16 for fp16, whose range the states
// can exceed: traits.h, PhiType). States in the extended layout of ext_state.h.
#include "cuda/generic_path.h"

#include "compute_layout.h"
#include "cuda/common/ext_state.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/traits.h"
#include "cuda/generic/generic.h"
#include "cuda/rows/rows.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace power_attention {
namespace cuda {
namespace generic {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// The quadratic form, in tiles of query tokens (scores and their gradients of about 256 MiB each).
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
void quadratic_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& lg, Forward& f) {
  using A = at::opmath_type<T>;
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  const at::Tensor qr = q.view({BH, T_ * g, d});
  const at::Tensor yr = f.y.view({BH, T_ * g, e});
  const int64_t tile = quadratic_tile(pr, sizeof(A));
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor qt = qr.narrow(1, i0 * g, R), kt = k.narrow(1, 0, i1), vt = v.narrow(1, 0, i1);
    const at::Tensor S = mm_acc(qt, kt.transpose(1, 2), acc);  // [BH, R, i1]
    const A* gp = ptr_or_null<A>(G);
    const auto t = tile_args<A>(pr, BH, R, i1, i0, gp ? gp + i0 : nullptr, T_, gp, T_);
    at::Tensor m = at::empty({BH, R}, S.options()), l = at::empty({BH, R}, S.options());
    const at::Tensor P = weights_forward<T, A>(t, S, m.data_ptr<A>(), l.data_ptr<A>());
    const at::Tensor numA = mm_acc(P, vt, acc);  // [BH, R, e]
    at::Tensor yt = at::empty({BH, R, e}, S.options()), den = at::empty({BH, R}, S.options());
    combine_fwd<A>(numA, l.data_ptr<A>(), m.data_ptr<A>(), at::Tensor(), StateRows{}, yt, den.data_ptr<A>());
    yr.narrow(1, i0 * g, R).copy_(yt);
    f.den.narrow(1, i0 * g, R).copy_(den);
    f.rowmax.narrow(1, i0 * g, R).copy_(m);
  }
}

template <typename T>
void quadratic_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                        Grads& gr) {
  using A = at::opmath_type<T>;
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const bool gates = lg.defined() && needs.g;
  const auto ao = q.options().dtype(acc);
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  const at::Tensor qr = q.view({BH, T_ * g, d}), yr = f.y.view({BH, T_ * g, e}), dyr = dy.view({BH, T_ * g, e});
  at::Tensor dG = gates ? at::zeros({BH, T_}, ao.dtype(at::kDouble)) : at::Tensor();
  at::Tensor dq = needs.q ? at::empty({BH, T_ * g, d}, ao) : at::Tensor();
  at::Tensor dk = needs.k ? at::zeros({BH, T_, d}, ao) : at::Tensor();
  at::Tensor dv = needs.v ? at::zeros({BH, T_, e}, ao) : at::Tensor();
  const int64_t tile = quadratic_tile(pr, 2 * sizeof(A));
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor qt = qr.narrow(1, i0 * g, R), kt = k.narrow(1, 0, i1), vt = v.narrow(1, 0, i1);
    const at::Tensor den = f.den.narrow(1, i0 * g, R).contiguous(), m = f.rowmax.narrow(1, i0 * g, R).contiguous();
    at::Tensor dnumA = at::empty({BH, R, e}, q.options()), ddenA = at::empty({BH, R}, ao), rf = at::empty({BH, R}, ao);
    at::Tensor own = at::empty({BH, R}, ao);
    const at::Tensor dyt = dyr.narrow(1, i0 * g, R).contiguous();
    combine_bwd<T, A>(dyt, yr.narrow(1, i0 * g, R).contiguous(), den.data_ptr<A>(), m.data_ptr<A>(), false, StateRows{},
                      at::Tensor(), dnumA, rf.data_ptr<A>(), ddenA.data_ptr<A>(), BH * R, e, 0, 0,
                      v.narrow(1, i0, i1 - i0).contiguous(), g, own.data_ptr<A>());
    const at::Tensor S = mm_acc(qt, kt.transpose(1, 2), acc);
    const at::Tensor dP = mm_acc(dyt, vt.transpose(1, 2), acc);
    double* gp = mut_ptr_or_null<double>(dG);
    const A* Gp = ptr_or_null<A>(G);
    const auto t = tile_args<A>(pr, BH, R, i1, i0, Gp ? Gp + i0 : nullptr, T_, Gp, T_);
    auto [P, dS] = weights_backward<T, A>(t, S, dP, rf.data_ptr<A>(), ddenA.data_ptr<A>(), own.data_ptr<A>(),
                                          m.data_ptr<A>(), gp ? gp + i0 : nullptr, gp);
    if (needs.v) dv.narrow(1, 0, i1).add_(mm_acc(P.transpose(1, 2), dnumA, acc));
    if (needs.q) dq.narrow(1, i0 * g, R).copy_(mm_acc(dS, kt, acc));
    if (needs.k) dk.narrow(1, 0, i1).add_(mm_acc(dS.transpose(1, 2), qt, acc));
  }
  if (needs.q) gr.q = dq.view({BH, T_, g, d}).to(q.scalar_type());
  if (needs.k) gr.k = dk.to(k.scalar_type());
  if (needs.v) gr.v = dv.to(v.scalar_type());
  if (gates) gr.lg = dG.flip({1}).cumsum(1).flip({1}).to(lg.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------------
// The chunked form (SPEC §4).
// ---------------------------------------------------------------------------------------------------------------

// The state side of the chunked form: phi in sympow.h's layout (phi_forward), multiplied with cuBLAS.
template <typename T>
struct StateSide {
  using A = at::opmath_type<T>;
  const Problem& pr;
  int64_t D;
  at::ScalarType acc, phi_dt;

  explicit StateSide(const Problem& p)
      : pr(p),
        D(sympow_dim(p.d, p.p)),
        acc(c10::CppTypeToScalarType<A>::value),
        phi_dt(c10::CppTypeToScalarType<typename PhiType<T>::type>::value) {}

  at::Tensor phi(const at::Tensor& x3, const at::Tensor& rs) const {
    const int64_t X = x3.size(0), n = x3.size(1), d = x3.size(2);
    return phi_forward<T, A>(x3.view({X * n, d}), rs, pr.p, phi_dt).view({X, n, D});
  }
  // S = phi'(x)^T y: x3 [X, n, d], y [X, n, E] -> [X, D, E] acc
  at::Tensor states(const at::Tensor& x3, const at::Tensor& rs, const at::Tensor& y) const {
    return mm_acc(phi(x3, rs).transpose(1, 2), y, acc);
  }
  // phi'(x) H: H [X, D, E] -> [X, n, E] acc, or its first cols columns (contiguous) when cols >= 0
  at::Tensor query(const at::Tensor& x3, const at::Tensor& rs, const at::Tensor& H, int64_t cols = -1) const {
    const at::Tensor B = mm_acc(phi(x3, rs), H, acc);
    return cols >= 0 ? B.narrow(2, 0, cols).contiguous() : B;
  }
  // {dx [X, n, d], u [X * n]} of phi'(x) . (y H^T)
  std::pair<at::Tensor, at::Tensor> grad(const at::Tensor& x3, const at::Tensor& rs, const at::Tensor& y,
                                         const at::Tensor& H, bool want_dx, bool want_u) const {
    const int64_t X = x3.size(0), n = x3.size(1), d = x3.size(2);
    const at::Tensor dphi = at::bmm(y, H.transpose(1, 2));  // [X, n, D]
    auto [dx, u] = phi_backward<T, A>(x3.view({X * n, d}), rs, dphi.view({X * n, D}), pr.p, want_dx, want_u);
    return {dx.defined() ? dx.view({X, n, d}) : dx, u};
  }
};

template <typename T>
void chunked_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final) {
  using A = at::opmath_type<T>;
  using TS = typename PhiType<T>::type;
  const StateSide<T> side(pr);
  const auto acc = side.acc;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = side.D, E = ext_cols(e);
  const auto ao = q.options().dtype(acc);
  const ChunkGates gt = chunk_gates(pr, lg, ao, initial_scale(initial, BH));
  const at::Tensor q3 = q.view({X, c * g, d}), k3 = k.view({X, c, d}), v3 = v.view({X, c, e});

  // in-chunk attention
  at::Tensor l = at::empty({X * R}, ao);
  const at::Tensor S = mm_acc(q3, k3.transpose(1, 2), acc);  // [X, R, c]
  const A* Gc = ptr_or_null<A>(gt.Gc);
  const auto t = tile_args<A>(pr, X, R, c, 0, Gc, c, Gc, c);
  const at::Tensor P = weights_forward<T, A>(t, S, f.rowmax.data_ptr<A>(), l.data_ptr<A>());
  const at::Tensor numA = mm_acc(P, v3, acc);  // [X, R, e]

  // chunk states and the gated prefix
  at::Tensor Hs = at::empty({BH, N, D, E}, q.options().dtype(side.phi_dt));
  const at::Tensor H0 = state_ext(initial, E, acc);
  at::Tensor fin = want_final ? at::empty({BH, D, E}, ao) : at::Tensor();
  const at::Tensor Sc = side.states(k3, gt.kf, values_ext(v3, side.phi_dt));  // [X, D, E]
  state_scan_forward<TS, A>(Sc, gt.alpha, H0, Hs, fin, BH, N, D * E);

  // queries against the state entering their chunk, then the combination
  const at::Tensor B = side.query(q3, gt.qf, Hs.view({X, D, E}));  // [X, R, E]
  combine_fwd<A>(numA, l.data_ptr<A>(), f.rowmax.data_ptr<A>(), B, state_rows(pr, gt), f.y.view({X, R, e}),
                 f.den.data_ptr<A>());

  if (save) {
    f.states = Hs;
    f.logscale = gt.mu;
  }
  if (want_final) {
    const State st = state_split(fin, e);
    f.final_state = st.S;
    f.final_norm = st.s;
    f.final_logscale = gt.mu_final;
  }
}

template <typename T>
void chunked_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                      const State& d_final, Grads& gr) {
  using A = at::opmath_type<T>;
  using TS = typename PhiType<T>::type;
  const StateSide<T> side(pr);
  const auto acc = side.acc;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = side.D, E = ext_cols(e);
  const auto ao = q.options().dtype(acc);
  const bool gates = lg.defined() && needs.g;
  const bool key_side = needs.k || needs.v || gates;
  const bool carry = key_side || needs.state;
  // the forward's log-scales again, from its mu_0 (the same kernels: the same values)
  TORCH_CHECK(f.logscale.defined() && f.logscale.scalar_type() == at::kDouble && f.logscale.is_contiguous() &&
                  f.logscale.numel() == BH * N,
              "power_full: internal: the chunked backward needs the forward's logscale [BH, N] fp64");
  InitialScale init;
  init.mu0 = f.logscale.data_ptr<double>();
  init.stride = N;
  const ChunkGates gt = chunk_gates(pr, lg, ao, init);
  const at::Tensor q3 = q.view({X, c * g, d}), k3 = k.view({X, c, d}), v3 = v.view({X, c, e});
  const at::Tensor dyr = dy.view({X, c * g, e});
  const at::Tensor Hs = f.states.view({X, D, E});

  // y = num / den
  at::Tensor dB = at::empty({X, R, E}, q.options().dtype(side.phi_dt));
  at::Tensor dnumA = at::empty({X, R, e}, q.options());
  at::Tensor ddenA = at::empty({X * R}, ao), rf = at::empty({X * R}, ao), own = at::empty({X * R}, ao);
  combine_bwd<T, A>(dyr, f.y, f.den.data_ptr<A>(), f.rowmax.data_ptr<A>(), true, state_rows(pr, gt), dB, dnumA,
                    rf.data_ptr<A>(), ddenA.data_ptr<A>(), X * R, e, E, 0, v3, g, own.data_ptr<A>());
  // the gate gradient's parts (chunk_gate_grad): the state side's uq, uk, dLs; the weights' dGc
  at::Tensor dLs = gates ? at::zeros({X}, ao) : at::Tensor();
  at::Tensor uq_g, uk_g, dGc;
  at::Tensor dq, dk, dv;

  // queries against the state: B = phi(Q') H_n
  if (needs.q || gates) {
    auto [dxq, uq] = side.grad(q3, gt.qf, dB, Hs, needs.q, gates);
    if (needs.q) dq = dxq;
    if (gates) uq_g = uq;
  }

  // the gated prefix, backwards: A_n = d loss / d (state leaving chunk n)
  at::Tensor dH0;
  if (carry) {
    at::Tensor An = at::empty({BH, N, D, E}, q.options().dtype(side.phi_dt));
    const at::Tensor dfin = state_ext(d_final, E, acc);
    if (needs.state) dH0 = at::empty({BH, D, E}, ao);
    const at::Tensor dHdir = side.states(q3, gt.qf, dB);  // [X, D, E]
    state_scan_backward<TS, A>(dHdir, gt.alpha, f.states, dfin, An, dLs, dH0, BH, N, D * E);

    // the states' inputs: S_ext = phi(K')^T [V | 1 | 0]
    if (key_side) {
      const at::Tensor A3 = An.view({X, D, E});
      if (needs.v) dv = side.query(k3, gt.kf, A3, e);  // [X, c, e]
      if (needs.k || gates) {
        auto [dxk, uk] = side.grad(k3, gt.kf, values_ext(v3, side.phi_dt), A3, needs.k, gates);
        if (needs.k) dk = dxk;
        if (gates) uk_g = uk;
      }
    }
  }

  // in-chunk attention
  if (gates) dGc = at::zeros({X, c}, ao.dtype(at::kDouble));  // gate gradients in fp64 (attention_weights_backward)
  const at::Tensor S = mm_acc(q3, k3.transpose(1, 2), acc);
  const at::Tensor dP = mm_acc(dyr, v3.transpose(1, 2), acc);
  const A* Gc = ptr_or_null<A>(gt.Gc);
  double* dg = mut_ptr_or_null<double>(dGc);
  const auto t = tile_args<A>(pr, X, R, c, 0, Gc, c, Gc, c);
  auto [P, dS] = weights_backward<T, A>(t, S, dP, rf.data_ptr<A>(), ddenA.data_ptr<A>(), own.data_ptr<A>(),
                                        f.rowmax.data_ptr<A>(), dg, dg);
  if (needs.v) {
    const at::Tensor part = mm_acc(P.transpose(1, 2), dnumA, acc);
    dv = dv.defined() ? dv + part : part;
  }
  if (needs.q) dq = dq.defined() ? dq + mm_acc(dS, k3, acc) : mm_acc(dS, k3, acc);
  if (needs.k) {
    const at::Tensor part = mm_acc(dS.transpose(1, 2), q3, acc);
    dk = dk.defined() ? dk + part : part;
  }

  // fp32: the layout copy back to the caller's converts
  if (needs.q) gr.q = dq.reshape({BH, pr.T, g, d});
  if (needs.k) gr.k = dk.reshape({BH, pr.T, d});
  if (needs.v) gr.v = dv.reshape({BH, pr.T, e});
  if (gates) gr.lg = chunk_gate_grad(pr, uq_g, uk_g, at::Tensor(), at::Tensor(), dGc, dLs, ao).to(lg.scalar_type());
  if (needs.state) {
    const State st = state_split(dH0, e);
    gr.initial.S = st.S;
    gr.initial.s = st.s;
  }
}


}  // namespace

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final) {
  const layout::Inputs x = layout::lay_out(pr, q, k, v, log_g);
  const auto acc = x.q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, x.q.options().dtype(acc));  // (see combine_backward)
  f.den = at::empty({pr.BH, pr.T * pr.g}, x.q.options().dtype(acc));
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, x.q.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.q.scalar_type(), "power_full_cuda_forward", [&] {
    if (pr.chunk > 0) {
      chunked_forward<scalar_t>(pr, x.q, x.k, x.v, x.g, f, save, initial, want_final);
    } else {
      quadratic_forward<scalar_t>(pr, x.q, x.k, x.v, x.g, f);
    }
  });
  f.out = layout::query_unlayout(f.y, pr, q.scalar_type());
  if (save) {  // the layout copies, kept: three fewer in the backward, for as much memory as the inputs
    f.q = x.q, f.k = x.k, f.v = x.v, f.lg = x.g;
  }
  return f;
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  const layout::Inputs x = saved.q.defined() ? layout::Inputs{saved.q, saved.k, saved.v, saved.lg}
                                             : layout::lay_out(pr, q, k, v, log_g);
  const at::Tensor dyl = layout::dy_layout(dy, pr, q.options()).contiguous();
  Grads gr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.q.scalar_type(), "power_full_cuda_backward", [&] {
    if (pr.chunk > 0) {
      chunked_backward<scalar_t>(pr, x.q, x.k, x.v, x.g, saved, dyl, needs, d_final, gr);
    } else {
      quadratic_backward<scalar_t>(pr, x.q, x.k, x.v, x.g, saved, dyl, needs, gr);
    }
  });
  return layout::grads_unlayout(gr, pr, needs, q, k, v, log_g);
}

}  // namespace generic
}  // namespace cuda
}  // namespace power_attention
