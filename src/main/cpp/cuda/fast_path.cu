// fast_path.cu: the CUDA fast path (fast_path.h), forward and backward of both forms, as a chain of stage calls on
// the caller's tensors:
//
//   stage                          forward                              backward
//   in-chunk / quadratic attention tile_forward (scores in registers)   tile_backward, adding the state side's parts
//   chunk states + gated prefix    sympow2_scan_forward (phi on the fly) sympow2_scan_backward (+ the queries' term)
//   queries against the states     sympow2_query_combine (+ the        sympow2_grad, sympow2_query
//                                  combination in its epilogue)
//   combination, gates             chunk_gates                          combine_bwd, chunk_gate_grad
//
// q, k, v, dy, y and the gradients of q, k, v are the caller's [b, t, heads, w] tensors, read and written through
// their row maps; the gates, row terms and states are the path's own (compute layout, fp32; states bf16 in the
// degree-2 internal layout, sympow2.h, converted at the boundary).
#include "cuda/fast_path.h"

#include "compute_layout.h"
#include "cuda/attention/attention_tile.h"
#include "cuda/common/ext_state.h"
#include "cuda/common/operand.h"
#include "cuda/common/side_stream.h"
#include "cuda/common/traits.h"
#include "cuda/rows/rows.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace fast {
namespace {

TileProblem tile_problem(const Problem& pr, int64_t X, int64_t C) {
  TileProblem tp;
  tp.X = X, tp.R = C * pr.g, tp.C = C, tp.g = pr.g, tp.p = static_cast<int>(pr.p), tp.scale = pr.scale;
  return tp;
}

// The caller's tensors as operands: blocks are heads (the quadratic form) or chunks of c tokens.
struct Inputs {
  Operand q, k, v;
};
Inputs operands(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t c) {
  return {Operand::caller(q, pr.h, pr.g, c), Operand::caller(k, pr.h, 1, c), Operand::caller(v, pr.h, 1, c)};
}

// Extended states (ext_state.h) between sympow.h's layout (the API's) and the degree-2 internal one.
at::Tensor to_internal(const at::Tensor& ext, int64_t d) {
  return ext.defined() ? sympow2_to_internal(ext, d).contiguous() : ext;
}
at::Tensor to_official(const at::Tensor& ext2, int64_t d) { return sympow2_to_official(ext2, d); }

// The extended values [v | 1 | 0] of the states' products: v itself when bf16 (the degree-2 kernels make the other
// columns); fp16 values in bf16 [BH N, c, E], rows past t zero.
Operand values(const Problem& pr, const Operand& v) {
  if (v.data.scalar_type() == at::kBFloat16) return v;
  const int64_t E = ext_cols(pr.e);  // [b, t, h, e] -> [b h, T, E]
  at::Tensor out = at::zeros({pr.b, pr.h, pr.T, E}, v.data.options().dtype(at::kBFloat16));
  out.narrow(2, 0, pr.t).narrow(3, 0, pr.e).copy_(v.data.permute({0, 2, 1, 3}));
  out.select(3, pr.e).fill_(1);
  return out.view({pr.BH * (pr.T / pr.chunk), pr.chunk, E});
}
// A scan's operand: one head a block ([BH, N rows, w]) in a compute layout; a mapped one as it is.
Operand per_head(const Operand& x, int64_t BH) {
  return x.mapped() ? x : Operand(x.data.view({BH, -1, x.data.size(-1)}));
}

// ---------------------------------------------------------------------------------------------------------------
// The quadratic form: y in the input dtype in the caller's layout and, when `save`, in fp32 in the compute layout for
// the backward's row terms (see combine_backward).
// ---------------------------------------------------------------------------------------------------------------

Forward quadratic_forward(const Problem& pr, const Inputs& in, const at::Tensor& lg, bool save) {
  const auto ao = in.q.data.options().dtype(at::kFloat);
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, e = pr.e;
  Forward f;
  f.den = at::empty({BH, T_ * g}, ao);
  f.rowmax = at::empty({BH, T_ * g}, ao);
  if (save) f.y = at::empty({BH, T_, g, e}, ao);
  f.out = at::empty({pr.b, pr.t, pr.h * g, e}, in.q.data.options());
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  tile_forward(tile_problem(pr, BH, T_), in.q, in.k, in.v, G, f.y, f.rowmax, f.den, true,
               Operand::caller(f.out, pr.h, g));
  return f;
}

Grads quadratic_backward(const Problem& pr, const Inputs& in, const at::Tensor& lg, const Forward& saved,
                         const at::Tensor& dy, const Needs& needs) {
  TORCH_CHECK(saved.y.defined(), "power_full: internal: the quadratic backward needs the saved y");
  const at::Tensor &q = in.q.data, &k = in.k.data, &v = in.v.data;
  const auto ao = q.options().dtype(at::kFloat);
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, R = T_ * g;
  const bool gates = lg.defined() && needs.g;
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  // the row terms: the combination's backward without states (rf = 1 / l, dd = -(dy . y) / l), dy through the
  // quadratic form's map (blocks are heads of R rows)
  at::Tensor rf = at::empty({BH * R}, ao), dd = at::empty({BH * R}, ao), own = at::empty({BH * R}, ao);
  const Operand dyr = Operand::caller(dy, pr.h, g);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "power_full_row_terms", [&] {
    combine_bwd<scalar_t, float>(dyr, saved.y, saved.den.data_ptr<float>(), nullptr, false, StateRows{}, at::Tensor(),
                                 at::Tensor(), rf.data_ptr<float>(), dd.data_ptr<float>(), BH * R, pr.e, 0, R, in.v, g,
                                 own.data_ptr<float>());
  });
  Grads gr;
  if (needs.q) gr.q = at::empty_like(q);
  const at::Tensor dk = needs.k || needs.v ? at::empty_like(k) : at::Tensor();  // (made together)
  const at::Tensor dv = needs.k || needs.v ? at::empty_like(v) : at::Tensor();
  at::Tensor rowdz = gates ? at::empty({BH * R}, ao) : at::Tensor();
  at::Tensor coldz = gates ? at::empty({BH * T_}, ao) : at::Tensor();
  const auto out = [&](const at::Tensor& x, int64_t gg) { return x.defined() ? Operand::caller(x, pr.h, gg) : Operand(); };
  tile_backward(tile_problem(pr, BH, T_), in.q, in.k, in.v, G, dyr, saved.rowmax, rf, dd, own, out(gr.q, g), out(dk, 1),
                out(dv, 1), at::Tensor(), at::Tensor(), at::Tensor(), rowdz, coldz);
  if (needs.k) gr.k = dk;
  if (needs.v) gr.v = dv;
  if (gates) {
    const at::Tensor dGt = rowdz.view({BH, T_, g}).sum(2).to(at::kDouble) - coldz.view({BH, T_}).to(at::kDouble);
    gr.lg = dGt.flip({1}).cumsum(1).flip({1}).to(lg.scalar_type());
  }
  return gr;
}

// ---------------------------------------------------------------------------------------------------------------
// The chunked form of degree 2 (SPEC §4): every chunk of every head at once.
// ---------------------------------------------------------------------------------------------------------------

void chunked_forward(const Problem& pr, const Inputs& in, const at::Tensor& lg, Forward& f, bool save,
                     const State& initial, bool want_final) {
  const at::Tensor& q = in.q.data;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = sympow2_dim(d), E = ext_cols(e);
  const auto ao = q.options().dtype(at::kFloat);
  const ChunkGates gt = chunk_gates(pr, lg, ao, initial_scale(initial, BH));

  // chunk states and the gated prefix in one pass, no per-chunk fp32 states (on the side stream), and at the same
  // time the in-chunk attention (on the current one)
  at::Tensor l = at::empty({X * R}, ao), numA = at::empty({X, R, e}, ao);
  at::Tensor Hs = at::empty({BH, N, D, E}, q.options().dtype(at::kBFloat16));
  const at::Tensor H0 = to_internal(state_ext(initial, E, at::kFloat), d);
  at::Tensor fin = want_final ? at::empty({BH, D, E}, ao) : at::Tensor();
  const Operand vals = per_head(values(pr, in.v), BH);
  SideStream side;
  side.run([&] { sympow2_scan_forward(in.k, gt.kf, vals, gt.alpha, H0, N, Hs, fin); });
  tile_forward(tile_problem(pr, X, c), in.q, in.k, in.v, gt.Gc, numA, f.rowmax, l);
  side.join();

  // queries against the state entering their chunk, the combination in the query kernel's epilogue, y in the
  // caller's layout
  at::Tensor y3 = f.y.view({X, R, e});
  f.out = at::empty({pr.b, pr.t, pr.h * g, e}, q.options());
  sympow2_query_combine(in.q, gt.qf, Hs.view({X, D, E}), numA, l, f.rowmax, gt.Gc, gt.mu, y3, f.den,
                        Operand::caller(f.out, pr.h, g, c));

  if (save) {
    f.states = Hs;
    f.logscale = gt.mu;
  }
  if (want_final) {
    const State st = state_split(to_official(fin, d), e);
    f.final_state = st.S;
    f.final_norm = st.s;
    f.final_logscale = gt.mu_final;
  }
}

template <typename T>
Grads chunked_backward(const Problem& pr, const Inputs& in, const at::Tensor& lg, const Forward& f,
                       const at::Tensor& dy, const Needs& needs, const State& d_final) {
  using A = float;
  const at::Tensor& q = in.q.data;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = sympow2_dim(d), E = ext_cols(e);
  const auto ao = q.options().dtype(at::kFloat);
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
  const Operand dyr = Operand::caller(dy, pr.h, g, c);
  const at::Tensor Hs = f.states.view({X, D, E});

  // y = num / den (the tile kernels take dy and rf, not dnum)
  at::Tensor dB = at::empty({X, R, E}, q.options().dtype(at::kBFloat16));
  at::Tensor ddenA = at::empty({X * R}, ao), rf = at::empty({X * R}, ao), own = at::empty({X * R}, ao);
  combine_bwd<T, A>(dyr, f.y, f.den.data_ptr<A>(), f.rowmax.data_ptr<A>(), true, state_rows(pr, gt), dB,
                    at::Tensor(), rf.data_ptr<A>(), ddenA.data_ptr<A>(), X * R, e, E, R, in.v, g, own.data_ptr<A>());
  // the gate gradient's parts (chunk_gate_grad): the state side's uq, uk, dLs; the tiles' rowdz, coldz
  at::Tensor dLs = gates ? at::zeros({X}, ao) : at::Tensor();
  at::Tensor uq_g, uk_g, rowdz, coldz;
  at::Tensor dq, dk, dv;  // the state side's parts, fp32 in the compute layout

  // the gated prefix, backwards (on the side stream): A_n = d loss / d (state leaving chunk n), the queries' direct
  // term phi(Q')^T dB folded into the reverse pass
  // (its inputs made on the current stream before the side stream is ordered after it)
  at::Tensor dH0, An, dfin;
  if (carry) {
    An = at::empty({BH, N, D, E}, q.options().dtype(at::kBFloat16));
    dfin = to_internal(state_ext(d_final, E, at::kFloat), d);
    if (needs.state) dH0 = at::empty({BH, D, E}, ao);
  }
  const at::Tensor dBh = dB.view({BH, N * R, E});
  SideStream side;
  if (carry) side.run([&] { sympow2_scan_backward(in.q, gt.qf, dBh, gt.alpha, f.states, dfin, N, An, dLs, dH0); });

  // at the same time, the queries against the state: B = phi(Q') H_n
  if (needs.q || gates) {
    auto [dxq, uq] = sympow2_grad(in.q, gt.qf, dB, Hs);
    if (needs.q) dq = dxq;
    if (gates) uq_g = uq;
  }
  side.join();

  if (carry) {
    // the states' inputs: S_ext = phi(K')^T [V | 1 | 0]
    if (key_side) {
      const at::Tensor A3 = An.view({X, D, E});
      if (needs.v) dv = sympow2_query(in.k, gt.kf, A3, e);  // [X, c, e]
      if (needs.k || gates) {
        auto [dxk, uk] = sympow2_grad(in.k, gt.kf, values(pr, in.v), A3);
        if (needs.k) dk = dxk;
        if (gates) uk_g = uk;
      }
    }
  }

  // in-chunk attention: the tile kernels add the state side's parts and write the sums in the caller's layout and
  // the input dtype
  if (gates) rowdz = at::empty({X * R}, ao), coldz = at::empty({X * c}, ao);
  const auto o = q.options();
  Grads gr;
  if (needs.q) gr.q = at::empty({pr.b, pr.t, pr.h * g, d}, o);
  const at::Tensor ok = needs.k || needs.v ? at::empty({pr.b, pr.t, pr.h, d}, o) : at::Tensor();
  const at::Tensor ov = needs.k || needs.v ? at::empty({pr.b, pr.t, pr.h, e}, o) : at::Tensor();
  const auto out = [&](const at::Tensor& x, int64_t gg) {
    return x.defined() ? Operand::caller(x, pr.h, gg, c) : Operand();
  };
  tile_backward(tile_problem(pr, X, c), in.q, in.k, in.v, gt.Gc, dyr, f.rowmax, rf, ddenA, own, out(gr.q, g),
                out(ok, 1), out(ov, 1), dq, dk, dv, rowdz, coldz);
  if (needs.k) gr.k = ok;
  if (needs.v) gr.v = ov;
  if (gates) gr.lg = chunk_gate_grad(pr, uq_g, uk_g, rowdz, coldz, at::Tensor(), dLs, ao).to(lg.scalar_type());
  if (needs.state) {
    const State st = state_split(to_official(dH0, d), e);
    gr.initial.S = st.S;
    gr.initial.s = st.s;
  }
  return gr;
}

}  // namespace

bool takes(const Problem& pr, at::ScalarType input) {
  const at::ScalarType ct = pr.precision.compute;
  return input == ct && tile_kernels_support(ct, pr.d, pr.e) &&
         (pr.chunk == 0 || (pr.p == 2 && sympow2_supported(ct, pr.d, pr.e)));
}

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial, bool want_final) {
  TORCH_CHECK(takes(pr, q.scalar_type()), "power_full: internal: the fast path does not take this problem");
  const at::Tensor lg = layout::gate_layout(log_g, pr);
  const Inputs in = operands(pr, q.contiguous(), k.contiguous(), v.contiguous(), pr.chunk);
  if (pr.chunk == 0) return quadratic_forward(pr, in, lg, save);
  const auto ao = q.options().dtype(at::kFloat);
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, ao);  // fp32 (see combine_backward)
  f.den = at::empty({pr.BH, pr.T * pr.g}, ao);
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, ao);
  chunked_forward(pr, in, lg, f, save, initial, want_final);
  return f;
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  TORCH_CHECK(takes(pr, q.scalar_type()), "power_full: internal: the fast path does not take this problem");
  const at::Tensor lg = layout::gate_layout(log_g, pr);
  const Inputs in = operands(pr, q.contiguous(), k.contiguous(), v.contiguous(), pr.chunk);
  const at::Tensor dyc = dy.defined() ? dy.to(q.scalar_type()).contiguous()
                                      : at::zeros({pr.b, pr.t, pr.h * pr.g, pr.e}, q.options());
  Grads gr;
  if (pr.chunk == 0) {
    gr = quadratic_backward(pr, in, lg, saved, dyc, needs);
  } else {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "power_full_cuda_backward", [&] {
      gr = chunked_backward<scalar_t>(pr, in, lg, saved, dyc, needs, d_final);
    });
  }
  if (gr.lg.defined()) gr.lg = layout::gate_unlayout(gr.lg, pr, log_g.scalar_type());
  return gr;
}

}  // namespace fast
}  // namespace cuda
}  // namespace power_attention
