// power_full_cpu.cpp: the CPU path of power_full, one key/value head at a time.
//
// Heads run in parallel (at::parallel_for); inside a head the chunks run in order, so the running state [D, e]
// stays in cache, every temporary is one chunk's worth (reused by the allocator, no page faults), and the ATen
// matrix products run single-threaded on their own head. The elementwise log-space work of the in-chunk attention
// is fused into one pass per row (attention_tile_cpu.cpp); phi and its backward are sympow.cpp's loops.
// Nothing t x t is formed in the chunked form; backward recomputes phi instead of storing it.
#include "power_full_cpu.h"
#include "attention_tile_cpu.h"
#include "platform_util.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace power_attention {
namespace cpu {
namespace {

// Query tokens per tile of the quadratic form: about this many weights per tile.
constexpr int64_t kQuadraticTileWeights = int64_t(1) << 20;

// 1 / x where x != 0, else 0 (a row with no weight at all gives y = 0 and no gradient).
at::Tensor safe_reciprocal(const at::Tensor& x) {
  return at::where(x == 0, at::zeros_like(x), x.reciprocal());
}

// The gate factors of one chunk: the local inclusive cumsum Gc (fp64) and what derives from it.
struct ChunkGates {
  std::vector<double> Gc;  // [c] (empty without gating)
  at::Tensor kf;           // [c]      exp(L - Gc_j): keys discounted to the chunk end
  at::Tensor qf;           // [c * g]  scale^p exp(Gc_i), one per query row
  double decay = 1;        // exp(L)
};

ChunkGates chunk_gates(const Problem& pr, const double* lg, int64_t t0, const at::TensorOptions& o) {
  const int64_t c = pr.chunk, g = pr.g;
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  ChunkGates cg;
  if (lg == nullptr) {
    cg.kf = at::ones({c}, o);
    cg.qf = at::full({c * g}, sp, o);
    return cg;
  }
  cg.Gc.resize(c);
  double acc = 0;
  for (int64_t j = 0; j < c; ++j) cg.Gc[j] = (acc += lg[t0 + j]);
  const double L = acc;
  cg.decay = std::exp(L);
  at::Tensor kf = at::empty({c}, o.dtype(at::kDouble)), qf = at::empty({c * g}, o.dtype(at::kDouble));
  double* kp = kf.data_ptr<double>();
  double* qp = qf.data_ptr<double>();
  for (int64_t j = 0; j < c; ++j) {
    kp[j] = std::exp(L - cg.Gc[j]);
    const double f = sp * std::exp(cg.Gc[j]);
    for (int64_t i = 0; i < g; ++i) qp[j * g + i] = f;
  }
  cg.kf = kf.to(o.dtype());
  cg.qf = qf.to(o.dtype());
  return cg;
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
// LibTorch links libopenblas_nolapack.so.0 and its openblas preset loads libopenblas.so.0 beside it (session 3's
// perf profile found the guard holding only the latter while LibTorch's GEMMs ran on the former, threaded).
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

int64_t quadratic_tile_tokens(const Problem& pr) {
  return std::clamp<int64_t>(kQuadraticTileWeights / std::max<int64_t>(1, pr.g * pr.T), 16, std::max<int64_t>(16, pr.T));
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
  at::Tensor dq = needs.q ? gr.q[bh].view({T_ * g, d}) : at::Tensor();
  at::Tensor dk = needs.k ? gr.k[bh] : at::Tensor();
  at::Tensor dv = needs.v ? gr.v[bh] : at::Tensor();
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
    if (needs.q) dq.narrow(0, i0 * g, R).copy_(at::mm(dP, kt));
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

template <typename T>
void chunked_forward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final,
                          int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const auto o = q.options();
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const double* lp = lg.defined() ? lg[bh].data_ptr<double>() : nullptr;
  const at::Tensor yh = f.y[bh].view({T_ * g, e});
  at::Tensor H = initial.S.defined() ? initial.S[bh].clone() : at::zeros({D, e}, o);
  at::Tensor hv = initial.s.defined() ? initial.s[bh].clone() : at::zeros({D}, o);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0, o);
    if (save) {
      f.states[bh][n].copy_(H);
      f.norms[bh][n].copy_(hv);
    }
    const at::Tensor qc = qr.narrow(0, t0 * g, cg), kc = kh.narrow(0, t0, c), vc = vh.narrow(0, t0, c);

    // queries against the state entering the chunk
    const at::Tensor phiQ = sympow_forward(qc, gt.qf, pr.p);  // [cg, D]
    const at::Tensor Bq = at::mm(phiQ, H), bq = at::mv(phiQ, hv);

    // in-chunk attention
    at::Tensor S = at::mm(qc, kc.t()).contiguous();
    at::Tensor m = f.rowmax[bh].narrow(0, t0 * g, cg), l = at::empty({cg}, o);
    const double* G = gt.Gc.empty() ? nullptr : gt.Gc.data();
    tile_weights_forward<T>(tile_shape<T>(pr, cg, c, 0, 0, G, G), S.data_ptr<T>(), m.data_ptr<T>(), l.data_ptr<T>());
    const at::Tensor numA = at::mm(S, vc);

    // combine, both terms divided by max(1, exp(m))
    const at::Tensor mu = at::clamp_min(m, 0);
    const at::Tensor wa = at::exp(m - mu), ws = at::exp(-mu);
    const at::Tensor den = l * wa + bq * ws;
    f.den[bh].narrow(0, t0 * g, cg).copy_(den);
    at::Tensor num = numA.mul_(wa.unsqueeze(1)).add_(Bq.mul_(ws.unsqueeze(1)));
    yh.narrow(0, t0 * g, cg).copy_(num.mul_(safe_reciprocal(den).unsqueeze(1)));

    // the state leaving the chunk: H <- exp(L) H + phi(K')^T V, h <- exp(L) h + sum phi(K')
    if (n + 1 < N || want_final) {
      const at::Tensor phiK = sympow_forward(kc, gt.kf, pr.p);  // [c, D]
      H.addmm_(phiK.t(), vc, gt.decay, 1.0);
      hv.mul_(gt.decay).add_(phiK.sum(0));
    }
  }
  if (want_final) {
    f.final_state[bh].copy_(H);
    f.final_norm[bh].copy_(hv);
  }
}

template <typename T>
void chunked_backward_head(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                           const State& d_final, Grads& gr, int64_t bh) {
  const int64_t T_ = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T_ / c, cg = c * g;
  const int64_t D = sympow_dim(d, pr.p);
  const auto o = q.options();
  const bool gates = lg.defined() && needs.g;
  const bool key_side = needs.k || needs.v || gates;  // anything downstream of the states
  const bool carry = key_side || needs.state;         // the state gradient travels backwards
  const bool seeded = d_final.S.defined();            // the final state is used downstream
  const at::Tensor qr = q[bh].view({T_ * g, d}), kh = k[bh], vh = v[bh];
  const double* lp = lg.defined() ? lg[bh].data_ptr<double>() : nullptr;
  const at::Tensor yh = f.y[bh].view({T_ * g, e}), dyh = dy[bh].view({T_ * g, e});
  at::Tensor dq = needs.q ? gr.q[bh].view({T_ * g, d}) : at::Tensor();
  at::Tensor dk = needs.k ? gr.k[bh] : at::Tensor();
  at::Tensor dv = needs.v ? gr.v[bh] : at::Tensor();
  double* dlg = gates ? gr.lg[bh].data_ptr<double>() : nullptr;
  // d loss / d (state leaving the chunk being processed)
  at::Tensor dH = seeded ? d_final.S[bh].clone() : at::zeros({D, e}, o);
  at::Tensor dh = seeded ? d_final.s[bh].clone() : at::zeros({D}, o);
  std::vector<T> dGq(gates ? c : 0), dGk(gates ? c : 0);
  for (int64_t n = N - 1; n >= 0; --n) {
    const int64_t t0 = n * c;
    const ChunkGates gt = chunk_gates(pr, lp, t0, o);
    const at::Tensor Hn = f.states[bh][n], hn = f.norms[bh][n];
    const at::Tensor qc = qr.narrow(0, t0 * g, cg), kc = kh.narrow(0, t0, c), vc = vh.narrow(0, t0, c);

    // y = num / den:  dnum = dy / den,  dden = -(dy . y) / den
    const at::Tensor inv = safe_reciprocal(f.den[bh].narrow(0, t0 * g, cg));
    const at::Tensor m = f.rowmax[bh].narrow(0, t0 * g, cg).contiguous();
    const at::Tensor dyc = dyh.narrow(0, t0 * g, cg), yc = yh.narrow(0, t0 * g, cg);
    const at::Tensor dnum = dyc * inv.unsqueeze(1);
    const at::Tensor dden = (dyc * yc).sum(1).mul_(inv).neg_();
    const at::Tensor mu = at::clamp_min(m, 0);
    const at::Tensor wa = at::exp(m - mu), ws = at::exp(-mu);
    double dL = 0;  // d loss / d L_n (the chunk-end cumsum)
    if (gates) {
      std::fill(dGq.begin(), dGq.end(), T(0));
      std::fill(dGk.begin(), dGk.end(), T(0));
    }

    // --- queries against the state: Bq = phi(Q') H_n, bq = phi(Q') h_n
    const at::Tensor dB = dnum * ws.unsqueeze(1), db = dden * ws;
    const at::Tensor phiQ = sympow_forward(qc, gt.qf, pr.p);
    at::Tensor dHdir, dhdir;
    if (carry && (n > 0 || needs.state)) {
      dHdir = at::mm(phiQ.t(), dB);
      dhdir = at::mv(phiQ.t(), db);
    }
    at::Tensor dqc = needs.q ? at::zeros({cg, d}, o) : at::Tensor();
    if (needs.q || gates) {
      at::Tensor dphiQ = at::mm(dB, Hn.t());
      dphiQ.addr_(db, hn);
      auto [dxq, dsq] = sympow_backward(qc, gt.qf, dphiQ, pr.p, needs.q, gates);
      if (needs.q) dqc.add_(dxq);
      if (gates) {  // d qf / d Gc = qf
        const at::Tensor u = (dsq * gt.qf).view({c, g}).sum(1).to(at::kDouble);
        const double* up = u.data_ptr<double>();
        for (int64_t j = 0; j < c; ++j) dGq[j] += static_cast<T>(up[j]);
      }
    }

    // --- the state leaving the chunk: H_{n+1} = exp(L_n) H_n + phi(K')^T V (dH is its gradient)
    at::Tensor dkc = needs.k ? at::zeros({c, d}, o) : at::Tensor();
    at::Tensor dvc = needs.v ? at::zeros({c, e}, o) : at::Tensor();
    if (key_side && (n + 1 < N || seeded)) {
      const at::Tensor phiK = sympow_forward(kc, gt.kf, pr.p);
      if (needs.v) dvc.add_(at::mm(phiK, dH));
      if (needs.k || gates) {
        at::Tensor dphiK = at::mm(vc, dH.t()).add_(dh.unsqueeze(0));
        auto [dxk, dsk] = sympow_backward(kc, gt.kf, dphiK, pr.p, needs.k, gates);
        if (needs.k) dkc.add_(dxk);
        if (gates) {  // d kf / d(L - Gc) = kf
          const at::Tensor u = (dsk * gt.kf).to(at::kDouble);
          const double* up = u.data_ptr<double>();
          for (int64_t j = 0; j < c; ++j) {
            dGk[j] -= static_cast<T>(up[j]);
            dL += up[j];
          }
        }
      }
      if (gates) dL += gt.decay * ((Hn * dH).sum().item<double>() + (hn * dh).sum().item<double>());
    }
    if (carry && (n > 0 || needs.state)) {
      dH.mul_(gt.decay).add_(dHdir);
      dh.mul_(gt.decay).add_(dhdir);
    }

    // --- in-chunk attention
    const at::Tensor dnumA = dnum * wa.unsqueeze(1);
    at::Tensor S = at::mm(qc, kc.t()).contiguous();
    at::Tensor dP = at::mm(dnumA, vc.t()).add_((dden * wa).unsqueeze(1)).contiguous();
    const double* G = gt.Gc.empty() ? nullptr : gt.Gc.data();
    tile_weights_backward<T>(tile_shape<T>(pr, cg, c, 0, 0, G, G), S.data_ptr<T>(), dP.data_ptr<T>(), m.data_ptr<T>(),
                             gates ? dGq.data() : nullptr, gates ? dGk.data() : nullptr);
    if (needs.v) dvc.add_(at::mm(S.t(), dnumA));
    if (needs.q) dqc.add_(at::mm(dP, kc));
    if (needs.k) dkc.add_(at::mm(dP.t(), qc));

    if (needs.q) dq.narrow(0, t0 * g, cg).copy_(dqc);
    if (needs.k) dk.narrow(0, t0, c).copy_(dkc);
    if (needs.v) dv.narrow(0, t0, c).copy_(dvc);
    if (gates) {  // Gc_j = sum_{l <= j} lg_l, L_n = Gc_{c-1}: reverse cumsum within the chunk
      double acc = dL;
      for (int64_t j = c - 1; j >= 0; --j) {
        acc += static_cast<double>(dGq[j]) + static_cast<double>(dGk[j]);
        dlg[t0 + j] = acc;
      }
    }
  }
  if (needs.state) {  // after chunk 0, dH is the gradient of the state entering the sequence
    gr.initial.S[bh].copy_(dH);
    gr.initial.s[bh].copy_(dh);
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

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward, const State& initial, bool want_final) {
  TORCH_CHECK(pr.chunk > 0 || (!initial.S.defined() && !want_final), "power_full: states need the chunked path");
  const auto o = q.options();
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, o);
  f.den = at::empty({pr.BH, pr.T * pr.g}, o);
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, o);
  if (pr.chunk > 0 && save_for_backward) {
    const int64_t D = sympow_dim(pr.d, pr.p), N = pr.T / pr.chunk;
    f.states = at::empty({pr.BH, N, D, pr.e}, o);
    f.norms = at::empty({pr.BH, N, D}, o);
  }
  if (want_final) {
    const int64_t D = sympow_dim(pr.d, pr.p);
    f.final_state = at::empty({pr.BH, D, pr.e}, o);
    f.final_norm = at::empty({pr.BH, D}, o);
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
  if (needs.q) gr.q = at::empty_like(q);
  if (needs.k) gr.k = pr.chunk > 0 ? at::empty_like(k) : at::zeros_like(k);
  if (needs.v) gr.v = pr.chunk > 0 ? at::empty_like(v) : at::zeros_like(v);
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

}  // namespace cpu
}  // namespace power_attention
