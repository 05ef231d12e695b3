// power_full_cpu.cpp: the CPU path of power_full, one key/value head at a time.
//
// Heads run in parallel (at::parallel_for); inside a head the chunks run in order, so the running state [D, e]
// stays in cache, every temporary is one chunk's worth (reused by the allocator, no page faults), and the ATen
// matrix products run single-threaded on their own head. The elementwise log-space work of the in-chunk attention
// is fused into one pass per row (attention_tile_cpu.cpp); phi and its backward are sympow.cpp's loops.
// Nothing t x t is formed in the chunked form; backward recomputes phi instead of storing it.
#include "cpu/power_full_cpu.h"
#include "cpu/attention_tile_cpu.h"
#include "cpu/platform_util.h"
#include "cpu/cpu_simd.h"
#include "cpu/sympow_cpu.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

namespace power_attention {
namespace cpu {
namespace {

// State checkpointing in the chunked backward (state_interval): the kept states and the recomputation buffers may
// take this share of the bytes of q, k, v and y together, and at least kStateBudgetFloor.
constexpr double kStateBudgetShare = 0.5;
constexpr double kStateBudgetFloor = 32.0 * (1 << 20);

// Query tokens per tile of the quadratic form: about this many weights per tile.
constexpr int64_t kQuadraticTileWeights = int64_t(1) << 20;
constexpr int64_t kQuadraticTileTokens = 128;

// 1 / x where x != 0, else 0 (a row with no weight at all gives y = 0 and no gradient).
at::Tensor safe_reciprocal(const at::Tensor& x) {
  return at::where(x == 0, at::zeros_like(x), x.reciprocal());
}

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
  at::Tensor kf = at::empty({c}, o.dtype(at::kDouble));
  double* kp = kf.data_ptr<double>();
  for (int64_t j = 0; j < c; ++j) kp[j] = std::exp(cg.L - cg.Gc[j] - st.mu_next);
  st.kf = kf.to(o.dtype());
  return st;
}

// The state is held augmented, A = [H | h] [D, e + 1]: the normaliser is the last column, so that one matrix
// product serves both (phi(Q) A gives B and b; the backward's products with A and its gradient likewise), with
// no separate passes over [c, D] or [D, e] for the normaliser.
//
// The state leaving a chunk from the one entering it: A <- alpha A + phi(K')^T [V | 1], with K' the keys scaled by
// kf (state_step). The forward and the backward's recomputation both run exactly this, so a recomputed state is
// the forward's to the bit. v1 is [V | 1] of the chunk.
void advance_state(const at::Tensor& kc, const at::Tensor& v1, const StateStep& st, int64_t p, at::Tensor& A) {
  const at::Tensor phiK = sympow_forward(kc, st.kf, p);  // [c, D]
  A.addmm_(phiK.t(), v1, st.alpha, 1.0);
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

// [x | 1]: a column of ones appended to x [n, e].
at::Tensor with_ones(const at::Tensor& x) {
  at::Tensor out = at::empty({x.size(0), x.size(1) + 1}, x.options());
  out.narrow(1, 0, x.size(1)).copy_(x);
  out.select(1, x.size(1)).fill_(1);
  return out;
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

template <typename T>
TileShape<T> tile_shape(const Problem& pr, int64_t R, int64_t C, int64_t tq0, int64_t tk0, const double* gq,
                        const double* gk) {
  TileShape<T> sh;
  sh.R = R, sh.C = C, sh.g = pr.g, sh.tq0 = tq0, sh.tk0 = tk0, sh.p = pr.p;
  sh.scale = static_cast<T>(pr.scale), sh.gq = gq, sh.gk = gk;
  return sh;
}

// While heads run in parallel, each head's matrix products must run on its own thread. ATen keeps its own
// kernels single-threaded inside at::parallel_for, but an OpenBLAS built with pthreads (Bytedeco's) starts its
// own threads in every call: 2 heads x 2 BLAS threads on 2 cores was 4x slower than 1 BLAS thread (t = 4096,
// chunk 64). So OpenBLAS is held at one thread for the duration, in every OpenBLAS the process has loaded: Bytedeco's
// LibTorch links libopenblas_nolapack.so.0 and its openblas preset loads libopenblas.so.0 beside it (a perf
// profile found a guard holding only the latter while LibTorch's GEMMs ran on the former, threaded).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    for (const Lib& l : loaded()) {
      const int n = l.get();
      previous_.push_back(n);
      if (n > 1) l.set(1);
    }
  }
  ~SingleThreadedBlas() {
    const std::vector<Lib>& libs = loaded();
    for (size_t i = 0; i < libs.size(); ++i)
      if (previous_[i] > 1) libs[i].set(previous_[i]);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  struct Lib {
    void (*set)(int);
    int (*get)();
  };
  // The OpenBLAS libraries the process has loaded, looked up once.
  static const std::vector<Lib>& loaded() {
    static const std::vector<Lib> libs = [] {
      std::vector<Lib> v;
      for (const char* name : platform::openblas_library_names()) {
        auto set = reinterpret_cast<void (*)(int)>(platform::loaded_symbol(name, "openblas_set_num_threads"));
        auto get = reinterpret_cast<int (*)()>(platform::loaded_symbol(name, "openblas_get_num_threads"));
        if (set != nullptr && get != nullptr) v.push_back({set, get});
      }
      return v;
    }();
    return libs;
  }
  std::vector<int> previous_;
};

// Runs fn(bh) for every head, heads in parallel (one head per task).
template <typename F>
void for_each_head(int64_t BH, const F& fn) {
  if (BH > 1 && at::get_num_threads() > 1) {
    SingleThreadedBlas blas;
    at::parallel_for(0, BH, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t bh = h0; bh < h1; ++bh) fn(bh);
    });
  } else {
    for (int64_t bh = 0; bh < BH; ++bh) fn(bh);
  }
}

// A head's gradients: with Grads::api they go straight into the API layout [b, t, heads, w] (no unlayout copy of
// the whole gradient afterwards, and no compute-layout gradient in memory), else into the compute layout.
// Query gradient of head bh as [tokens, g, d]; key or value gradient as [tokens, w]; tokens = t (API) or T.
at::Tensor query_grad_rows(const Problem& pr, const Grads& gr, int64_t bh) {
  if (!gr.api) return gr.q[bh];
  const int64_t H = pr.BH / pr.b;
  return gr.q[bh / H].narrow(1, (bh % H) * pr.g, pr.g);
}
at::Tensor kv_grad_rows(const Problem& pr, const Grads& gr, const at::Tensor& x, int64_t bh) {
  if (!gr.api) return x[bh];
  const int64_t H = pr.BH / pr.b;
  return x[bh / H].select(1, bh % H);
}

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

template <typename T>
void quadratic_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lg, Forward& f, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const std::vector<double> G = gate_cumsum(lg, bh, T_);
  const at::Tensor yh = f.y[bh].view({T_ * g, e});
  const at::Tensor lh = f.den[bh], mh = f.rowmax[bh];
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
                             Grads& gr, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const bool gates = lg.defined() && needs.g;
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const std::vector<double> G = gate_cumsum(lg, bh, T_);
  std::vector<T> dG(gates ? T_ : 0, T(0));
  at::Tensor dq = needs.q ? query_grad_rows(pr, gr, bh) : at::Tensor();  // [T, g, d]
  at::Tensor dk = needs.k ? kv_grad_rows(pr, gr, gr.k, bh) : at::Tensor();
  at::Tensor dv = needs.v ? kv_grad_rows(pr, gr, gr.v, bh) : at::Tensor();
  const at::Tensor yh = f.y[bh].view({T_ * g, e}), dyh = dy[bh].view({T_ * g, e});
  const int64_t tile = quadratic_tile_tokens(pr);
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor inv = safe_reciprocal(f.den[bh].narrow(0, i0 * g, R));
    const at::Tensor dyt = dyh.narrow(0, i0 * g, R), yt = yh.narrow(0, i0 * g, R);
    const at::Tensor dnum = dyt * inv.unsqueeze(1);                     // y = num / l
    const at::Tensor dl = (dyt * yt).sum(1).mul_(inv).neg_();
    const at::Tensor qt = qr.narrow(0, i0 * g, R), kt = kh.narrow(0, 0, i1), vt = vh.narrow(0, 0, i1);
    at::Tensor S = at::mm(qt, kt.t()).contiguous();
    at::Tensor dP = at::mm(dnum, vt.t()).add_(dl.unsqueeze(1)).contiguous();
    const at::Tensor m = f.rowmax[bh].narrow(0, i0 * g, R).contiguous();
    const auto sh = tile_shape<T>(pr, R, i1, i0, 0, G.empty() ? nullptr : G.data() + i0, G.empty() ? nullptr : G.data());
    tile_weights_backward<T>(sh, S.data_ptr<T>(), dP.data_ptr<T>(), m.data_ptr<T>(), gates ? dG.data() + i0 : nullptr,
                             gates ? dG.data() : nullptr);
    if (needs.v) dv.narrow(0, 0, i1).add_(at::mm(S.t(), dnum));
    if (needs.q) dq.narrow(0, i0, i1 - i0).copy_(at::mm(dP, kt).view({i1 - i0, g, d}));
    if (needs.k) dk.narrow(0, 0, i1).add_(at::mm(dP.t(), qt));
  }
  if (gates) {  // G = cumsum(lg): reverse cumsum
    double* out = gr.lg[bh].data_ptr<double>();
    double acc = 0;
    for (int64_t i = T_ - 1; i >= 0; --i) out[i] = (acc += static_cast<double>(dG[i]));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Chunked form, SPEC §4: per head, chunks in order (forward) and in reverse (backward).
// ---------------------------------------------------------------------------------------------------------------

// The combination of chunk n's rows (docs/SPEC.md, the stabilised chunked form): the in-chunk attention (numA, l,
// row max m relative to the gate reference gref) and the state term (B, b: sp phi(q) times the scaled state) meet
// at a shared row scale M_i = max(m_i + gref_i, r_i + log|b_i|), r_i = Gc_i + mu_n the state's log-factor, so that
// both weights wa = exp(m_i + gref_i - M_i) and ws = exp(r_i - M_i) are <= 1 (up to |b|). Kept as delta_i =
// M_i - gref_i (the saved row scale): the backward rebuilds ws from it and takes the tile's weights against it.
struct RowScales {
  at::Tensor wa, ws;  // [cg] in T
};

template <typename T>
RowScales combine_scales(int64_t cg, int64_t g, const std::vector<double>& Gc, double mu,
                            const std::vector<double>& gref, const T* m, const T* l, const T* b, T* delta,
                            const at::TensorOptions& o) {
  RowScales rs{at::empty({cg}, o), at::empty({cg}, o)};
  T* wa = rs.wa.data_ptr<T>();
  T* ws = rs.ws.data_ptr<T>();
  for (int64_t i = 0; i < cg; ++i) {
    const double A = l[i] != T(0) ? static_cast<double>(m[i]) + gref[i] : kNegInf;
    const double r = mu == kNegInf ? kNegInf : Gc[i / g] + mu;
    double rho = r;
    if (r != kNegInf && b != nullptr && b[i] != T(0)) rho = r + std::log(std::abs(static_cast<double>(b[i])));
    double M = std::max(A, rho);
    if (M == kNegInf) M = gref[i];
    delta[i] = static_cast<T>(M - gref[i]);
    const double Mc = static_cast<double>(delta[i]) + gref[i];  // the rounded scale, used alike in backward
    wa[i] = l[i] != T(0) ? static_cast<T>(std::exp(static_cast<double>(m[i]) - static_cast<double>(delta[i]))) : T(0);
    ws[i] = r == kNegInf ? T(0) : static_cast<T>(std::exp(r - Mc));
  }
  return rs;
}

template <typename T>
void chunked_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final,
                          int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  const auto o = q.options();
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
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
  at::Tensor l = at::empty({cg}, o), m = at::empty({cg}, o);
  const at::Tensor qscale = at::full({cg}, sp, o);  // phi(Q) carries scale^p
  const int64_t interval = save ? checkpoint_interval(N, f.states.size(1)) : 1;
  const at::Tensor saved = save ? augmented_states(f)[bh] : at::Tensor();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0);
    if (save) {
      if (n % interval == 0) saved[n / interval].copy_(A);  // a checkpoint: the backward recomputes the rest
      f.logscale[bh][n].fill_(mu);
    }
    const at::Tensor qc = qr.narrow(0, t0 * g, cg), kc = kh.narrow(0, t0, c), vc = vh.narrow(0, t0, c);

    // in-chunk attention
    at::Tensor S = at::mm(qc, kc.t());
    const double* G = lp == nullptr ? nullptr : gt.Gc.data();
    const auto sh = tile_shape<T>(pr, cg, c, 0, 0, G, G);
    tile_weights_forward<T>(sh, S.data_ptr<T>(), m.data_ptr<T>(), l.data_ptr<T>());
    tile_gate_reference<T>(sh, gref.data());
    at::Tensor num = at::mm(S, vc);

    // queries against the scaled state entering the chunk: [B | b] = sp phi(Q) A
    at::Tensor Bb;
    if (mu != kNegInf) Bb = at::mm(sympow_forward(qc, qscale, pr.p), A);  // [cg, e + 1]
    const at::Tensor bq = Bb.defined() ? Bb.select(1, e).contiguous() : at::Tensor();

    // combine at the shared row scale
    at::Tensor delta = f.rowmax[bh].narrow(0, t0 * g, cg);
    const RowScales rs = combine_scales<T>(cg, g, gt.Gc, mu, gref, m.data_ptr<T>(), l.data_ptr<T>(),
                                              bq.defined() ? bq.data_ptr<T>() : nullptr, delta.data_ptr<T>(), o);
    at::Tensor den = l * rs.wa;
    num.mul_(rs.wa.unsqueeze(1));
    if (bq.defined()) {
      den.add_(bq * rs.ws);
      num.add_(Bb.narrow(1, 0, e) * rs.ws.unsqueeze(1));
    }
    f.den[bh].narrow(0, t0 * g, cg).copy_(den);
    yh.narrow(0, t0 * g, cg).copy_(num.mul_(safe_reciprocal(den).unsqueeze(1)));

    // the state leaving the chunk
    if (n + 1 < N || want_final) {
      const StateStep st = state_step(gt, mu, o);
      advance_state(kc, with_ones(vc), st, pr.p, A);
      mu = st.mu_next;
    }
  }
  if (want_final) {
    f.final_state[bh].copy_(A.narrow(1, 0, e));
    f.final_norm[bh].copy_(A.select(1, e));
    f.final_logscale[bh].fill_(mu);
  }
}

template <typename T>
void chunked_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                           const State& d_final, Grads& gr, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  const auto o = q.options();
  const bool gates = lg.defined() && needs.g;
  const bool key_side = needs.k || needs.v || gates;  // anything downstream of the states
  const bool carry = key_side || needs.state;         // the state gradient travels backwards
  const bool seeded = d_final.S.defined();            // the final state is used downstream
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const double* lp = lg.defined() ? lg[bh].data_ptr<double>() : nullptr;
  const at::Tensor yh = f.y[bh].view({T_ * g, e}), dyh = dy[bh].view({T_ * g, e});
  const at::Tensor mus = f.logscale[bh].contiguous();
  const double* mup = mus.data_ptr<double>();
  // gradients of one chunk, then stored into the head's rows (API layout: the rows before t only)
  at::Tensor dq = needs.q ? query_grad_rows(pr, gr, bh) : at::Tensor();  // [tokens, g, d]
  at::Tensor dk = needs.k ? kv_grad_rows(pr, gr, gr.k, bh) : at::Tensor();
  at::Tensor dv = needs.v ? kv_grad_rows(pr, gr, gr.v, bh) : at::Tensor();
  const int64_t tokens = gr.api ? pr.t : T_;
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
  // when the backward reaches the segment's last chunk (interval 1: the saved states themselves).
  const at::Tensor saved = augmented_states(f)[bh];
  const int64_t interval = checkpoint_interval(N, f.states.size(1));
  const at::Tensor seg = interval > 1 ? at::empty({interval, D, e + 1}, o) : at::Tensor();
  at::Tensor dyc1 = at::empty({cg, e + 1}, o);  // [dnum | dden]
  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0);
    const double mu = mup[n];
    const int64_t n0 = n / interval * interval;
    if (interval > 1 && (n == N - 1 || n % interval == interval - 1)) {
      seg[0].copy_(saved[n0 / interval]);
      for (int64_t j = n0; j < n; ++j) {
        at::Tensor Aj = seg[j - n0 + 1];
        Aj.copy_(seg[j - n0]);
        const StateStep sj = state_step(chunk_gates(pr, lp, j * c), mup[j], o);
        advance_state(kh.narrow(0, j * c, c), with_ones(vh.narrow(0, j * c, c)), sj, pr.p, Aj);
      }
    }
    const at::Tensor An = interval > 1 ? seg[n - n0] : saved[n];  // [D, e + 1], contiguous
    const at::Tensor qc = qr.narrow(0, t0 * g, cg), kc = kh.narrow(0, t0, c), vc = vh.narrow(0, t0, c);
    const double* G = lp == nullptr ? nullptr : gt.Gc.data();
    const auto sh = tile_shape<T>(pr, cg, c, 0, 0, G, G);
    tile_gate_reference<T>(sh, gref.data());

    // y = num / den:  dnum = dy / den,  dden = -(dy . y) / den
    const at::Tensor inv = safe_reciprocal(f.den[bh].narrow(0, t0 * g, cg));
    const at::Tensor delta = f.rowmax[bh].narrow(0, t0 * g, cg).contiguous();
    const at::Tensor dyc = dyh.narrow(0, t0 * g, cg), yc = yh.narrow(0, t0 * g, cg);
    at::Tensor dnum = dyc1.narrow(1, 0, e), dden = dyc1.select(1, e);
    at::mul_out(dnum, dyc, inv.unsqueeze(1));
    dden.copy_((dyc * yc).sum(1).mul_(inv).neg_());
    double dL = 0;  // d loss / d L_n (the chunk-end cumsum)
    if (gates) {
      std::fill(dGq.begin(), dGq.end(), T(0));
      std::fill(dGk.begin(), dGk.end(), T(0));
    }

    // --- queries against the state: [B | b] = phi(Q) diag(qf) A_n, qf = sp ws (ws at the saved row scale)
    const bool stateful_chunk = mu != kNegInf;
    at::Tensor phiQ, dxq;
    if (stateful_chunk) {
      at::Tensor qf = at::empty({cg}, o);
      T* qfp = qf.data_ptr<T>();
      const T* dp = delta.data_ptr<T>();
      for (int64_t i = 0; i < cg; ++i) {
        const double Mc = static_cast<double>(dp[i]) + gref[i];
        qfp[i] = static_cast<T>(sp * std::exp(gt.Gc[i / g] + mu - Mc));
      }
      phiQ = sympow_forward(qc, qf, pr.p);
      if (needs.q || gates) {
        const at::Tensor dphiQ = at::mm(dyc1, An.t());  // dnum H^T + dden h^T
        auto [dx, dsq] = sympow_backward(qc, qf, dphiQ, pr.p, needs.q, gates);
        dxq = dx;
        if (gates) {  // d qf / d Gc = qf
          const at::Tensor u = (dsq * qf).view({c, g}).sum(1).to(at::kDouble);
          const double* up = u.data_ptr<double>();
          for (int64_t j = 0; j < c; ++j) dGq[j] += static_cast<T>(up[j]);
        }
      }
    }

    // --- the state leaving the chunk: A_{n+1} = alpha_n A_n + phi(K')^T [V | 1] (dA is its gradient)
    at::Tensor dvs = dvbuf;
    at::Tensor dxk;
    bool dv_set = false;
    const StateStep st = state_step(gt, mu, o);
    if (key_side && (n + 1 < N || seeded)) {
      const at::Tensor phiK = sympow_forward(kc, st.kf, pr.p);
      if (needs.v) {
        at::mm_out(dvs, phiK, dH);
        dv_set = true;
      }
      if (needs.k || gates) {
        const at::Tensor dphiK = at::mm(with_ones(vc), dA.t());  // V dH^T + 1 dh^T
        auto [dx, dsk] = sympow_backward(kc, st.kf, dphiK, pr.p, needs.k, gates);
        dxk = dx;
        if (gates) {  // d kf / d(L - Gc) = kf
          const at::Tensor u = (dsk * st.kf).to(at::kDouble);
          const double* up = u.data_ptr<double>();
          for (int64_t j = 0; j < c; ++j) {
            dGk[j] -= static_cast<T>(up[j]);
            dL += up[j];
          }
        }
      }
      if (gates && st.alpha != 0) dL += st.alpha * dot_fp64(An.data_ptr<T>(), dA.data_ptr<T>(), An.numel());
    }
    if (carry && (n > 0 || needs.state)) {  // dA <- alpha dA + (phi(Q) diag(qf))^T [dnum | dden]
      if (stateful_chunk) {
        dA.addmm_(phiQ.t(), dyc1, st.alpha, 1.0);
      } else {
        dA.mul_(st.alpha);
      }
    }

    // --- in-chunk attention, its weights exp(z - M) taken at the saved row scale
    at::Tensor S = at::mm(qc, kc.t());
    at::Tensor dP = at::mm(dnum, vc.t()).add_(dden.unsqueeze(1));
    tile_weights_backward<T>(sh, S.data_ptr<T>(), dP.data_ptr<T>(), delta.data_ptr<T>(),
                             gates ? dGq.data() : nullptr, gates ? dGk.data() : nullptr);
    if (needs.v) {
      if (dv_set) {
        dvs.addmm_(S.t(), dnum);
      } else {
        at::mm_out(dvs, S.t(), dnum);
      }
    }
    if (needs.q) {
      at::Tensor dqs = dqbuf;
      if (dxq.defined()) {
        dqs.copy_(dxq).addmm_(dP, kc);
      } else {
        at::mm_out(dqs, dP, kc);
      }
    }
    if (needs.k) {
      at::Tensor dks = dkbuf;
      if (dxk.defined()) {
        dks.copy_(dxk).addmm_(dP.t(), qc);
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

template <typename T>
void decode_head(int64_t bh, int64_t g, int64_t D, int64_t e, const T* phik, const T* phiq, const T* v,
                 const T* lg, const T* S, const T* s, T* S1, T* s1, T* y) {
  const T gate = lg != nullptr ? std::exp(lg[bh]) : T(1);
  const T* vh = v + bh * e;
  const T* pk = phik + bh * D;
  const T* pq = phiq + bh * g * D;
  std::vector<T> num(g * e, T(0)), den(g, T(0));
  const T* Sh = S + bh * D * e;
  T* S1h = S1 + bh * D * e;
  for (int64_t a = 0; a < D; ++a) {
    const T ka = pk[a];
    const T* Sr = Sh + a * e;
    T* Sn = S1h + a * e;
    for (int64_t c = 0; c < e; ++c) Sn[c] = gate * Sr[c] + ka * vh[c];
    const T sa = gate * s[bh * D + a] + ka;
    s1[bh * D + a] = sa;
    for (int64_t j = 0; j < g; ++j) {
      const T w = pq[j * D + a];
      T* nj = num.data() + j * e;
      for (int64_t c = 0; c < e; ++c) nj[c] += w * Sn[c];
      den[j] += w * sa;
    }
  }
  T* yh = y + bh * g * e;
  for (int64_t j = 0; j < g; ++j) {
    const T inv = den[j] != T(0) ? T(1) / den[j] : T(0);
    for (int64_t c = 0; c < e; ++c) yh[j * e + c] = num[j * e + c] * inv;
  }
}

}  // namespace

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

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward, const State& initial, bool want_final) {
  TORCH_CHECK(pr.chunk > 0 || (!initial.S.defined() && !want_final), "power_full: states need the chunked path");
  const auto o = q.options();
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, o);
  f.den = at::empty({pr.BH, pr.T * pr.g}, o);
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, o);
  if (pr.chunk > 0 && save_for_backward) {
    const int64_t D = sympow_dim(pr.d, pr.p), N = pr.T / pr.chunk, kept = (N + state_interval(pr) - 1) / state_interval(pr);
    const at::Tensor aug = at::empty({pr.BH, kept, D, pr.e + 1}, o);  // [H | h], see augmented_states
    f.states = aug.narrow(3, 0, pr.e);
    f.norms = aug.select(3, pr.e);
    f.logscale = at::empty({pr.BH, N}, o.dtype(at::kDouble));
  }
  if (want_final) {
    const int64_t D = sympow_dim(pr.d, pr.p);
    f.final_state = at::empty({pr.BH, D, pr.e}, o);
    f.final_norm = at::empty({pr.BH, D}, o);
    f.final_logscale = at::empty({pr.BH}, o.dtype(at::kDouble));
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_full_cpu_forward", [&] {
    for_each_head(pr.BH, [&](int64_t bh) {
      if (pr.chunk > 0) {
        chunked_forward_head<scalar_t>(pr, q, k, v, lg, f, save_for_backward, initial, want_final, bh);
      } else {
        quadratic_forward_head<scalar_t>(pr, q, k, v, lg, f, bh);
      }
    });
  });
  return f;
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  Grads gr;
  if (needs.state) {
    const int64_t D = sympow_dim(pr.d, pr.p);
    gr.initial.S = at::empty({pr.BH, D, pr.e}, q.options());
    gr.initial.s = at::empty({pr.BH, D}, q.options());
  }
  // Problem::api: the gradients in the API layout [b, t, heads, w] directly (Grads::api)
  gr.api = pr.api && pr.b > 0 && pr.t > 0;
  const int64_t H = gr.api ? pr.BH / pr.b : 0;
  const auto qshape = gr.api ? std::vector<int64_t>{pr.b, pr.t, H * pr.g, pr.d} : q.sizes().vec();
  const auto kshape = gr.api ? std::vector<int64_t>{pr.b, pr.t, H, pr.d} : k.sizes().vec();
  const auto vshape = gr.api ? std::vector<int64_t>{pr.b, pr.t, H, pr.e} : v.sizes().vec();
  if (needs.q) gr.q = at::empty(qshape, q.options());
  if (needs.k) gr.k = pr.chunk > 0 ? at::empty(kshape, k.options()) : at::zeros(kshape, k.options());
  if (needs.v) gr.v = pr.chunk > 0 ? at::empty(vshape, v.options()) : at::zeros(vshape, v.options());
  if (lg.defined() && needs.g) gr.lg = at::empty_like(lg);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_full_cpu_backward", [&] {
    for_each_head(pr.BH, [&](int64_t bh) {
      if (pr.chunk > 0) {
        chunked_backward_head<scalar_t>(pr, q, k, v, lg, saved, dy, needs, d_final, gr, bh);
      } else {
        quadratic_backward_head<scalar_t>(pr, q, k, v, lg, saved, dy, needs, gr, bh);
      }
    });
  });
  return gr;
}

std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p) {
  const int64_t BH = k.size(0), g = q.size(1), d = q.size(2), e = v.size(1), D = S.size(1);
  const at::Tensor phik = sympow_forward(k, at::Tensor(), p);                    // [BH, D]
  const at::Tensor phiq = sympow_forward(q.reshape({BH * g, d}), at::Tensor(), p);  // [BH * g, D]
  at::Tensor S1 = at::empty_like(S), s1 = at::empty_like(s), y = at::empty({BH, g, e}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_decode_step_cpu", [&] {
    const scalar_t* lp = lg.defined() ? lg.data_ptr<scalar_t>() : nullptr;
    for_each_head(BH, [&](int64_t bh) {
      decode_head<scalar_t>(bh, g, D, e, phik.data_ptr<scalar_t>(), phiq.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            lp, S.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), S1.data_ptr<scalar_t>(),
                            s1.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
    });
  });
  return {y, S1, s1};
}

Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying) {
  const bool fp64 = input == at::kDouble || p % 2 == 1 || (chunk > 0 && amplifying);
  return {fp64 ? at::kDouble : at::kFloat, at::kDouble, fp64 ? at::kDouble : at::kFloat};
}

double state_bytes(const Problem& pr, at::ScalarType compute, bool grad) {
  const double elem = compute == at::kDouble ? 8 : 4;
  const double D = static_cast<double>(sympow_dim(pr.d, pr.p));
  const int64_t N = pr.T / pr.chunk, k = grad ? state_interval(pr) : 1;
  const double workers = static_cast<double>(std::min<int64_t>(pr.BH, std::max(1, at::get_num_threads())));
  // kept for backward: every k-th state, and k states per worker while a segment is recomputed
  const double kept = static_cast<double>(pr.BH) * static_cast<double>((N + k - 1) / k) + (k > 1 ? workers * k : 0.0);
  const double states = (grad ? kept : 1.0) * D * (pr.e + 1);
  const double phi = 2.0 * pr.chunk * pr.g * D;
  return (states + phi) * elem;
}

}  // namespace cpu
}  // namespace power_attention
