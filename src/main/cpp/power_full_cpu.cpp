// power_full_cpu.cpp: the CPU path of power_full. Matrix work goes through ATen's batched matrix products; the
// embedding phi and its backward are the hand-written loops of sympow.cpp. Nothing t x t is formed in the
// chunked form, and no per-token D-sized tensor outlives one block of chunks: backward recomputes phi.
#include "power_full_cpu.h"
#include "sympow.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace power_attention {
namespace cpu {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Work per block, in numbers of the largest temporary (phi of a block's query rows, or a tile's weights).
constexpr int64_t kBlockBudget = int64_t(1) << 23;

// 1 / x where x != 0, else 0 (a row with no weight at all gives y = 0 and no gradient).
at::Tensor safe_reciprocal(const at::Tensor& x) {
  return at::where(x == 0, at::zeros_like(x), x.reciprocal());
}

// ---------------------------------------------------------------------------------------------------------------
// In-chunk (or in-tile) attention, SPEC §3, on a batch of tiles.
// ---------------------------------------------------------------------------------------------------------------

// One batch of attention tiles: each query row sees the keys that `mask` allows.
struct Tile {
  at::Tensor q;     // [B, R, d]  query rows
  at::Tensor k;     // [B, C, d]
  at::Tensor v;     // [B, C, e]
  at::Tensor gq;    // [B, R] fp64 gate cumsum at each row's token, or undefined
  at::Tensor gk;    // [B, C] fp64 gate cumsum at each key, or undefined
  at::Tensor mask;  // [R, C] bool, true where the key is visible (causal)
};

struct TileOut {
  at::Tensor num;  // [B, R, e]  sum_j P_ij v_j
  at::Tensor l;    // [B, R]     sum_j P_ij
  at::Tensor m;    // [B, R]     max_j z_ij (0 for a row with no visible nonzero weight)
};

// G_i - G_j as [B, R, C] in dtype ct (differences taken in fp64), or undefined.
at::Tensor gate_diff(const Tile& tl, at::ScalarType ct) {
  if (!tl.gq.defined()) return at::Tensor();
  return (tl.gq.unsqueeze(2) - tl.gk.unsqueeze(1)).to(ct);
}

// z = p log|s| + G_i - G_j, -inf where masked or s == 0.   s = scale * q k^T.
at::Tensor log_weights(const at::Tensor& s, const at::Tensor& gd, const at::Tensor& mask, int64_t p) {
  at::Tensor z = s.abs().log_().mul_(static_cast<double>(p));
  if (gd.defined()) z.add_(gd);
  z.masked_fill_(mask.logical_not(), kNegInf);
  return z;
}

TileOut tile_forward(const Tile& tl, int64_t p, double scale) {
  const auto ct = tl.q.scalar_type();
  const at::Tensor s = at::bmm(tl.q, tl.k.transpose(1, 2)).mul_(scale);
  at::Tensor z = log_weights(s, gate_diff(tl, ct), tl.mask, p);
  at::Tensor m = std::get<0>(z.max(-1));
  m.masked_fill_(m == kNegInf, 0);
  at::Tensor P = z.sub_(m.unsqueeze(-1)).exp_();
  if (p % 2 == 1) P.mul_(s.sign());
  return {at::bmm(P, tl.v), P.sum(-1), m};
}

struct TileGrads {
  at::Tensor q, k, v;  // [B, R, d], [B, C, d], [B, C, e]
  at::Tensor gq, gk;   // [B, R], [B, C]: gradients of the gate cumsums
};

// Backward of tile_forward's (num, l) with m held constant (it cancels in the output).
TileGrads tile_backward(const Tile& tl, const at::Tensor& m, const at::Tensor& dnum, const at::Tensor& dl,
                        int64_t p, double scale, const Needs& needs) {
  const auto ct = tl.q.scalar_type();
  TileGrads out;
  const at::Tensor s = at::bmm(tl.q, tl.k.transpose(1, 2)).mul_(scale);
  const at::Tensor gd = gate_diff(tl, ct);
  const at::Tensor logabs = s.abs().log_();
  at::Tensor z = logabs * static_cast<double>(p);
  if (gd.defined()) z.add_(gd);
  const at::Tensor notmask = tl.mask.logical_not();
  z.masked_fill_(notmask, kNegInf);
  at::Tensor P = z.sub_(m.unsqueeze(-1)).exp_();
  if (p % 2 == 1) P.mul_(s.sign());
  if (needs.v) out.v = at::bmm(P.transpose(1, 2), dnum);
  if (!(needs.q || needs.k || needs.g)) return out;
  // dP_ij = dnum_i . v_j + dl_i
  at::Tensor dP = at::baddbmm(dl.unsqueeze(-1), dnum, tl.v.transpose(1, 2));
  if (needs.g) {
    const at::Tensor dz = dP * P;  // dP/dz = P
    out.gq = dz.sum(-1);
    out.gk = dz.sum(1).neg_();
  }
  if (needs.q || needs.k) {
    // dP/ds = p s^(p-1) exp(G_i - G_j - m_i), evaluated in log space like P itself.
    at::Tensor zp = (p == 1) ? (gd.defined() ? gd.clone() : at::zeros_like(s)) : logabs * static_cast<double>(p - 1);
    if (p != 1 && gd.defined()) zp.add_(gd);
    zp.masked_fill_(notmask, kNegInf);
    at::Tensor dPds = zp.sub_(m.unsqueeze(-1)).exp_().mul_(static_cast<double>(p));
    if (p % 2 == 0) dPds.mul_(s.sign());
    const at::Tensor ds = dP.mul_(dPds).mul_(scale);
    if (needs.q) out.q = at::bmm(ds, tl.k);
    if (needs.k) out.k = at::bmm(ds.transpose(1, 2), tl.q);
  }
  return out;
}

// Causal mask of a tile whose rows are tokens [r0, r0 + rows) (g rows each) and whose keys are [0, keys).
at::Tensor causal_mask(int64_t r0, int64_t rows, int64_t g, int64_t keys, const at::TensorOptions& o) {
  const at::Tensor rt = at::arange(r0, r0 + rows, o.dtype(at::kLong)).repeat_interleave(g);  // [rows * g]
  const at::Tensor kt = at::arange(0, keys, o.dtype(at::kLong));
  return kt.unsqueeze(0) <= rt.unsqueeze(1);
}

// ---------------------------------------------------------------------------------------------------------------
// Quadratic form: query tiles over the whole sequence, keys [0, tile end).
// ---------------------------------------------------------------------------------------------------------------

int64_t quadratic_tile_tokens(const Problem& pr) {
  const int64_t per_token = std::max<int64_t>(1, pr.BH * pr.g * pr.T);
  return std::clamp<int64_t>(kBlockBudget / per_token, 16, std::max<int64_t>(pr.T, 16));
}

Forward quadratic_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& lg) {
  const int64_t BH = pr.BH, T = pr.T, g = pr.g, e = pr.e;
  const at::Tensor G = lg.defined() ? lg.cumsum(1) : at::Tensor();  // fp64
  Forward f;
  f.y = at::empty({BH, T, g, e}, q.options());
  f.den = at::empty({BH, T * g}, q.options());
  f.rowmax = at::empty({BH, T * g}, q.options());
  const int64_t tile = quadratic_tile_tokens(pr);
  for (int64_t i0 = 0; i0 < T; i0 += tile) {
    const int64_t i1 = std::min(T, i0 + tile), rows = i1 - i0;
    Tile tl;
    tl.q = q.narrow(1, i0, rows).reshape({BH, rows * g, pr.d});
    tl.k = k.narrow(1, 0, i1);
    tl.v = v.narrow(1, 0, i1);
    if (G.defined()) {
      tl.gq = G.narrow(1, i0, rows).repeat_interleave(g, 1);
      tl.gk = G.narrow(1, 0, i1);
    }
    tl.mask = causal_mask(i0, rows, g, i1, q.options());
    const TileOut o = tile_forward(tl, pr.p, pr.scale);
    f.y.narrow(1, i0, rows).copy_((o.num * safe_reciprocal(o.l).unsqueeze(-1)).view({BH, rows, g, e}));
    f.den.narrow(1, i0 * g, rows * g).copy_(o.l);
    f.rowmax.narrow(1, i0 * g, rows * g).copy_(o.m);
  }
  return f;
}

Grads quadratic_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs) {
  const int64_t BH = pr.BH, T = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const bool gates = lg.defined() && needs.g;
  const at::Tensor G = lg.defined() ? lg.cumsum(1) : at::Tensor();
  Grads gr;
  if (needs.q) gr.q = at::empty_like(q);
  if (needs.k) gr.k = at::zeros_like(k);
  if (needs.v) gr.v = at::zeros_like(v);
  at::Tensor dG = gates ? at::zeros({BH, T}, q.options()) : at::Tensor();
  Needs tn = needs;
  tn.g = gates;
  const int64_t tile = quadratic_tile_tokens(pr);
  for (int64_t i0 = 0; i0 < T; i0 += tile) {
    const int64_t i1 = std::min(T, i0 + tile), rows = i1 - i0;
    Tile tl;
    tl.q = q.narrow(1, i0, rows).reshape({BH, rows * g, d});
    tl.k = k.narrow(1, 0, i1);
    tl.v = v.narrow(1, 0, i1);
    if (G.defined()) {
      tl.gq = G.narrow(1, i0, rows).repeat_interleave(g, 1);
      tl.gk = G.narrow(1, 0, i1);
    }
    tl.mask = causal_mask(i0, rows, g, i1, q.options());
    // y = num / l:  dnum = dy / l,  dl = -(dy . y) / l
    const at::Tensor inv = safe_reciprocal(f.den.narrow(1, i0 * g, rows * g));
    const at::Tensor dyt = dy.narrow(1, i0, rows).reshape({BH, rows * g, e});
    const at::Tensor yt = f.y.narrow(1, i0, rows).reshape({BH, rows * g, e});
    const at::Tensor dnum = dyt * inv.unsqueeze(-1);
    const at::Tensor dl = (dyt * yt).sum(-1).mul_(inv).neg_();
    const TileGrads tg = tile_backward(tl, f.rowmax.narrow(1, i0 * g, rows * g), dnum, dl, pr.p, pr.scale, tn);
    if (needs.q) gr.q.narrow(1, i0, rows).copy_(tg.q.view({BH, rows, g, d}));
    if (needs.k) gr.k.narrow(1, 0, i1).add_(tg.k);
    if (needs.v) gr.v.narrow(1, 0, i1).add_(tg.v);
    if (gates) {
      dG.narrow(1, i0, rows).add_(tg.gq.view({BH, rows, g}).sum(-1));
      dG.narrow(1, 0, i1).add_(tg.gk);
    }
  }
  if (gates) gr.lg = dG.to(at::kDouble).flip(1).cumsum(1).flip(1);  // G = cumsum(lg): reverse cumsum
  return gr;
}

// ---------------------------------------------------------------------------------------------------------------
// Chunked form, SPEC §4, in blocks of (head group) x (consecutive chunks).
// ---------------------------------------------------------------------------------------------------------------

// The gate factors of one block, [gb, nb, c] (decay [gb, nb]), in the compute dtype.
struct Gates {
  at::Tensor Gc;     // local inclusive cumsum in the chunk (fp64), undefined without gating
  at::Tensor kf;     // exp(L_n - Gc_j): keys discounted to the chunk end
  at::Tensor qf;     // scale^p * exp(Gc_i): queries discounted from the chunk start, scale folded in
  at::Tensor decay;  // exp(L_n)
};

Gates block_gates(const Problem& pr, const at::Tensor& lg, int64_t h0, int64_t gb, int64_t n0, int64_t nb,
                  const at::TensorOptions& o) {
  const int64_t c = pr.chunk;
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  Gates gt;
  if (!lg.defined()) {
    gt.kf = at::ones({gb, nb, c}, o);
    gt.qf = at::full({gb, nb, c}, sp, o);
    gt.decay = at::ones({gb, nb}, o);
    return gt;
  }
  gt.Gc = lg.narrow(0, h0, gb).narrow(1, n0 * c, nb * c).reshape({gb, nb, c}).cumsum(-1);
  const at::Tensor L = gt.Gc.select(-1, c - 1);
  gt.kf = at::exp(L.unsqueeze(-1) - gt.Gc).to(o.dtype());
  gt.qf = (at::exp(gt.Gc) * sp).to(o.dtype());
  gt.decay = at::exp(L).to(o.dtype());
  return gt;
}

struct Blocking {
  int64_t gb, nb;  // heads per group, chunks per block
};

Blocking chunk_blocking(const Problem& pr) {
  const int64_t D = sympow_dim(pr.d, pr.p);
  const int64_t per_head_chunk = std::max<int64_t>(1, pr.chunk * pr.g * std::max<int64_t>(D, pr.chunk));
  const int64_t N = pr.T / pr.chunk;
  if (per_head_chunk * pr.BH <= kBlockBudget) {
    return {pr.BH, std::clamp<int64_t>(kBlockBudget / (per_head_chunk * pr.BH), 1, N)};
  }
  return {std::clamp<int64_t>(kBlockBudget / per_head_chunk, 1, pr.BH), 1};
}

// Rows of a block as [gb * nb, rows_per_chunk, width], contiguous.
at::Tensor block_rows(const at::Tensor& x, int64_t h0, int64_t gb, int64_t t0, int64_t ntok, int64_t nb) {
  at::Tensor s = x.narrow(0, h0, gb).narrow(1, t0, ntok);
  const int64_t width = s.size(-1);
  return s.reshape({gb * nb, -1, width}).contiguous();
}

Forward chunked_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& lg, bool save) {
  const int64_t BH = pr.BH, T = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T / c;
  const int64_t D = sympow_dim(d, pr.p);
  const auto o = q.options();
  Forward f;
  f.y = at::empty({BH, T, g, e}, o);
  f.den = at::empty({BH, T * g}, o);
  f.rowmax = at::empty({BH, T * g}, o);
  if (save) {
    f.states = at::empty({BH, N, D, e}, o);
    f.norms = at::empty({BH, N, D}, o);
  }
  const Blocking bl = chunk_blocking(pr);
  const at::Tensor mask = causal_mask(0, c, g, c, o);
  for (int64_t h0 = 0; h0 < BH; h0 += bl.gb) {
    const int64_t gb = std::min(bl.gb, BH - h0);
    at::Tensor H = at::zeros({gb, D, e}, o), hn = at::zeros({gb, D}, o);
    for (int64_t n0 = 0; n0 < N; n0 += bl.nb) {
      const int64_t nb = std::min(bl.nb, N - n0), t0 = n0 * c, ntok = nb * c, B = gb * nb;
      const Gates gt = block_gates(pr, lg, h0, gb, n0, nb, o);
      const at::Tensor kb = block_rows(k, h0, gb, t0, ntok, nb);                      // [B, c, d]
      const at::Tensor vb = block_rows(v, h0, gb, t0, ntok, nb);                      // [B, c, e]
      const at::Tensor qb = q.narrow(0, h0, gb).narrow(1, t0, ntok).reshape({B, c * g, d}).contiguous();

      // chunk states S_n = phi(K')^T V, s_n = sum phi(K')
      const at::Tensor phiK = sympow_forward(kb.view({B * c, d}), gt.kf.reshape({B * c}).contiguous(), pr.p)
                                  .view({B, c, D});
      const at::Tensor S = at::bmm(phiK.transpose(1, 2), vb).view({gb, nb, D, e});
      const at::Tensor sn = phiK.sum(1).view({gb, nb, D});

      // gated prefix: the state entering each chunk of the block
      at::Tensor Hb = save ? f.states.narrow(0, h0, gb).narrow(1, n0, nb) : at::empty({gb, nb, D, e}, o);
      at::Tensor hb = save ? f.norms.narrow(0, h0, gb).narrow(1, n0, nb) : at::empty({gb, nb, D}, o);
      for (int64_t n = 0; n < nb; ++n) {
        Hb.select(1, n).copy_(H);
        hb.select(1, n).copy_(hn);
        const at::Tensor dn = gt.decay.select(1, n);
        H = at::addcmul(S.select(1, n), H, dn.view({gb, 1, 1}));
        hn = at::addcmul(sn.select(1, n), hn, dn.view({gb, 1}));
      }

      // queries against the states entering their chunks
      const at::Tensor qf = gt.qf.reshape({B, c, 1}).expand({B, c, g}).reshape({B * c * g}).contiguous();
      const at::Tensor phiQ = sympow_forward(qb.view({B * c * g, d}), qf, pr.p).view({B, c * g, D});
      const at::Tensor Bq = at::bmm(phiQ, Hb.reshape({B, D, e}));
      const at::Tensor bq = at::bmm(phiQ, hb.reshape({B, D, 1})).squeeze(-1);

      // in-chunk attention
      Tile tl{qb, kb, vb, at::Tensor(), at::Tensor(), mask};
      if (gt.Gc.defined()) {
        tl.gk = gt.Gc.reshape({B, c});
        tl.gq = tl.gk.repeat_interleave(g, 1);
      }
      const TileOut a = tile_forward(tl, pr.p, pr.scale);

      // combine, both terms divided by max(1, exp(m))
      const at::Tensor mu = at::clamp_min(a.m, 0);
      const at::Tensor wa = at::exp(a.m - mu), ws = at::exp(-mu);
      const at::Tensor num = a.num * wa.unsqueeze(-1) + Bq * ws.unsqueeze(-1);
      const at::Tensor den = a.l * wa + bq * ws;
      f.y.narrow(0, h0, gb).narrow(1, t0, ntok).copy_((num * safe_reciprocal(den).unsqueeze(-1)).view({gb, ntok, g, e}));
      f.den.narrow(0, h0, gb).narrow(1, t0 * g, ntok * g).copy_(den.view({gb, ntok * g}));
      f.rowmax.narrow(0, h0, gb).narrow(1, t0 * g, ntok * g).copy_(a.m.view({gb, ntok * g}));
    }
  }
  return f;
}

Grads chunked_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs) {
  const int64_t BH = pr.BH, T = pr.T, g = pr.g, d = pr.d, e = pr.e, c = pr.chunk, N = T / c;
  const int64_t D = sympow_dim(d, pr.p);
  const auto o = q.options();
  const bool gates = lg.defined() && needs.g;
  Grads gr;
  if (needs.q) gr.q = at::empty_like(q);
  if (needs.k) gr.k = at::empty_like(k);
  if (needs.v) gr.v = at::empty_like(v);
  if (gates) gr.lg = at::empty({BH, T}, lg.options());
  Needs tn = needs;
  tn.g = gates;
  const bool key_side = needs.k || needs.v || gates;  // anything downstream of the states
  const Blocking bl = chunk_blocking(pr);
  const at::Tensor mask = causal_mask(0, c, g, c, o);
  for (int64_t h0 = 0; h0 < BH; h0 += bl.gb) {
    const int64_t gb = std::min(bl.gb, BH - h0);
    at::Tensor dH = at::zeros({gb, D, e}, o), dh = at::zeros({gb, D}, o);  // d loss / d state leaving the block
    const int64_t nblocks = (N + bl.nb - 1) / bl.nb;
    for (int64_t bi = nblocks - 1; bi >= 0; --bi) {
      const int64_t n0 = bi * bl.nb, nb = std::min(bl.nb, N - n0), t0 = n0 * c, ntok = nb * c, B = gb * nb;
      const Gates gt = block_gates(pr, lg, h0, gb, n0, nb, o);
      const at::Tensor kb = block_rows(k, h0, gb, t0, ntok, nb);
      const at::Tensor vb = block_rows(v, h0, gb, t0, ntok, nb);
      const at::Tensor qb = q.narrow(0, h0, gb).narrow(1, t0, ntok).reshape({B, c * g, d}).contiguous();
      const at::Tensor Hb = f.states.narrow(0, h0, gb).narrow(1, n0, nb);  // [gb, nb, D, e]
      const at::Tensor hb = f.norms.narrow(0, h0, gb).narrow(1, n0, nb);   // [gb, nb, D]

      // y = num / den:  dnum = dy / den,  dden = -(dy . y) / den
      const at::Tensor inv = safe_reciprocal(f.den.narrow(0, h0, gb).narrow(1, t0 * g, ntok * g).reshape({B, c * g}));
      const at::Tensor m = f.rowmax.narrow(0, h0, gb).narrow(1, t0 * g, ntok * g).reshape({B, c * g});
      const at::Tensor dyb = dy.narrow(0, h0, gb).narrow(1, t0, ntok).reshape({B, c * g, e});
      const at::Tensor yb = f.y.narrow(0, h0, gb).narrow(1, t0, ntok).reshape({B, c * g, e});
      const at::Tensor dnum = dyb * inv.unsqueeze(-1);
      const at::Tensor dden = (dyb * yb).sum(-1).mul_(inv).neg_();
      const at::Tensor mu = at::clamp_min(m, 0);
      const at::Tensor wa = at::exp(m - mu), ws = at::exp(-mu);

      at::Tensor dq_b = needs.q ? at::zeros({B, c * g, d}, o) : at::Tensor();
      at::Tensor dk_b = needs.k ? at::zeros({B, c, d}, o) : at::Tensor();
      at::Tensor dv_b = needs.v ? at::zeros({B, c, e}, o) : at::Tensor();
      at::Tensor dGc = gates ? at::zeros({B, c}, o) : at::Tensor();  // d loss / d Gc (local cumsum)
      at::Tensor dL = gates ? at::zeros({gb, nb}, o) : at::Tensor();  // d loss / d L_n (chunk-end cumsum)

      // --- queries against the states: Bq = phi(Q') H, bq = phi(Q') h
      const at::Tensor dB = dnum * ws.unsqueeze(-1);  // [B, cg, e]
      const at::Tensor db = dden * ws;                // [B, cg]
      const at::Tensor qf = gt.qf.reshape({B, c, 1}).expand({B, c, g}).reshape({B * c * g}).contiguous();
      const at::Tensor phiQ = sympow_forward(qb.view({B * c * g, d}), qf, pr.p).view({B, c * g, D});
      at::Tensor dHdir, dhdir;
      if (key_side) {
        dHdir = at::bmm(phiQ.transpose(1, 2), dB).view({gb, nb, D, e});
        dhdir = at::bmm(phiQ.transpose(1, 2), db.unsqueeze(-1)).view({gb, nb, D});
      }
      if (needs.q || gates) {
        at::Tensor dphiQ = at::bmm(dB, Hb.reshape({B, D, e}).transpose(1, 2));
        dphiQ.add_(db.unsqueeze(-1) * hb.reshape({B, 1, D}));
        auto [dxq, dsq] = sympow_backward(qb.view({B * c * g, d}), qf, dphiQ.view({B * c * g, D}), pr.p, needs.q, gates);
        if (needs.q) dq_b.add_(dxq.view({B, c * g, d}));
        if (gates) dGc.add_((dsq * qf).view({B, c, g}).sum(-1));  // d qf / d Gc = qf
      }

      // --- reverse scan over the block: H_{n+1} = exp(L_n) H_n + S_n
      at::Tensor dS, ds;
      if (key_side) {
        dS = at::empty({gb, nb, D, e}, o);
        ds = at::empty({gb, nb, D}, o);
        for (int64_t n = nb - 1; n >= 0; --n) {
          dS.select(1, n).copy_(dH);
          ds.select(1, n).copy_(dh);
          const at::Tensor dn = gt.decay.select(1, n);
          if (gates) {
            const at::Tensor inner = (Hb.select(1, n) * dH).sum({1, 2}) + (hb.select(1, n) * dh).sum(1);
            dL.select(1, n).add_(inner * dn);
          }
          dH = at::addcmul(dHdir.select(1, n), dH, dn.view({gb, 1, 1}));
          dh = at::addcmul(dhdir.select(1, n), dh, dn.view({gb, 1}));
        }
      }

      // --- chunk states: S_n = phi(K')^T V, s_n = sum phi(K')
      if (key_side) {
        const at::Tensor kf = gt.kf.reshape({B * c}).contiguous();
        const at::Tensor phiK = sympow_forward(kb.view({B * c, d}), kf, pr.p).view({B, c, D});
        const at::Tensor dSb = dS.view({B, D, e});
        if (needs.v) dv_b.add_(at::bmm(phiK, dSb));
        if (needs.k || gates) {
          at::Tensor dphiK = at::bmm(vb, dSb.transpose(1, 2));
          dphiK.add_(ds.view({B, 1, D}));
          auto [dxk, dsk] = sympow_backward(kb.view({B * c, d}), kf, dphiK.view({B * c, D}), pr.p, needs.k, gates);
          if (needs.k) dk_b.add_(dxk.view({B, c, d}));
          if (gates) {
            const at::Tensor u = (dsk * kf).view({B, c});  // d kf / d(L - Gc) = kf
            dGc.sub_(u);
            dL.add_(u.sum(-1).view({gb, nb}));
          }
        }
      }

      // --- in-chunk attention
      Tile tl{qb, kb, vb, at::Tensor(), at::Tensor(), mask};
      if (gt.Gc.defined()) {
        tl.gk = gt.Gc.reshape({B, c});
        tl.gq = tl.gk.repeat_interleave(g, 1);
      }
      const TileGrads tg = tile_backward(tl, m, dnum * wa.unsqueeze(-1), dden * wa, pr.p, pr.scale, tn);
      if (needs.q) dq_b.add_(tg.q);
      if (needs.k) dk_b.add_(tg.k);
      if (needs.v) dv_b.add_(tg.v);

      if (needs.q) gr.q.narrow(0, h0, gb).narrow(1, t0, ntok).copy_(dq_b.view({gb, ntok, g, d}));
      if (needs.k) gr.k.narrow(0, h0, gb).narrow(1, t0, ntok).copy_(dk_b.view({gb, ntok, d}));
      if (needs.v) gr.v.narrow(0, h0, gb).narrow(1, t0, ntok).copy_(dv_b.view({gb, ntok, e}));
      if (gates) {
        dGc.add_(tg.gq.view({B, c, g}).sum(-1)).add_(tg.gk);
        dGc.select(1, c - 1).add_(dL.reshape({B}));  // L_n is Gc at the chunk's last token
        const at::Tensor dlg = dGc.to(at::kDouble).flip(1).cumsum(1).flip(1);
        gr.lg.narrow(0, h0, gb).narrow(1, t0, ntok).copy_(dlg.view({gb, ntok}));
      }
    }
  }
  return gr;
}

}  // namespace

int64_t saved_state_bytes(const Problem& pr) {
  if (pr.chunk <= 0) return 0;
  const int64_t D = sympow_dim(pr.d, pr.p);
  const int64_t elem = 4;  // fp32 (fp64 doubles it; the check uses the compute dtype's size through the caller)
  return pr.BH * (pr.T / pr.chunk) * D * (pr.e + 1) * elem;
}

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward) {
  return pr.chunk > 0 ? chunked_forward(pr, q, k, v, lg, save_for_backward) : quadratic_forward(pr, q, k, v, lg);
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs) {
  return pr.chunk > 0 ? chunked_backward(pr, q, k, v, lg, saved, dy, needs)
                      : quadratic_backward(pr, q, k, v, lg, saved, dy, needs);
}

}  // namespace cpu
}  // namespace power_attention
