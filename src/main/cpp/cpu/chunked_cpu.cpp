// chunked_cpu.cpp: the CPU path's chunked form, one head (SPEC §4): chunks in order (forward) and in reverse
// (backward), the running state [D, e] in cache, every temporary one chunk's worth; states checkpointed for the
// backward (state_interval), phi recomputed rather than stored.
#include "cpu/cpu_simd.h"
#include "cpu/heads.h"
#include "cpu/phi_products_cpu.h"
#include "cpu/power_full_cpu.h"
#include "cpu/sympow_cpu.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace power_attention {
namespace cpu {
namespace {

// State checkpointing in the chunked backward (state_interval): the kept states and the recomputation buffers may
// take this share of the bytes of q, k, v and y together, and at least kStateBudgetFloor. 1.25: at d = e = 64
// (D = 2080) and 8 heads every second state is kept (interval 2: a recomputation for half the chunks; at 0.5 it was
// interval 5, four in five), the peak at t = 16384 about 2.3x LibTorch's SDPA's. The floor, 160 MiB counted at 8
// bytes an element (80 MiB of fp32 states): at t = 4096 chunk 256 (8 heads of D = 2080) every state is kept, at
// chunk 128 every second one.
constexpr double kStateBudgetShare = 1.25;
constexpr double kStateBudgetFloor = 160.0 * (1 << 20);


constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The gates of one chunk: the local inclusive cumsum Gc (fp64), L = Gc at its last token, and sigma =
// max_j (L - Gc_j) >= 0, the largest discount of a key to the chunk end (docs/SPEC.md, the stabilised chunked form).
struct ChunkGates {
  std::vector<double> Gc;  // [c] (all 0 without gating)
  double L = 0;
  double sigma = 0;
};

ChunkGates chunk_gates(const Problem& pr, const double* lg, int64_t t0) {
  const int64_t c = pr.chunk;
  ChunkGates cg;
  cg.Gc.assign(c, 0.0);
  if (lg == nullptr) return cg;
  double acc = 0, lo = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < c; ++j) {
    cg.Gc[j] = (acc += lg[t0 + j]);
    lo = std::min(lo, cg.Gc[j]);
  }
  cg.L = acc;
  cg.sigma = acc - lo;
  return cg;
}

// The state's log-scale across chunk n: mu' = max(mu + L, sigma), the decay alpha = exp(mu + L - mu') of the scaled
// state entering it (0 for an empty state, mu = -inf) and the keys' factors kf_j = exp(L - Gc_j - mu') <= 1.
struct StateStep {
  double mu_next = 0;
  double alpha = 0;
  at::Tensor kf;  // [c]
};

StateStep state_step(const ChunkGates& cg, double mu, const at::TensorOptions& o) {
  StateStep st;
  st.mu_next = mu == kNegInf ? cg.sigma : std::max(mu + cg.L, cg.sigma);
  st.alpha = mu == kNegInf ? 0.0 : std::exp(mu + cg.L - st.mu_next);
  const int64_t c = static_cast<int64_t>(cg.Gc.size());
  st.kf = at::empty({c}, o);
  AT_DISPATCH_FLOATING_TYPES(st.kf.scalar_type(), "power_full_cpu_state_step", [&] {
    scalar_t* kp = st.kf.data_ptr<scalar_t>();
    for (int64_t j = 0; j < c; ++j) kp[j] = static_cast<scalar_t>(std::exp(cg.L - cg.Gc[j] - st.mu_next));
  });
  return st;
}

// [x | 1]: a column of ones appended to x [n, e].
at::Tensor with_ones(const at::Tensor& x) {
  at::Tensor out = at::empty({x.size(0), x.size(1) + 1}, x.options());
  out.narrow(1, 0, x.size(1)).copy_(x);
  out.select(1, x.size(1)).fill_(1);
  return out;
}

// Whether the state products of degree 2 in fp32 run in phi_products_cpu.h's kernels (phi built in L1, no BLAS);
// otherwise phi is materialised per chunk ([c, D]) and the products are ATen's.
template <typename T>
bool fused_products(const Problem& pr) {
  if constexpr (std::is_same_v<T, float>) {
    return pr.p == 2 && phi_products_available();
  } else {
    return false;
  }
}

// The rows of phi(x) scaled by `scale` (one per row), for phi_products_cpu.h; x [n, d] with unit column stride.
inline PhiRows phi_rows(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& coef) {
  return PhiRows{x.data_ptr<float>(), x.stride(0), x.size(0), x.size(1), scale.data_ptr<float>(),
                 coef.data_ptr<float>()};
}

// The state is held augmented, A = [H | h] [D, e + 1]: the normaliser is the last column, so that one matrix
// product serves both (phi(Q) A gives B and b; the backward's products with A and its gradient likewise), with
// no separate passes over [c, D] or [D, e] for the normaliser.
//
// The state leaving a chunk from the one entering it: A <- alpha A + phi(K')^T [V | 1], with K' the keys scaled by
// kf (state_step). The forward and the backward's recomputation both run exactly this, so a recomputed state is
// the forward's to the bit. With `from` given (contiguous, as A) the state entering is `from` and A only receives
// the state leaving.
template <typename T>
void advance_state(const Problem& pr, const at::Tensor& kc, const at::Tensor& vc, const StateStep& st, at::Tensor& A,
                   const at::Tensor& from = at::Tensor()) {
  if constexpr (std::is_same_v<T, float>) {
    if (fused_products<T>(pr)) {
      const at::Tensor coef = sympow_coefficient_tensor(pr.d, pr.p, at::kFloat);
      phi_outer(phi_rows(kc, st.kf, coef), vc.data_ptr<float>(), vc.stride(0), nullptr, 0, pr.e, true,
                static_cast<float>(st.alpha), A.data_ptr<float>(), A.stride(0),
                from.defined() ? from.data_ptr<float>() : nullptr);
      return;
    }
  }
  if (from.defined()) A.copy_(from);
  const at::Tensor phiK = sympow_forward(kc, st.kf, pr.p);  // [c, D]
  A.addmm_(phiK.t(), with_ones(vc), st.alpha, 1.0);
}

// sum_i a_i b_i accumulated in fp64 (in lanes, so that it vectorises).
template <typename T>
POWER_ATTENTION_INLINE double dot_fp64_impl(const T* a, const T* b, int64_t n) {
  constexpr int64_t W = POWER_ATTENTION_LANES;
  double acc[W] = {};
  const int64_t nb = n / W * W;
  for (int64_t i0 = 0; i0 < nb; i0 += W)
    for (int64_t u = 0; u < W; ++u) acc[u] += static_cast<double>(a[i0 + u]) * static_cast<double>(b[i0 + u]);
  for (int64_t i = nb; i < n; ++i) acc[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  double sum = 0;
  for (int64_t u = 0; u < W; ++u) sum += acc[u];
  return sum;
}

POWER_ATTENTION_SIMD_VARIANTS(double, dot_fp64, (const T* a, const T* b, int64_t n), (a, b, n))

// The fused fp32 path's in-chunk products in the tile kernels (gemm_f32), the blocks above the causal diagonal
// skipped. Row r (token r / g) sees keys [0, r / g]; the weights (tile_weights_*) read a row's visible keys only and
// zero the rest of it, so S and dP are computed in blocks of kCausalBlock rows against the keys up to the block's
// last token, and the products with P and dS take a row block's visible keys (P V, dS K) or a key block's rows from
// its first token on (P^T dnum, dS^T Q).
constexpr int64_t kCausalBlock = 64;

// keys visible to some row of [0, r1): tokens [0, (r1 - 1) / g]
inline int64_t visible_keys(int64_t r1, int64_t g) { return (r1 - 1) / g + 1; }

// A row stride for the transposed operands: a multiple of 16 floats, odd (64-byte units), so that a panel's rows
// spread over the L1 sets.
inline int64_t transposed_ld(int64_t n) { return ((n + 15) / 16 * 16) | 16; }

// xt [w][ld] = x [n, w] (row stride ldx) transposed.
void transpose_to(const float* x, int64_t ldx, int64_t n, int64_t w, int64_t ld, float* xt) {
  transpose_f32(x, ldx, n, w, xt, ld);
}

// x's rows with unit row stride: x itself when contiguous, else copied into buf (the caller's layout puts a head's
// rows h w floats apart, 2 KiB for 8 heads of 64, and the products re-read a chunk's rows: at that stride they meet
// in a few L1 sets).
inline at::Tensor unit_rows(const at::Tensor& x, at::Tensor& buf) {
  if (x.is_contiguous()) return x;
  if (!buf.defined()) buf = at::empty(x.sizes(), x.options());
  if (x.dim() != 2 || x.stride(1) != 1) return buf.copy_(x);
  // row by row (ATen's copy_ of these [c, w] views took 3% of a t = 4096 call in TensorIterator's 2-d loop)
  const int64_t n = x.size(0), bytes = x.size(1) * static_cast<int64_t>(x.element_size());
  const int64_t ld = x.stride(0) * static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(buf.data_ptr());
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * bytes, src + i * ld, static_cast<size_t>(bytes));
  return buf;
}

// S [cg, c] (row stride c) = Q K^T on the causal blocks (bias: S + bias[r] on row r), Q [cg, w] (row stride ldq),
// Kt = K^T [w][ldkt].
void causal_scores(int64_t cg, int64_t c, int64_t g, int64_t w, const float* Q, int64_t ldq, const float* Kt,
                   int64_t ldkt, float* S, const float* bias) {
  for (int64_t r0 = 0; r0 < cg; r0 += kCausalBlock) {
    const int64_t r1 = std::min(cg, r0 + kCausalBlock);
    gemm_f32(r1 - r0, visible_keys(r1, g), w, Q + r0 * ldq, ldq, 1, Kt, ldkt, S + r0 * c, c, false,
             bias != nullptr ? bias + r0 : nullptr);
  }
}

// Out [cg, w] (+)= P X with P [cg, c] causal (zero above the diagonal), X [c, w] (row stride ldx).
void causal_rows(int64_t cg, int64_t c, int64_t g, int64_t w, const float* P, const float* X, int64_t ldx, float* Out,
                 int64_t ldo, bool acc) {
  for (int64_t r0 = 0; r0 < cg; r0 += kCausalBlock) {
    const int64_t r1 = std::min(cg, r0 + kCausalBlock);
    gemm_f32(r1 - r0, w, visible_keys(r1, g), P + r0 * c, c, 1, X, ldx, Out + r0 * ldo, ldo, acc, nullptr);
  }
}

// Out [c, w] (+)= P^T X with P [cg, c] causal, X [cg, w] (row stride ldx): key block [j0, j1) from row j0 g on.
void causal_keys(int64_t cg, int64_t c, int64_t g, int64_t w, const float* P, const float* X, int64_t ldx, float* Out,
                 int64_t ldo, bool acc) {
  for (int64_t j0 = 0; j0 < c; j0 += kCausalBlock) {
    const int64_t j1 = std::min(c, j0 + kCausalBlock), i0 = j0 * g;
    gemm_f32(j1 - j0, w, cg - i0, P + i0 * c + j0, 1, c, X + i0 * ldx, ldx, Out + j0 * ldo, ldo, acc, nullptr);
  }
}

// The augmented states of Forward::states / norms (views of one [BH, kept, D, e + 1] buffer).
at::Tensor augmented_states(const Forward& f) {
  const at::Tensor& S = f.states;
  return S.as_strided({S.size(0), S.size(1), S.size(2), S.size(3) + 1}, S.strides(), S.storage_offset());
}

// The checkpoint interval of N chunks with `kept` states kept: the smallest k with ceil(N / k) = kept (the forward
// keeps chunks 0, k, 2k, ... for that k; state_interval only returns such k).
int64_t checkpoint_interval(int64_t N, int64_t kept) {
  for (int64_t k = 1; k <= N; ++k)
    if ((N + k - 1) / k == kept) return k;
  TORCH_CHECK(false, "power_full: ", kept, " checkpoints do not fit ", N, " chunks");
}

// ---------------------------------------------------------------------------------------------------------------
// Chunked form, SPEC §4: per head, chunks in order (forward) and in reverse (backward).
// ---------------------------------------------------------------------------------------------------------------

// The combination of chunk n's rows (docs/SPEC.md, the stabilised chunked form): the in-chunk attention (numA, l,
// row max m relative to the gate reference gref) and the state term (B, b: sp phi(q) times the scaled state) meet
// at a shared row scale M_i = max(m_i + gref_i, r_i + log|b_i|), r_i = Gc_i + mu_n the state's log-factor, so that
// both weights wa = exp(m_i + gref_i - M_i) and ws = exp(r_i - M_i) are <= 1 (up to |b|). Kept as delta_i =
// M_i - gref_i (the saved row scale): the backward rebuilds ws from it and takes the tile's weights against it.
// b_i = b[i * ldb] (null: no state term); wa, ws [cg] are written.
template <typename T>
void combine_scales(int64_t cg, int64_t g, const std::vector<double>& Gc, double mu, const std::vector<double>& gref,
                    const T* m, const T* l, const T* b, int64_t ldb, T* delta, T* wa, T* ws) {
  for (int64_t i = 0; i < cg; ++i) {
    const double A = l[i] != T(0) ? static_cast<double>(m[i]) + gref[i] : kNegInf;
    const double r = mu == kNegInf ? kNegInf : Gc[i / g] + mu;
    double rho = r;
    if (r != kNegInf && b != nullptr && b[i * ldb] != T(0))
      rho = r + std::log(std::abs(static_cast<double>(b[i * ldb])));
    double M = std::max(A, rho);
    if (M == kNegInf) M = gref[i];
    delta[i] = static_cast<T>(M - gref[i]);
    const double Mc = static_cast<double>(delta[i]) + gref[i];  // the rounded scale, used alike in backward
    wa[i] = l[i] != T(0) ? static_cast<T>(std::exp(static_cast<double>(m[i]) - static_cast<double>(delta[i]))) : T(0);
    ws[i] = r == kNegInf ? T(0) : static_cast<T>(std::exp(r - Mc));
  }
}

// The chunk's rows of y and den at the shared row scale: den_i = l_i wa_i + b_i ws_i and
// y_i = (num_i wa_i + B_i ws_i) / den_i (0 where den_i = 0), with [B | b] = Bb [cg, e + 1] (null: no state term).
// num [cg, e], y [cg, e] and den [cg] contiguous.
template <typename T>
void combine_rows(int64_t cg, int64_t e, const T* num, const T* Bb, const T* l, const T* wa, const T* ws, T* y,
                  T* den) {
  for (int64_t i = 0; i < cg; ++i) {
    const T* ni = num + i * e;
    T* yi = y + i * e;
    T di = l[i] * wa[i];
    if (Bb != nullptr) di = di + Bb[i * (e + 1) + e] * ws[i];
    den[i] = di;
    const T inv = di == T(0) ? T(0) : T(1) / di;
    const T a = wa[i];
    if (Bb != nullptr) {
      const T s = ws[i];
      const T* Bi = Bb + i * (e + 1);
      for (int64_t j = 0; j < e; ++j) yi[j] = (ni[j] * a + Bi[j] * s) * inv;
    } else {
      for (int64_t j = 0; j < e; ++j) yi[j] = (ni[j] * a) * inv;
    }
  }
}

// The backward of y = num / den for the chunk's rows: dnum_i = dy_i / den_i and dden_i = -(dy_i . y_i) / den_i
// (both 0 where den_i = 0), into R [cg, e + 1] = [dnum | dden]; and own_i = dy_i . (v - y_i) / den_i at the row's own
// key (own_key_term), v the row's token's values (g rows a token, rows lv apart). dy, y [cg, e] and den [cg]
// contiguous.
template <typename T>
void output_grad_rows(int64_t cg, int64_t e, int64_t g, const T* dy, const T* y, const T* den, const T* v,
                      int64_t lv, T* R, T* own) {
  for (int64_t i = 0; i < cg; ++i) {
    const T inv = den[i] == T(0) ? T(0) : T(1) / den[i];
    const T* dyi = dy + i * e;
    const T* yi = y + i * e;
    const T* vi = v + (i / g) * lv;
    T* ri = R + i * (e + 1);
    double dot = 0, dvy = 0;
    for (int64_t j = 0; j < e; ++j) {
      ri[j] = dyi[j] * inv;
      dot += static_cast<double>(dyi[j]) * static_cast<double>(yi[j]);
      dvy += static_cast<double>(dyi[j]) * (static_cast<double>(vi[j]) - static_cast<double>(yi[j]));
    }
    ri[e] = -(static_cast<T>(dot) * inv);
    own[i] = static_cast<T>(dvy) * inv;
  }
}

}  // namespace

template <typename T>
void chunked_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final,
                          int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  const auto o = q.options();
  const at::Tensor qr = head_of(q, bh, 4).view({T_ * g, d}), kh = head_of(k, bh, 3), vh = head_of(v, bh, 3);
  const double* lp = lg.defined() ? lg[bh].data_ptr<double>() : nullptr;
  const at::Tensor yh = f.y[bh].view({T_ * g, e});
  // The state entering the chunk is exp(mu) * A, A = [H | h]; mu = -inf: empty.
  at::Tensor A = at::zeros({D, e + 1}, o);
  if (initial.S.defined()) {
    A.narrow(1, 0, e).copy_(initial.S[bh]);
    A.select(1, e).copy_(initial.s[bh]);
  }
  double mu = kNegInf;
  if (initial.S.defined()) mu = initial.logscale.defined() ? initial.logscale[bh].item<double>() : 0.0;
  std::vector<double> gref(cg);
  std::vector<T> wa(cg), ws(cg);
  // the chunk's temporaries, reused from chunk to chunk
  at::Tensor l = at::empty({cg}, o), m = at::empty({cg}, o);
  at::Tensor S = at::empty({cg, c}, o), num = at::empty({cg, e}, o), Bb = at::empty({cg, e + 1}, o);
  T* const yp = yh.data_ptr<T>();
  T* const denp = f.den[bh].data_ptr<T>();
  T* const deltap = f.rowmax[bh].data_ptr<T>();
  double* const lsp = save ? f.logscale[bh].data_ptr<double>() : nullptr;
  const at::Tensor qscale = at::full({cg}, sp, o);  // phi(Q) carries scale^p
  const bool fused = fused_products<T>(pr);
  const at::Tensor coef = fused ? sympow_coefficient_tensor(d, pr.p, at::kFloat) : at::Tensor();
  const int64_t interval = save ? checkpoint_interval(N, f.states.size(1)) : 1;
  const at::Tensor saved = save ? augmented_states(f)[bh] : at::Tensor();
  const int64_t ldt = transposed_ld(c);
  std::vector<float> kt(fused ? d * ldt : 0);  // K^T of the chunk
  at::Tensor qbuf, kbuf, vbuf;  // a chunk's rows when the inputs' rows are strided (unit_rows)
  // The state entering chunk n: A, or the checkpoint (every interval-th state; the backward recomputes the rest)
  // that the state step wrote it into.
  at::Tensor cur = A;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0);
    if (save) {
      if (n == 0) saved[0].copy_(A);
      lsp[n] = mu;
    }
    const at::Tensor qc = unit_rows(qr.narrow(0, t0 * g, cg), qbuf), kc = unit_rows(kh.narrow(0, t0, c), kbuf),
                     vc = unit_rows(vh.narrow(0, t0, c), vbuf);

    // in-chunk attention
    if (fused) {
      transpose_to(kc.data_ptr<float>(), kc.stride(0), c, d, ldt, kt.data());
      causal_scores(cg, c, g, d, qc.data_ptr<float>(), qc.stride(0), kt.data(), ldt, S.data_ptr<float>(), nullptr);
    } else {
      at::mm_out(S, qc, kc.t());
    }
    const double* G = lp == nullptr ? nullptr : gt.Gc.data();
    const auto sh = tile_shape<T>(pr, cg, c, 0, 0, G, G);
    tile_weights_forward<T>(sh, S.data_ptr<T>(), m.data_ptr<T>(), l.data_ptr<T>());
    tile_gate_reference<T>(sh, gref.data());
    if (fused) {
      causal_rows(cg, c, g, e, S.data_ptr<float>(), vc.data_ptr<float>(), vc.stride(0), num.data_ptr<float>(), e,
                  false);
    } else {
      at::mm_out(num, S, vc);
    }

    // queries against the scaled state entering the chunk: [B | b] = sp phi(Q) A
    const bool stateful = mu != kNegInf;
    if (stateful) {
      if (fused) {
        phi_apply(phi_rows(qc, qscale, coef), cur.data_ptr<float>(), e + 1, e, true, Bb.data_ptr<float>(), e + 1);
      } else {
        at::mm_out(Bb, sympow_forward(qc, qscale, pr.p), cur);  // [cg, e + 1]
      }
    }
    const T* Bp = stateful ? Bb.data_ptr<T>() : nullptr;

    // combine at the shared row scale
    combine_scales<T>(cg, g, gt.Gc, mu, gref, m.data_ptr<T>(), l.data_ptr<T>(), stateful ? Bp + e : nullptr, e + 1,
                      deltap + t0 * g, wa.data(), ws.data());
    combine_rows<T>(cg, e, num.data_ptr<T>(), Bp, l.data_ptr<T>(), wa.data(), ws.data(), yp + t0 * g * e,
                    denp + t0 * g);

    // the state leaving the chunk
    if (n + 1 < N || want_final) {
      const StateStep st = state_step(gt, mu, o);
      if (save && n + 1 < N && (n + 1) % interval == 0) {
        at::Tensor next = saved[(n + 1) / interval];
        advance_state<T>(pr, kc, vc, st, next, cur);
        cur = next;
      } else if (!cur.is_same(A)) {
        advance_state<T>(pr, kc, vc, st, A, cur);
        cur = A;
      } else {
        advance_state<T>(pr, kc, vc, st, A);
      }
      mu = st.mu_next;
    }
  }
  if (want_final) {
    f.final_state[bh].copy_(cur.narrow(1, 0, e));
    f.final_norm[bh].copy_(cur.select(1, e));
    f.final_logscale[bh].fill_(mu);
  }
}

template <typename T>
void chunked_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                           const State& d_final, HeadGrads& gr, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  const auto o = q.options();
  const bool gates = lg.defined() && needs.g;
  const bool key_side = needs.k || needs.v || gates;  // anything downstream of the states
  const bool carry = key_side || needs.state;         // the state gradient travels backwards
  const bool seeded = d_final.S.defined();            // the final state is used downstream
  const at::Tensor qr = head_of(q, bh, 4).view({T_ * g, d}), kh = head_of(k, bh, 3), vh = head_of(v, bh, 3);
  const double* lp = lg.defined() ? lg[bh].data_ptr<double>() : nullptr;
  const at::Tensor yh = f.y[bh].view({T_ * g, e}), dyh = head_of(dy, bh, 4).view({T_ * g, e});
  const at::Tensor mus = f.logscale[bh].contiguous();
  const double* mup = mus.data_ptr<double>();
  // gradients of one chunk, then stored into the head's rows (API layout: the rows before t only)
  at::Tensor dq = needs.q ? query_grad_rows(pr, gr, bh) : at::Tensor();  // [tokens, g, d]
  at::Tensor dk = needs.k ? kv_grad_rows(pr, gr, gr.k, bh) : at::Tensor();
  at::Tensor dv = needs.v ? kv_grad_rows(pr, gr, gr.v, bh) : at::Tensor();
  const int64_t tokens = gr.direct ? pr.t : T_;
  at::Tensor dqbuf = needs.q ? at::empty({cg, d}, o) : at::Tensor();
  at::Tensor dkbuf = needs.k ? at::empty({c, d}, o) : at::Tensor();
  at::Tensor dvbuf = needs.v ? at::empty({c, e}, o) : at::Tensor();
  double* dlg = gates ? gr.lg[bh].data_ptr<double>() : nullptr;
  // d loss / d (the scaled state leaving the chunk being processed), augmented as the state: dA = [dH | dh]
  at::Tensor dA = at::zeros({D, e + 1}, o);
  if (seeded) {
    dA.narrow(1, 0, e).copy_(d_final.S[bh]);
    dA.select(1, e).copy_(d_final.s[bh]);
  }
  const at::Tensor dH = dA.narrow(1, 0, e);
  std::vector<T> dGq(gates ? c : 0), dGk(gates ? c : 0);
  std::vector<double> gref(cg);
  // The states entering the chunks of one checkpoint segment [n0, n0 + interval), recomputed from its checkpoint
  // when the backward reaches the segment's last chunk (interval 1: the saved states themselves): the one entering
  // chunk n0 is the checkpoint itself, the one entering n0 + j (j >= 1) seg[j].
  const at::Tensor saved = augmented_states(f)[bh];
  const int64_t interval = checkpoint_interval(N, f.states.size(1));
  const at::Tensor seg = interval > 1 ? at::empty({interval, D, e + 1}, o) : at::Tensor();
  // the chunk's temporaries, reused from chunk to chunk
  at::Tensor dyc1 = at::empty({cg, e + 1}, o);  // [dnum | dden]
  at::Tensor S = at::empty({cg, c}, o), dP = at::empty({cg, c}, o), qf = at::empty({cg}, o);
  at::Tensor dsq = gates ? at::empty({cg}, o) : at::Tensor(), dsk = gates ? at::empty({c}, o) : at::Tensor();
  const bool fused = fused_products<T>(pr);
  const at::Tensor coef = fused ? sympow_coefficient_tensor(d, pr.p, at::kFloat) : at::Tensor();
  const int64_t ldt = transposed_ld(c);
  std::vector<float> kt(fused ? d * ldt : 0), vt(fused ? e * ldt : 0), ddv(fused ? cg : 0);  // K^T, V^T, dden
  std::vector<T> own(cg);  // the rows' own-key terms (own_key_term)
  at::Tensor qbuf, kbuf, vbuf;  // a chunk's rows when the inputs' rows are strided (unit_rows)
  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0);
    const double mu = mup[n];
    const int64_t n0 = n / interval * interval;
    if (interval > 1 && (n == N - 1 || n % interval == interval - 1)) {
      for (int64_t j = n0; j < n; ++j) {
        at::Tensor Aj = seg[j - n0 + 1];
        const StateStep sj = state_step(chunk_gates(pr, lp, j * c), mup[j], o);
        advance_state<T>(pr, unit_rows(kh.narrow(0, j * c, c), kbuf), unit_rows(vh.narrow(0, j * c, c), vbuf), sj,
                         Aj, j == n0 ? saved[n0 / interval] : seg[j - n0]);
      }
    }
    const at::Tensor An = interval > 1 && n > n0 ? seg[n - n0] : saved[n0 / interval];  // [D, e + 1], contiguous
    const at::Tensor qc = unit_rows(qr.narrow(0, t0 * g, cg), qbuf), kc = unit_rows(kh.narrow(0, t0, c), kbuf),
                     vc = unit_rows(vh.narrow(0, t0, c), vbuf);
    const double* G = lp == nullptr ? nullptr : gt.Gc.data();
    const auto sh = tile_shape<T>(pr, cg, c, 0, 0, G, G);
    tile_gate_reference<T>(sh, gref.data());

    // y = num / den:  dnum = dy / den,  dden = -(dy . y) / den
    const at::Tensor den = f.den[bh].narrow(0, t0 * g, cg).contiguous();
    const at::Tensor delta = f.rowmax[bh].narrow(0, t0 * g, cg).contiguous();
    const at::Tensor dyc = dyh.narrow(0, t0 * g, cg).contiguous(), yc = yh.narrow(0, t0 * g, cg).contiguous();
    const at::Tensor dnum = dyc1.narrow(1, 0, e), dden = dyc1.select(1, e);
    output_grad_rows<T>(cg, e, g, dyc.data_ptr<T>(), yc.data_ptr<T>(), den.data_ptr<T>(), vc.data_ptr<T>(),
                        vc.stride(0), dyc1.data_ptr<T>(), own.data());
    double dL = 0;  // d loss / d L_n (the chunk-end cumsum)
    if (gates) {
      std::fill(dGq.begin(), dGq.end(), T(0));
      std::fill(dGk.begin(), dGk.end(), T(0));
    }

    // --- queries against the state: [B | b] = phi(Q) diag(qf) A_n, qf = sp ws (ws at the saved row scale)
    const bool stateful_chunk = mu != kNegInf;
    at::Tensor phiQ, dxq;
    bool dq_set = false;  // dqbuf holds the gradient through the state term
    if (stateful_chunk) {
      T* qfp = qf.data_ptr<T>();
      const T* dp = delta.data_ptr<T>();
      for (int64_t i = 0; i < cg; ++i) {
        const double Mc = static_cast<double>(dp[i]) + gref[i];
        qfp[i] = static_cast<T>(sp * std::exp(gt.Gc[i / g] + mu - Mc));
      }
      if (!fused) phiQ = sympow_forward(qc, qf, pr.p);
      if (needs.q || gates) {
        // through dphi(Q) = dnum H^T + dden h^T
        at::Tensor ds;
        if (fused) {
          const float* r = dyc1.data_ptr<float>();
          phi_grad(phi_rows(qc, qf, coef), An.data_ptr<float>(), e + 1, r, e + 1, r + e, e + 1, e,
                   needs.q ? dqbuf.data_ptr<float>() : nullptr, gates ? dsq.data_ptr<float>() : nullptr);
          dq_set = needs.q;
          ds = dsq;
        } else {
          std::tie(dxq, ds) = sympow_backward(qc, qf, at::mm(dyc1, An.t()), pr.p, needs.q, gates);
        }
        if (gates) {  // d qf / d Gc = qf
          const at::Tensor dsc = ds.contiguous();
          const T* dsp = dsc.data_ptr<T>();
          for (int64_t j = 0; j < c; ++j) {
            T u = 0;
            for (int64_t r = 0; r < g; ++r) u += dsp[j * g + r] * qfp[j * g + r];
            dGq[j] += u;
          }
        }
      }
    }

    // --- the state leaving the chunk: A_{n+1} = alpha_n A_n + phi(K')^T [V | 1] (dA is its gradient)
    at::Tensor dvs = dvbuf;
    at::Tensor dxk;
    bool dv_set = false, dk_set = false;  // dvbuf, dkbuf hold the gradients through the state
    const StateStep st = state_step(gt, mu, o);
    if (key_side && (n + 1 < N || seeded)) {
      if (needs.v) {
        if (fused) {
          phi_apply(phi_rows(kc, st.kf, coef), dA.data_ptr<float>(), e + 1, e, false, dvs.data_ptr<float>(), e);
        } else {
          at::mm_out(dvs, sympow_forward(kc, st.kf, pr.p), dH);
        }
        dv_set = true;
      }
      if (needs.k || gates) {
        // through dphi(K) = V dH^T + 1 dh^T
        at::Tensor ds;
        if (fused) {
          phi_grad(phi_rows(kc, st.kf, coef), dA.data_ptr<float>(), e + 1, vc.data_ptr<float>(), vc.stride(0),
                   nullptr, 0, e, needs.k ? dkbuf.data_ptr<float>() : nullptr, gates ? dsk.data_ptr<float>() : nullptr);
          dk_set = needs.k;
          ds = dsk;
        } else {
          std::tie(dxk, ds) = sympow_backward(kc, st.kf, at::mm(with_ones(vc), dA.t()), pr.p, needs.k, gates);
        }
        if (gates) {  // d kf / d(L - Gc) = kf
          const at::Tensor dsc = ds.contiguous();
          const T* dsp = dsc.data_ptr<T>();
          const T* kfp = st.kf.data_ptr<T>();
          for (int64_t j = 0; j < c; ++j) {
            const T u = dsp[j] * kfp[j];
            dGk[j] -= u;
            dL += static_cast<double>(u);
          }
        }
      }
      if (gates && st.alpha != 0) dL += st.alpha * dot_fp64(An.data_ptr<T>(), dA.data_ptr<T>(), An.numel());
    }
    if (carry && (n > 0 || needs.state)) {  // dA <- alpha dA + (phi(Q) diag(qf))^T [dnum | dden]
      if (stateful_chunk && fused) {
        const float* r = dyc1.data_ptr<float>();
        phi_outer(phi_rows(qc, qf, coef), r, e + 1, r + e, e + 1, e, true, static_cast<float>(st.alpha),
                  dA.data_ptr<float>(), e + 1);
      } else if (stateful_chunk) {
        dA.addmm_(phiQ.t(), dyc1, st.alpha, 1.0);
      } else {
        dA.mul_(st.alpha);
      }
    }

    // --- in-chunk attention, its weights exp(z - M) taken at the saved row scale
    if (fused) {
      const float* r = dyc1.data_ptr<float>();
      for (int64_t i = 0; i < cg; ++i) ddv[i] = r[i * (e + 1) + e];
      transpose_to(kc.data_ptr<float>(), kc.stride(0), c, d, ldt, kt.data());
      transpose_to(vc.data_ptr<float>(), vc.stride(0), c, e, ldt, vt.data());
      causal_scores(cg, c, g, d, qc.data_ptr<float>(), qc.stride(0), kt.data(), ldt, S.data_ptr<float>(), nullptr);
      causal_scores(cg, c, g, e, r, e + 1, vt.data(), ldt, dP.data_ptr<float>(), ddv.data());  // dnum V^T + dden
    } else {
      at::mm_out(S, qc, kc.t());
      at::mm_out(dP, dnum, vc.t()).add_(dden.unsqueeze(1));
    }
    own_key_term(dP.data_ptr<T>(), c, cg, g, own.data());  // the rows' own keys (output_grad_rows made them)
    tile_weights_backward<T>(sh, S.data_ptr<T>(), dP.data_ptr<T>(), delta.data_ptr<T>(),
                             gates ? dGq.data() : nullptr, gates ? dGk.data() : nullptr);
    if (fused) {  // P^T dnum, dS K, dS^T Q on the causal blocks
      const float* r = dyc1.data_ptr<float>();
      const float *Pp = S.data_ptr<float>(), *dSp = dP.data_ptr<float>();
      if (needs.v) causal_keys(cg, c, g, e, Pp, r, e + 1, dvs.data_ptr<float>(), e, dv_set);
      if (needs.q) causal_rows(cg, c, g, d, dSp, kc.data_ptr<float>(), kc.stride(0), dqbuf.data_ptr<float>(), d, dq_set);
      if (needs.k) causal_keys(cg, c, g, d, dSp, qc.data_ptr<float>(), qc.stride(0), dkbuf.data_ptr<float>(), d, dk_set);
    }
    if (needs.v && !fused) {
      if (dv_set) {
        dvs.addmm_(S.t(), dnum);
      } else {
        at::mm_out(dvs, S.t(), dnum);
      }
    }
    if (needs.q && !fused) {
      at::Tensor dqs = dqbuf;
      if (dxq.defined()) dqs.copy_(dxq), dq_set = true;
      if (dq_set) {
        dqs.addmm_(dP, kc);
      } else {
        at::mm_out(dqs, dP, kc);
      }
    }
    if (needs.k && !fused) {
      at::Tensor dks = dkbuf;
      if (dxk.defined()) dks.copy_(dxk), dk_set = true;
      if (dk_set) {
        dks.addmm_(dP.t(), qc);
      } else {
        at::mm_out(dks, dP.t(), qc);
      }
    }
    const int64_t valid = std::min(c, tokens - t0);
    if (valid > 0) {
      if (needs.q) dq.narrow(0, t0, valid).copy_(dqbuf.view({c, g, d}).narrow(0, 0, valid));
      if (needs.k) dk.narrow(0, t0, valid).copy_(dkbuf.narrow(0, 0, valid));
      if (needs.v) dv.narrow(0, t0, valid).copy_(dvbuf.narrow(0, 0, valid));
    }
    if (gates) {  // Gc_j = sum_{l <= j} lg_l, L_n = Gc_{c-1}: reverse cumsum within the chunk
      double acc = dL;
      for (int64_t j = c - 1; j >= 0; --j) {
        acc += static_cast<double>(dGq[j]) + static_cast<double>(dGk[j]);
        dlg[t0 + j] = acc;
      }
    }
  }
  if (needs.state) {  // after chunk 0, dA is the gradient of the state entering the sequence
    gr.initial.S[bh].copy_(dA.narrow(1, 0, e));
    gr.initial.s[bh].copy_(dA.select(1, e));
  }
}

bool chunked_from_caller_layout(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return pr.chunk > 0 && pr.b > 0 && pr.t > 0 && pr.T == pr.t && (pr.g == 1 || pr.h == 1) &&
         pr.precision.compute == at::kFloat && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
         v.scalar_type() == at::kFloat && fused_products<float>(pr) && q.is_contiguous() && k.is_contiguous() &&
         v.is_contiguous();
}

at::Tensor caller_query_heads(const at::Tensor& x, const Problem& pr) {
  return x.view({pr.b, pr.t, pr.h, pr.g, x.size(3)}).permute({0, 2, 1, 3, 4});
}

at::Tensor caller_kv_heads(const at::Tensor& x) { return x.permute({0, 2, 1, 3}); }

int64_t state_interval(const Problem& pr) {
  if (pr.chunk <= 0) return 1;
  const int64_t N = pr.T / pr.chunk;
  if (const char* env = std::getenv("POWER_ATTENTION_CPU_STATE_INTERVAL")) {
    const long k = std::atol(env);
    if (k >= 1) return checkpoint_interval(N, (N + std::min<int64_t>(k, N) - 1) / std::min<int64_t>(k, N));
  }
  const double elem = 8;  // fp64 bound; fp32 states take half
  const double state = static_cast<double>(sympow_dim(pr.d, pr.p)) * (pr.e + 1) * elem;
  const double qkvy = static_cast<double>(pr.BH) * pr.T * (pr.g * (pr.d + pr.e) + pr.d + pr.e) * elem;
  const double budget = std::max(kStateBudgetFloor, kStateBudgetShare * qkvy);
  const double workers = static_cast<double>(std::min<int64_t>(pr.BH, std::max(1, at::get_num_threads())));
  int64_t best = 1;
  double best_bytes = std::numeric_limits<double>::infinity();
  for (int64_t k = 1; k <= std::max<int64_t>(N, 1); ++k) {
    const double kept = static_cast<double>(pr.BH) * ((N + k - 1) / k) * state + (k > 1 ? workers * k * state : 0.0);
    if (kept <= budget) {
      best = k;
      break;
    }
    if (kept < best_bytes) best = k, best_bytes = kept;
  }
  return checkpoint_interval(N, (N + best - 1) / best);
}

template void chunked_forward_head<float>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, Forward&, bool, const State&, bool, int64_t);
template void chunked_forward_head<double>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, Forward&, bool, const State&, bool, int64_t);
template void chunked_backward_head<float>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const Forward&, const at::Tensor&, const Needs&,
                                           const State&, HeadGrads&, int64_t);
template void chunked_backward_head<double>(const Problem&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, const Forward&, const at::Tensor&,
                                            const Needs&, const State&, HeadGrads&, int64_t);

}  // namespace cpu
}  // namespace power_attention
