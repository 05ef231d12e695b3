// attention_tile_cuda.cu: fused causal power attention on tiles (see attention_tile_cuda.h), bf16 / fp16 on the
// tensor cores through mma.sync m16n8k16 (sm_80 and newer), fp32 accumulation, scores kept in registers.
//
// Three kernels, each a CTA of 4 warps:
//   tile_fwd_kernel      64 query rows (16 a warp) against key tiles of 64, online row maximum (flash style);
//   tile_bwd_dq_kernel   64 query rows against key tiles: recomputes P with the saved m, accumulates dq and the
//                        rows' dz sums;
//   tile_bwd_dkv_kernel  64 keys (16 a warp) against steps of query rows: accumulates dk, dv and the keys' dz sums.
// K/V (or Q/dY) tiles stream through shared memory with cp.async, two stages; fragments come from ldmatrix.
#include "cuda/attention/attention_tile.h"

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/row_map.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace {

using namespace mma;

constexpr int kThreads = 128;  // 4 warps
constexpr int kRows = 64;      // query rows of a forward / dq CTA, keys of a dkv CTA
constexpr float kNegInf = -__builtin_huge_valf();

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

using Map = RowMap;  // row_map.cuh

struct Args {
  int64_t X, R, C;
  int g, p;
  float lp2;          // p log2(scale)
  const float* gmin;  // [X]: min over the block's keys of G, or null (no gates)
  Map mq, mk, mv, my;  // loads: q, k, v, dy
  Map oq, ok, ov;      // outputs in the input dtype: dq (and the forward's y, with my), dk, dv
};

// Rows [row0, row0 + ROWS) of block `src` (already at the block's base) into a shared tile with row stride S; rows
// past n are zeros. API: through the map mp; else the compute layout (rows of W elements, the map unread).
template <bool API, int W, int ROWS, int S = W + 8>
__device__ __forceinline__ void load_mapped(u16* dst, const u16* src, const Map& mp, int64_t row0, int64_t n) {
  if constexpr (API) {
    load_rows_mapped<W, ROWS, kThreads, S>(dst, src, mp, row0, n);
  } else {
    load_rows<W, ROWS, kThreads, S>(dst, src, row0, n);
  }
}
// The element offset of block x of an operand: through the map (API), or x rows w (the compute layout).
template <bool API>
__device__ __forceinline__ int64_t block_base(const Map& mp, int64_t x, int64_t rows, int w) {
  if constexpr (API) {
    return mp.base(x);
  } else {
    return x * rows * w;
  }
}
// The rows of block x that exist, of `rows` (the chunked form's last chunk ends at t; the compute layout's padding
// rows are zeros in memory).
template <bool API>
__device__ __forceinline__ int64_t block_rows(const Map& mp, int64_t x, int64_t rows) {
  if constexpr (API) {
    return mp.rows(x, rows);
  } else {
    return rows;
  }
}

// Degree 2 in the backward: w = s^2 2^(c_i - G_j log2 e) and dz p / s = 2 t s 2^(...) need one MUFU a score instead
// of three (lg2, ex2 and the division's reciprocal). The factor 2^(...) is finite while c_i - min_j G_j log2 e < 120
// (the row's "room"; the product itself is a weight <= 1); rows without room take the log form.
constexpr float kRoom = 120.f;

// Scores work in log2 units: z2 = p log2|s| + (p log2 scale + G_i log2 e) - G_j log2 e, weights 2^(z2 - m2).
// MUFU approximations (ex2.approx, lg2.approx): a few ulp, far under the bf16 operands' rounding.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Stores a [16 x W] accumulator tile (rows ra / ra + 8 of the warp) to out [rows, W] (fp32), adding when asked.
template <int W>
__device__ __forceinline__ void store_rows(float* out, const float (&acc)[W / 8][4], int64_t ra, int64_t n,
                                           bool accumulate) {
  const int tg = threadIdx.x & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = ra + 8 * half;
    if (r >= n) continue;
    float* o = out + r * W;
#pragma unroll
    for (int f = 0; f < W / 8; ++f) {
      float2* p = reinterpret_cast<float2*>(o + f * 8 + tg * 2);
      float2 v = make_float2(acc[f][2 * half], acc[f][2 * half + 1]);
      if (accumulate) {
        const float2 old = *p;
        v.x += old.x;
        v.y += old.y;
      }
      *p = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------

// Stores a [16 x W] accumulator tile (rows ra / ra + 8 of the warp, those under n) in the input dtype through map
// mp (out at the block's base), plus `add` (fp32, the block's rows of W in the compute layout) when given.
template <bool BF, int W>
__device__ __forceinline__ void store_mapped(u16* out, const Map& mp, const float (&acc)[W / 8][4], int64_t ra,
                                             int64_t n, const float* add = nullptr) {
  const int tg = threadIdx.x & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = ra + 8 * half;
    if (r >= n) continue;
    u16* o = out + mp.row(r);
#pragma unroll
    for (int f = 0; f < W / 8; ++f) {
      float2 v = make_float2(acc[f][2 * half], acc[f][2 * half + 1]);
      if (add) {
        const float2 p = *reinterpret_cast<const float2*>(add + r * W + f * 8 + tg * 2);
        v.x += p.x;
        v.y += p.y;
      }
      *reinterpret_cast<u32*>(o + f * 8 + tg * 2) = pack2<BF>(v.x, v.y);
    }
  }
}

template <int D, int E>
constexpr size_t fwd_smem() {
  return sizeof(u16) * (kRows * (D + 8) + 2 * 64 * (D + 8) + 2 * 64 * (E + 8)) + sizeof(float) * 2 * 64;
}

template <bool BF, int D, int E, bool API>
__global__ void __launch_bounds__(kThreads) tile_fwd_kernel(Args a, const u16* __restrict__ q,
                                                            const u16* __restrict__ k, const u16* __restrict__ v,
                                                            const float* __restrict__ G, float* __restrict__ num,
                                                            float* __restrict__ mo, float* __restrict__ lo,
                                                            bool normalize, u16* __restrict__ yo) {
  constexpr int BN = 64, SD = D + 8, SE = E + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sQ = reinterpret_cast<u16*>(smem);
  u16* sK = sQ + kRows * SD;
  u16* sV = sK + 2 * BN * SD;
  float* sG = reinterpret_cast<float*>(sV + 2 * BN * SE);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t tiles = (a.R + kRows - 1) / kRows;
  const int64_t x = blockIdx.x % a.X, rt = tiles - 1 - blockIdx.x / a.X;  // the longest rows first
  const int64_t r0 = rt * kRows, R = a.R, C = a.C;
  const u16* qx = q + block_base<API>(a.mq, x, R, D);
  const u16* kx = k + block_base<API>(a.mk, x, C, D);
  const u16* vx = v + block_base<API>(a.mv, x, C, E);
  const int64_t nq = block_rows<API>(a.mq, x, R), nk = block_rows<API>(a.mk, x, C);  // rows in memory
  const float* Gx = G ? G + x * C : nullptr;
  const int64_t nkeys = (std::min<int64_t>(r0 + kRows, R) - 1) / a.g + 1;
  const int ntiles = static_cast<int>((nkeys + BN - 1) / BN);
  auto load_kv = [&](int jt, int buf) {
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    load_mapped<API, D, BN>(sK + buf * BN * SD, kx, a.mk, j0, nk);
    load_mapped<API, E, BN>(sV + buf * BN * SE, vx, a.mv, j0, nk);
    if (Gx)
      for (int i = threadIdx.x; i < BN; i += kThreads) cp_async4(sG + buf * BN + i, Gx + std::min(j0 + i, C - 1), j0 + i < C);
  };
  load_mapped<API, D, kRows>(sQ, qx, a.mq, r0, nq);
  load_kv(0, 0);
  cp_async_commit();

  const int64_t rw = r0 + warp * 16, ra = rw + gr, rb = ra + 8;
  const int64_t visa = ra < R ? ra / a.g + 1 : 0, visb = rb < R ? rb / a.g + 1 : 0;
  const int64_t vis_warp = rw < R ? rw / a.g + 1 : 0;  // keys every row of the warp sees
  // row terms of z2 (log2 units): p log2 scale + G_i log2 e
  const float ca = a.lp2 + ((Gx && ra < R) ? Gx[ra / a.g] * kLog2e : 0.f);
  const float cb = a.lp2 + ((Gx && rb < R) ? Gx[rb / a.g] * kLog2e : 0.f);
  const float pf = static_cast<float>(a.p);
  const bool odd = a.p & 1;
  u32 qf[D / 16][4];
  float o[E / 8][4];
  zero(o);
  float ma = kNegInf, mb = kNegInf, la = 0.f, lb = 0.f, ua = 0.f, ub = 0.f;
  // the rows' running maxima (log2 units) move up to na / nb: what was summed against the old ones is rescaled
  // (nothing was, while they are -inf)
  auto raise_max = [&](float na, float nb) {
    const float fa = ma == kNegInf ? 0.f : ex2(ma - na), fb = mb == kNegInf ? 0.f : ex2(mb - nb);
    ma = na, mb = nb;
    ua = ma == kNegInf ? 0.f : ma;
    ub = mb == kNegInf ? 0.f : mb;
    la *= fa;
    lb *= fb;
#pragma unroll
    for (int f = 0; f < E / 8; ++f) {
      o[f][0] *= fa;
      o[f][1] *= fa;
      o[f][2] *= fb;
      o[f][3] *= fb;
    }
  };

  for (int jt = 0; jt < ntiles; ++jt) {
    if (jt + 1 < ntiles) load_kv(jt + 1, (jt + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (jt == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldsm4(qf[kk], at_a(sQ, SD, warp * 16, kk * 16));
    }
    const u16* cK = sK + (jt & 1) * BN * SD;
    const u16* cV = sV + (jt & 1) * BN * SE;
    const float* cG = sG + (jt & 1) * BN;

    float s[BN / 8][4];
    zero(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        u32 b[4];
        ldsm4(b, at_b(cK, SD, nn * 16, kk * 16));
        mma16816<BF>(s[2 * nn], qf[kk], b[0], b[1]);
        mma16816<BF>(s[2 * nn + 1], qf[kk], b[2], b[3]);
      }
    }
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    const bool full = j0 + BN <= vis_warp;  // no causal mask in this tile for this warp
    // Degree 2 without a MUFU a score: w = s^2 kf_j 2^(c_i + gref - m_i), kf_j = 2^(-g_j - gref) <= 1 with gref the
    // tile's largest -g_j (a MUFU a key), one lg2 and one ex2 a row. Taken when the whole warp's tile is in range:
    // the tile's gates span at most 2^64 and every row with visible keys has a largest s^2 kf in [2^-60, 2^100]
    // (so nothing that matters underflows or overflows); otherwise the log form below.
    bool powered = false;
    if (a.p == 2) {
      float gmax = 0.f, gmin = 0.f;
      if (Gx) {
        gmax = kNegInf, gmin = -kNegInf;
#pragma unroll
        for (int nf = 0; nf < BN / 8; ++nf)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float ng = -cG[nf * 8 + tg * 2 + h] * kLog2e;
            gmax = fmaxf(gmax, ng);
            gmin = fminf(gmin, ng);
          }
        gmax = quad_max(gmax);  // every quad holds all of the tile's keys: the same in every lane
        gmin = -quad_max(-gmin);
      }
      if (gmax - gmin <= 64.f) {
        // kf, then the rows' largest s^2 kf over visible keys (s stays: the log form may still be taken)
        float kf[BN / 8][2], ta = 0.f, tb = 0.f;
#pragma unroll
        for (int nf = 0; nf < BN / 8; ++nf)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            kf[nf][h] = Gx ? ex2(-cG[nf * 8 + tg * 2 + h] * kLog2e - gmax) : 1.f;
            float wa = s[nf][h] * s[nf][h] * kf[nf][h], wb = s[nf][2 + h] * s[nf][2 + h] * kf[nf][h];
            if (!full) {
              const int64_t j = j0 + nf * 8 + tg * 2 + h;
              wa = j < visa ? wa : 0.f;
              wb = j < visb ? wb : 0.f;
            }
            ta = fmaxf(ta, wa);
            tb = fmaxf(tb, wb);
          }
        ta = quad_max(ta);
        tb = quad_max(tb);
        const bool bada = visa > j0 && !(ta >= 0x1p-60f && ta <= 0x1p100f);
        const bool badb = visb > j0 && !(tb >= 0x1p-60f && tb <= 0x1p100f);
        if (!__any_sync(0xffffffffu, bada || badb)) {
          powered = true;
          raise_max(ta > 0.f ? fmaxf(ma, ca + gmax + lg2(ta)) : ma, tb > 0.f ? fmaxf(mb, cb + gmax + lg2(tb)) : mb);
          const float qa = ma == kNegInf ? 0.f : ex2(ca + gmax - ma), qb = mb == kNegInf ? 0.f : ex2(cb + gmax - mb);
#pragma unroll
          for (int nf = 0; nf < BN / 8; ++nf)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              float pa = s[nf][h] * s[nf][h] * kf[nf][h] * qa, pb = s[nf][2 + h] * s[nf][2 + h] * kf[nf][h] * qb;
              if (!full) {
                const int64_t j = j0 + nf * 8 + tg * 2 + h;
                pa = j < visa ? pa : 0.f;
                pb = j < visb ? pb : 0.f;
              }
              s[nf][h] = pa;
              s[nf][2 + h] = pb;
              la += pa;
              lb += pb;
            }
        }
      }
    }
    if (!powered) {
      u32 neg = 0;
      float ta = kNegInf, tb = kNegInf;
#pragma unroll
      for (int nf = 0; nf < BN / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int jl = nf * 8 + tg * 2 + h;
          const float gk = Gx ? cG[jl] * kLog2e : 0.f;
          const float sa = s[nf][h], sb = s[nf][2 + h];
          if (odd) neg |= (sa < 0.f ? 1u : 0u) << (2 * nf + h) | (sb < 0.f ? 1u : 0u) << (16 + 2 * nf + h);
          float za = pf * lg2(fabsf(sa)) + (ca - gk), zb = pf * lg2(fabsf(sb)) + (cb - gk);
          if (!full) {
            const int64_t j = j0 + jl;
            za = j < visa ? za : kNegInf;
            zb = j < visb ? zb : kNegInf;
          }
          s[nf][h] = za;
          s[nf][2 + h] = zb;
          ta = fmaxf(ta, za);
          tb = fmaxf(tb, zb);
        }
      }
      raise_max(fmaxf(ma, quad_max(ta)), fmaxf(mb, quad_max(tb)));
#pragma unroll
      for (int nf = 0; nf < BN / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float pa = ex2(s[nf][h] - ua), pb = ex2(s[nf][2 + h] - ub);
          if (odd) {
            if ((neg >> (2 * nf + h)) & 1u) pa = -pa;
            if ((neg >> (16 + 2 * nf + h)) & 1u) pb = -pb;
          }
          s[nf][h] = pa;
          s[nf][2 + h] = pb;
          la += pa;
          lb += pb;
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const u32 pf2[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]), pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                          pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                          pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int en = 0; en < E / 16; ++en) {
        u32 b[4];
        ldsm4t(b, at_a(cV, SE, kk * 16, en * 16));
        mma16816<BF>(o[2 * en], pf2, b[0], b[1]);
        mma16816<BF>(o[2 * en + 1], pf2, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  // ua / ub: the row maximum in log2 units, 0 where every weight is 0; m leaves in natural log units
  ua *= kLn2;
  ub *= kLn2;
  la = quad_sum(la);
  lb = quad_sum(lb);
  if (normalize) {  // the quadratic form's output: num / l (0 where l is)
    const float ia = la != 0.f ? 1.f / la : 0.f, ib = lb != 0.f ? 1.f / lb : 0.f;
#pragma unroll
    for (int f = 0; f < E / 8; ++f) {
      o[f][0] *= ia;
      o[f][1] *= ia;
      o[f][2] *= ib;
      o[f][3] *= ib;
    }
  }
  if (num) store_rows<E>(num + x * R * E, o, ra, R, false);
  if constexpr (API) {
    if (yo) store_mapped<BF, E>(yo + a.my.base(x), a.my, o, ra, R);
  }
  if (tg == 0) {
    if (ra < R) {
      mo[x * R + ra] = ua;
      lo[x * R + ra] = la;
    }
    if (rb < R) {
      mo[x * R + rb] = ub;
      lo[x * R + rb] = lb;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward. With the saved m: P = exp(z - m) sign^p, dz = (dy . v rf + dd) P, ds = dz p / s (the gradient of the
// unscaled score), dq = ds k, dk = ds^T q, dv = (P rf)^T dy.
// ---------------------------------------------------------------------------------------------------------------

template <int D, int E>
constexpr int dq_keys() {
  return (D > 64 || E > 64) ? 32 : 64;
}
template <int D, int E>
constexpr size_t dq_smem() {
  constexpr int BN = dq_keys<D, E>();
  return sizeof(u16) * (kRows * (D + 8) + kRows * (E + 8) + 2 * BN * (D + 8) + 2 * BN * (E + 8)) +
         sizeof(float) * 2 * BN;
}

// MODE 0: the compute layout, fp32 outputs (written or added to); 1: the quadratic form's API layout in and out
// (input dtype); 2: the chunked form's API layout in and out, with the fp32 ones (compute layout) added.
template <bool BF, int D, int E, int MODE>
__global__ void __launch_bounds__(kThreads) tile_bwd_dq_kernel(Args a, const u16* __restrict__ q,
                                                               const u16* __restrict__ k, const u16* __restrict__ v,
                                                               const float* __restrict__ G, const u16* __restrict__ dy,
                                                               const float* __restrict__ m,
                                                               const float* __restrict__ rf,
                                                               const float* __restrict__ dd, float* __restrict__ dq,
                                                               float* __restrict__ rowdz, bool accumulate,
                                                               u16* __restrict__ dqT) {
  constexpr int BN = dq_keys<D, E>(), SD = D + 8, SE = E + 8;
  constexpr bool API = MODE != 0;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sQ = reinterpret_cast<u16*>(smem);
  u16* sY = sQ + kRows * SD;
  u16* sK = sY + kRows * SE;
  u16* sV = sK + 2 * BN * SD;
  float* sG = reinterpret_cast<float*>(sV + 2 * BN * SE);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t tiles = (a.R + kRows - 1) / kRows;
  const int64_t x = blockIdx.x % a.X, rt = tiles - 1 - blockIdx.x / a.X;
  const int64_t r0 = rt * kRows, R = a.R, C = a.C;
  const u16* kx = k + block_base<API>(a.mk, x, C, D);
  const u16* vx = v + block_base<API>(a.mv, x, C, E);
  const int64_t nq = block_rows<API>(a.mq, x, R), nk = block_rows<API>(a.mk, x, C);  // rows in memory
  const float* Gx = G ? G + x * C : nullptr;
  const int64_t nkeys = (std::min<int64_t>(r0 + kRows, R) - 1) / a.g + 1;
  const int ntiles = static_cast<int>((nkeys + BN - 1) / BN);
  auto load_kv = [&](int jt, int buf) {
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    load_mapped<API, D, BN>(sK + buf * BN * SD, kx, a.mk, j0, nk);
    load_mapped<API, E, BN>(sV + buf * BN * SE, vx, a.mv, j0, nk);
    if (Gx)
      for (int i = threadIdx.x; i < BN; i += kThreads) cp_async4(sG + buf * BN + i, Gx + std::min(j0 + i, C - 1), j0 + i < C);
  };
  load_mapped<API, D, kRows>(sQ, q + block_base<API>(a.mq, x, R, D), a.mq, r0, nq);
  load_mapped<API, E, kRows>(sY, dy + block_base<API>(a.my, x, R, E), a.my, r0, nq);
  load_kv(0, 0);
  cp_async_commit();

  const int64_t rw = r0 + warp * 16, ra = rw + gr, rb = ra + 8;
  const bool oka = ra < R, okb = rb < R;
  const int64_t visa = oka ? ra / a.g + 1 : 0, visb = okb ? rb / a.g + 1 : 0;
  const int64_t vis_warp = rw < R ? rw / a.g + 1 : 0;
  // z2 - m2 = p log2|s| + c - G_j log2 e, c = p log2 scale + (G_i - m_i) log2 e
  const float ca = oka ? a.lp2 + ((Gx ? Gx[ra / a.g] : 0.f) - m[x * R + ra]) * kLog2e : 0.f;
  const float cb = okb ? a.lp2 + ((Gx ? Gx[rb / a.g] : 0.f) - m[x * R + rb]) * kLog2e : 0.f;
  const float rfa = oka ? rf[x * R + ra] : 0.f, rfb = okb ? rf[x * R + rb] : 0.f;
  const float dda = oka ? dd[x * R + ra] : 0.f, ddb = okb ? dd[x * R + rb] : 0.f;
  const float pf_ = static_cast<float>(a.p);
  const float room = kRoom + (a.gmin ? a.gmin[x] * kLog2e : 0.f);
  const bool p2 = __all_sync(0xffffffffu, a.p == 2 && ca < room && cb < room);  // warp-uniform
  const bool odd = a.p & 1;
  u32 qf[D / 16][4], yf[E / 16][4];
  float acc[D / 8][4];
  zero(acc);
  float rsa = 0.f, rsb = 0.f;

  for (int jt = 0; jt < ntiles; ++jt) {
    if (jt + 1 < ntiles) load_kv(jt + 1, (jt + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (jt == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldsm4(qf[kk], at_a(sQ, SD, warp * 16, kk * 16));
#pragma unroll
      for (int kk = 0; kk < E / 16; ++kk) ldsm4(yf[kk], at_a(sY, SE, warp * 16, kk * 16));
    }
    const u16* cK = sK + (jt & 1) * BN * SD;
    const u16* cV = sV + (jt & 1) * BN * SE;
    const float* cG = sG + (jt & 1) * BN;
    float s[BN / 8][4], dp[BN / 8][4];
    zero(s);
    zero(dp);
#pragma unroll
    for (int nn = 0; nn < BN / 16; ++nn) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        u32 b[4];
        ldsm4(b, at_b(cK, SD, nn * 16, kk * 16));
        mma16816<BF>(s[2 * nn], qf[kk], b[0], b[1]);
        mma16816<BF>(s[2 * nn + 1], qf[kk], b[2], b[3]);
      }
#pragma unroll
      for (int kk = 0; kk < E / 16; ++kk) {
        u32 b[4];
        ldsm4(b, at_b(cV, SE, nn * 16, kk * 16));
        mma16816<BF>(dp[2 * nn], yf[kk], b[0], b[1]);
        mma16816<BF>(dp[2 * nn + 1], yf[kk], b[2], b[3]);
      }
    }
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    const bool full = j0 + BN < vis_warp;  // every key before every row's diagonal: no mask
    auto scores = [&](auto p2_) {
      constexpr bool P2 = decltype(p2_)::value;
#pragma unroll
      for (int nf = 0; nf < BN / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int jl = nf * 8 + tg * 2 + h;
          const int64_t j = j0 + jl;
          const float gk = Gx ? cG[jl] * kLog2e : 0.f;
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const float sv = s[nf][2 * half + h];
            const int64_t vis = half ? visb : visa;
            const float t = dp[nf][2 * half + h] * (half ? rfb : rfa) + (half ? ddb : dda);
            float dz, ds;
            if constexpr (P2) {
              float f = ex2((half ? cb : ca) - gk);
              if (!full) f = j < vis ? f : 0.f;
              const float ts = t * sv * f;
              dz = ts * sv;
              ds = 2.f * ts;
            } else {
              float w = ex2(pf_ * lg2(fabsf(sv)) + ((half ? cb : ca) - gk));
              if (odd && sv < 0.f) w = -w;
              if (!full) w = j < vis ? w : 0.f;
              dz = t * w;
              ds = sv != 0.f ? __fdividef(dz, sv) * pf_ : 0.f;
            }
            // the gate terms skip the diagonal: G_i - G_i does not depend on G (both sums would carry it)
            const float dzg = full || j + 1 != vis ? dz : 0.f;
            if (half) rsb += dzg; else rsa += dzg;
            s[nf][2 * half + h] = ds;
          }
        }
      }
    };
    if (p2) {
      scores(std::true_type{});
    } else {
      scores(std::false_type{});
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const u32 af[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]), pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                         pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        u32 b[4];
        ldsm4t(b, at_a(cK, SD, kk * 16, dn * 16));
        mma16816<BF>(acc[2 * dn], af, b[0], b[1]);
        mma16816<BF>(acc[2 * dn + 1], af, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  if constexpr (MODE == 0) {
    if (dq) store_rows<D>(dq + x * R * D, acc, ra, R, accumulate);
  } else {
    if (dqT)
      store_mapped<BF, D>(dqT + a.oq.base(x), a.oq, acc, ra, a.oq.rows(x, R),
                          MODE == 2 && dq ? dq + x * R * D : nullptr);
  }
  rsa = quad_sum(rsa);
  rsb = quad_sum(rsb);
  if (rowdz && tg == 0) {
    if (oka) rowdz[x * R + ra] = rsa;
    if (okb) rowdz[x * R + rb] = rsb;
  }
}

template <int D, int E>
constexpr int dkv_rows() {
  return (D > 64 || E > 64) ? 32 : 64;
}
template <int D, int E>
constexpr size_t dkv_smem() {
  constexpr int BM = dkv_rows<D, E>();
  return sizeof(u16) * (kRows * (D + 8) + kRows * (E + 8) + 2 * BM * (D + 8) + 2 * BM * (E + 8)) +
         sizeof(float) * 2 * 5 * BM;
}

template <bool BF, int D, int E, int MODE>
__global__ void __launch_bounds__(kThreads) tile_bwd_dkv_kernel(Args a, const u16* __restrict__ q,
                                                                const u16* __restrict__ k, const u16* __restrict__ v,
                                                                const float* __restrict__ G,
                                                                const u16* __restrict__ dy,
                                                                const float* __restrict__ m,
                                                                const float* __restrict__ rf,
                                                                const float* __restrict__ dd, float* __restrict__ dk,
                                                                float* __restrict__ dv, float* __restrict__ coldz,
                                                                bool accumulate, u16* __restrict__ dkT,
                                                                u16* __restrict__ dvT) {
  constexpr int BM = dkv_rows<D, E>(), SD = D + 8, SE = E + 8;
  constexpr bool API = MODE != 0;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sK = reinterpret_cast<u16*>(smem);
  u16* sV = sK + kRows * SD;
  u16* sQ = sV + kRows * SE;   // [2][BM][SD]
  u16* sY = sQ + 2 * BM * SD;  // [2][BM][SE]
  float* sRow = reinterpret_cast<float*>(sY + 2 * BM * SE);  // [2][5][BM]: m, rf, dd, gq, token (as int)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t x = blockIdx.x % a.X, kt = blockIdx.x / a.X;  // the keys seen by the most rows first
  const int64_t j0 = kt * kRows, R = a.R, C = a.C;
  const u16* qx = q + block_base<API>(a.mq, x, R, D);
  const u16* yx = dy + block_base<API>(a.my, x, R, E);
  const int64_t nq = block_rows<API>(a.mq, x, R), nk = block_rows<API>(a.mk, x, C);  // rows in memory
  const float* Gx = G ? G + x * C : nullptr;
  const int64_t rstart = j0 * a.g;  // the first row that sees key j0
  const int nsteps = static_cast<int>((R - rstart + BM - 1) / BM);
  auto load_q = [&](int st, int buf) {
    const int64_t i0 = rstart + static_cast<int64_t>(st) * BM;
    load_mapped<API, D, BM>(sQ + buf * BM * SD, qx, a.mq, i0, nq);
    load_mapped<API, E, BM>(sY + buf * BM * SE, yx, a.my, i0, nq);
    float* rw = sRow + buf * 5 * BM;
    for (int i = threadIdx.x; i < BM; i += kThreads) {
      const int64_t r = i0 + i;
      const bool ok = r < R;
      const int64_t at = x * R + (ok ? r : 0);
      cp_async4(rw + i, m + at, ok);
      cp_async4(rw + BM + i, rf + at, ok);
      cp_async4(rw + 2 * BM + i, dd + at, ok);
      if (Gx) cp_async4(rw + 3 * BM + i, Gx + (ok ? r / a.g : 0), ok);
      reinterpret_cast<int*>(rw + 4 * BM)[i] = ok ? static_cast<int>(r / a.g) : -1;
    }
  };
  load_mapped<API, D, kRows>(sK, k + block_base<API>(a.mk, x, C, D), a.mk, j0, nk);
  load_mapped<API, E, kRows>(sV, v + block_base<API>(a.mv, x, C, E), a.mv, j0, nk);
  load_q(0, 0);
  cp_async_commit();

  const int64_t ja = j0 + warp * 16 + gr, jb = ja + 8;
  const int64_t jw_last = j0 + warp * 16 + 15;  // this warp's last key
  // z2 - m2 = p log2|s| + (p log2 scale + (G_i - m_i) log2 e) - G_j log2 e
  const float gka = (Gx && ja < C) ? Gx[ja] * kLog2e : 0.f, gkb = (Gx && jb < C) ? Gx[jb] * kLog2e : 0.f;
  const float pf_ = static_cast<float>(a.p);
  const float room = kRoom + (a.gmin ? a.gmin[x] * kLog2e : 0.f);
  const bool odd = a.p & 1;
  float ka[D / 8][4], va[E / 8][4];
  zero(ka);
  zero(va);
  float csa = 0.f, csb = 0.f;

  for (int st = 0; st < nsteps; ++st) {
    if (st + 1 < nsteps) load_q(st + 1, (st + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const u16* cQ = sQ + (st & 1) * BM * SD;
    const u16* cY = sY + (st & 1) * BM * SE;
    const float* rw = sRow + (st & 1) * 5 * BM;
    const int* tok = reinterpret_cast<const int*>(rw + 4 * BM);
    float s[BM / 8][4], dp[BM / 8][4];
    zero(s);
    zero(dp);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      u32 af[4];
      ldsm4(af, at_a(sK, SD, warp * 16, kk * 16));
#pragma unroll
      for (int nn = 0; nn < BM / 16; ++nn) {
        u32 b[4];
        ldsm4(b, at_b(cQ, SD, nn * 16, kk * 16));
        mma16816<BF>(s[2 * nn], af, b[0], b[1]);
        mma16816<BF>(s[2 * nn + 1], af, b[2], b[3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < E / 16; ++kk) {
      u32 af[4];
      ldsm4(af, at_a(sV, SE, warp * 16, kk * 16));
#pragma unroll
      for (int nn = 0; nn < BM / 16; ++nn) {
        u32 b[4];
        ldsm4(b, at_b(cY, SE, nn * 16, kk * 16));
        mma16816<BF>(dp[2 * nn], af, b[0], b[1]);
        mma16816<BF>(dp[2 * nn + 1], af, b[2], b[3]);
      }
    }
    // every row of this step sees every key of the warp, none on its diagonal: no mask
    const int64_t i0 = rstart + static_cast<int64_t>(st) * BM;
    const bool full = i0 + BM <= R && jw_last < i0 / a.g;
    // the degree-2 form when every row of the step has room (rows past R hold zeros: room)
    bool room_ok = a.p == 2;
    for (int il = tg * 2; il < BM && room_ok; il += 8)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        room_ok = room_ok && a.lp2 + ((Gx ? rw[3 * BM + il + h] : 0.f) - rw[il + h]) * kLog2e < room;
    const bool p2 = __all_sync(0xffffffffu, room_ok);
    auto scores = [&](auto p2_) {
      constexpr bool P2 = decltype(p2_)::value;
#pragma unroll
      for (int nf = 0; nf < BM / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int il = nf * 8 + tg * 2 + h;
          const float rfi = rw[BM + il], ddi = rw[2 * BM + il];
          const float ci = a.lp2 + ((Gx ? rw[3 * BM + il] : 0.f) - rw[il]) * kLog2e;
          const int ti = tok[il];
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const float sv = s[nf][2 * half + h];
            const int64_t jk = half ? jb : ja;
            const float t = dp[nf][2 * half + h] * rfi + ddi;
            float w, ds;
            if constexpr (P2) {
              float f = ex2(ci - (half ? gkb : gka));
              if (!full) f = jk <= ti ? f : 0.f;
              const float sf = sv * f;
              w = sf * sv;
              ds = 2.f * t * sf;
            } else {
              w = ex2(pf_ * lg2(fabsf(sv)) + (ci - (half ? gkb : gka)));
              if (odd && sv < 0.f) w = -w;
              if (!full) w = jk <= ti ? w : 0.f;
              ds = sv != 0.f ? __fdividef(t * w, sv) * pf_ : 0.f;
            }
            const float dz = t * w;
            const float dzg = full || jk != ti ? dz : 0.f;  // not the diagonal (see the dq kernel)
            if (half) csb += dzg; else csa += dzg;
            s[nf][2 * half + h] = w * rfi;
            dp[nf][2 * half + h] = ds;
          }
        }
      }
    };
    if (p2) {
      scores(std::true_type{});
    } else {
      scores(std::false_type{});
    }
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      const u32 pa[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]), pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                         pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int en = 0; en < E / 16; ++en) {
        u32 b[4];
        ldsm4t(b, at_a(cY, SE, kk * 16, en * 16));
        mma16816<BF>(va[2 * en], pa, b[0], b[1]);
        mma16816<BF>(va[2 * en + 1], pa, b[2], b[3]);
      }
      const u32 da[4] = {pack2<BF>(dp[2 * kk][0], dp[2 * kk][1]), pack2<BF>(dp[2 * kk][2], dp[2 * kk][3]),
                         pack2<BF>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                         pack2<BF>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        u32 b[4];
        ldsm4t(b, at_a(cQ, SD, kk * 16, dn * 16));
        mma16816<BF>(ka[2 * dn], da, b[0], b[1]);
        mma16816<BF>(ka[2 * dn + 1], da, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  if constexpr (MODE == 0) {
    if (dk) store_rows<D>(dk + x * C * D, ka, ja, C, accumulate);
    if (dv) store_rows<E>(dv + x * C * E, va, ja, C, accumulate);
  } else {
    const int64_t nk = a.ok.rows(x, C);
    if (dkT) store_mapped<BF, D>(dkT + a.ok.base(x), a.ok, ka, ja, nk, MODE == 2 && dk ? dk + x * C * D : nullptr);
    if (dvT) store_mapped<BF, E>(dvT + a.ov.base(x), a.ov, va, ja, nk, MODE == 2 && dv ? dv + x * C * E : nullptr);
  }
  csa = quad_sum(csa);
  csb = quad_sum(csb);
  if (coldz && tg == 0) {
    if (ja < C) coldz[x * C + ja] = csa;
    if (jb < C) coldz[x * C + jb] = csb;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

const u16* bits(const at::Tensor& t) { return static_cast<const u16*>(t.data_ptr()); }
const float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* fmut(at::Tensor& t) { return t.defined() && t.scalar_type() == at::kFloat ? t.data_ptr<float>() : nullptr; }
// an output in the input dtype (through the maps), or null
u16* tmut(at::Tensor& t) { return t.defined() && t.scalar_type() != at::kFloat ? static_cast<u16*>(t.data_ptr()) : nullptr; }

Args make_args(const TileProblem& tp, int64_t d, int64_t e, const float* gmin = nullptr) {
  Args a{tp.X, tp.R, tp.C, static_cast<int>(tp.g), tp.p, static_cast<float>(tp.p * std::log2(tp.scale)), gmin};
  if (tp.b > 0 && tp.chunks == 0) {  // the quadratic form in the API layout
    const int64_t h = tp.X / tp.b, t = tp.C;
    a.mq = Map::api(t, h, tp.g, d), a.mk = Map::api(t, h, 1, d), a.mv = Map::api(t, h, 1, e);
    a.my = Map::api(t, h, tp.g, e);
  } else {
    a.mq = Map::dense(tp.R, d), a.mk = Map::dense(tp.C, d), a.mv = Map::dense(tp.C, e), a.my = Map::dense(tp.R, e);
  }
  if (tp.chunks > 0) {  // chunks of t tokens in the API layout
    const int64_t h = tp.X / (tp.b * tp.chunks);
    a.mq = Map::api(tp.t, h, tp.g, d, tp.chunks, tp.C), a.mk = Map::api(tp.t, h, 1, d, tp.chunks, tp.C);
    a.mv = Map::api(tp.t, h, 1, e, tp.chunks, tp.C), a.my = Map::api(tp.t, h, tp.g, e, tp.chunks, tp.C);
  }
  a.oq = a.mq, a.ok = a.mk, a.ov = a.mv;
  return a;
}

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

unsigned grid_of(int64_t tiles, int64_t X) {
  const int64_t n = tiles * X;
  TORCH_CHECK(n < (int64_t(1) << 31), "power_full: too many tiles for one CUDA launch (", n, ")");
  return static_cast<unsigned>(n);
}

template <bool BF, int D, bool API>
void forward_impl(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& G, at::Tensor& num, at::Tensor& m, at::Tensor& l, bool normalize,
                  at::Tensor& y) {
  constexpr int E = D;
  auto kernel = tile_fwd_kernel<BF, D, E, API>;
  constexpr size_t smem = fwd_smem<D, E>();
  allow_smem(kernel, smem);
  const unsigned grid = grid_of((tp.R + kRows - 1) / kRows, tp.X);
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(make_args(tp, D, E), bits(q), bits(k),
                                                                        bits(v), fptr(G), fmut(num), fmut(m),
                                                                        fmut(l), normalize, tmut(y));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool BF, int D, int MODE>
void backward_impl(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& G, const at::Tensor& dy, const at::Tensor& m, const at::Tensor& rf,
                   const at::Tensor& dd, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& rowdz,
                   at::Tensor& coldz, bool accumulate, at::Tensor& dq_out, at::Tensor& dk_out, at::Tensor& dv_out) {
  constexpr int E = D;
  const at::Tensor gmin = G.defined() ? G.view({tp.X, tp.C}).amin(1).contiguous() : at::Tensor();
  const Args args = make_args(tp, D, E, fptr(gmin));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // fp32 pointers: outputs (mode 0) or addends (mode 2); input-dtype pointers: outputs (modes 1, 2)
  at::Tensor& tq = dq_out.defined() ? dq_out : dq;
  at::Tensor& tk = dk_out.defined() ? dk_out : dk;
  at::Tensor& tv = dv_out.defined() ? dv_out : dv;
  if (dq.defined() || tq.defined() || rowdz.defined()) {
    auto kernel = tile_bwd_dq_kernel<BF, D, E, MODE>;
    constexpr size_t smem = dq_smem<D, E>();
    allow_smem(kernel, smem);
    kernel<<<grid_of((tp.R + kRows - 1) / kRows, tp.X), kThreads, smem, stream>>>(
        args, bits(q), bits(k), bits(v), fptr(G), bits(dy), fptr(m), fptr(rf), fptr(dd), fmut(dq), fmut(rowdz),
        accumulate, tmut(tq));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (tk.defined() || tv.defined() || coldz.defined()) {
    auto kernel = tile_bwd_dkv_kernel<BF, D, E, MODE>;
    constexpr size_t smem = dkv_smem<D, E>();
    allow_smem(kernel, smem);
    kernel<<<grid_of((tp.C + kRows - 1) / kRows, tp.X), kThreads, smem, stream>>>(
        args, bits(q), bits(k), bits(v), fptr(G), bits(dy), fptr(m), fptr(rf), fptr(dd), fmut(dk), fmut(dv),
        fmut(coldz), accumulate, tmut(tk), tmut(tv));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename F>
void dispatch(at::ScalarType dt, int64_t d, F&& f) {
  const bool bf = dt == at::kBFloat16;
  auto go = [&](auto bf_tag, auto d_tag) { f(bf_tag, d_tag); };
  using std::integral_constant;
  switch (d) {
    case 16: bf ? go(std::true_type{}, integral_constant<int, 16>{}) : go(std::false_type{}, integral_constant<int, 16>{}); break;
    case 32: bf ? go(std::true_type{}, integral_constant<int, 32>{}) : go(std::false_type{}, integral_constant<int, 32>{}); break;
    case 64: bf ? go(std::true_type{}, integral_constant<int, 64>{}) : go(std::false_type{}, integral_constant<int, 64>{}); break;
    case 128: bf ? go(std::true_type{}, integral_constant<int, 128>{}) : go(std::false_type{}, integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "power_full: no tile kernel for d = ", d);
  }
}

// Tokens of all heads in memory: X C in the compute layout and the quadratic form's; b h t for chunks of t tokens.
int64_t tokens(const TileProblem& tp) { return tp.chunks > 0 ? tp.X / tp.chunks * tp.t : tp.X * tp.C; }

void check_inputs(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& G) {
  TORCH_CHECK(tile_kernels_support(q.scalar_type(), q.size(-1), v.size(-1)), "power_full: tile kernels: bad dtype/sizes");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "power_full: tile kernels need contiguous q, k, v");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "power_full: tile kernels take q, k, v in one dtype");
  TORCH_CHECK(q.numel() == tokens(tp) * tp.g * q.size(-1) && k.numel() == tokens(tp) * k.size(-1) &&
                  v.numel() == tokens(tp) * v.size(-1) && tp.R == tp.C * tp.g,
              "power_full: tile kernels: shapes disagree with the problem");
  TORCH_CHECK(tp.b == 0 || tp.chunks > 0 ||
                  (tp.X % tp.b == 0 && q.dim() == 4 && q.size(0) == tp.b && q.size(1) == tp.C),
              "power_full: tile kernels: the API layout needs q [b, t, h g, d]");
  TORCH_CHECK(tp.chunks == 0 || (tp.b > 0 && tp.X % (tp.b * tp.chunks) == 0 && tp.t > (tp.chunks - 1) * tp.C &&
                                 tp.t <= tp.chunks * tp.C),
              "power_full: tile kernels: chunks disagree with the problem");
  TORCH_CHECK(tp.R < (int64_t(1) << 31), "power_full: tile kernels: too many rows in one block (", tp.R, ")");
  TORCH_CHECK(!G.defined() || (G.scalar_type() == at::kFloat && G.is_contiguous() && G.numel() == tp.X * tp.C),
              "power_full: tile kernels: G must be fp32 [X, C]");
}
// an output: fp32 in the compute layout, or (when allowed) the input dtype through the maps
void check_output(const at::Tensor& t, const at::Tensor& q, int64_t numel, bool input_dtype_ok, const char* what) {
  if (!t.defined()) return;
  TORCH_CHECK(t.is_contiguous() && t.numel() == numel && t.device() == q.device(), "power_full: tile kernels: bad ",
              what);
  TORCH_CHECK(t.scalar_type() == at::kFloat || (input_dtype_ok && t.scalar_type() == q.scalar_type()),
              "power_full: tile kernels: ", what, " must be fp32", input_dtype_ok ? " or in the input dtype" : "");
}

}  // namespace

bool tile_kernels_support(at::ScalarType dtype, int64_t d, int64_t e) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && d == e && (d == 16 || d == 32 || d == 64 || d == 128);
}

void tile_forward(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& G, at::Tensor& num, at::Tensor& m, at::Tensor& l, bool normalize,
                  at::Tensor y) {
  check_inputs(tp, q, k, v, G);
  const int64_t rows = tp.X * tp.R * v.size(-1);
  check_output(num, q, rows, false, "num");
  check_output(y, q, rows, true, "y");
  TORCH_CHECK(!y.defined() || (normalize && y.scalar_type() == q.scalar_type()),
              "power_full: tile kernels: y in the input dtype is the normalised output");
  check_output(m, q, tp.X * tp.R, false, "m");
  check_output(l, q, tp.X * tp.R, false, "l");
  if (tp.X == 0 || tp.R == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  dispatch(q.scalar_type(), q.size(-1), [&](auto bf, auto d) {
    if (tp.b > 0) {
      forward_impl<decltype(bf)::value, decltype(d)::value, true>(tp, q, k, v, G, num, m, l, normalize, y);
    } else {
      forward_impl<decltype(bf)::value, decltype(d)::value, false>(tp, q, k, v, G, num, m, l, normalize, y);
    }
  });
}

void tile_backward(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& G, const at::Tensor& dy, const at::Tensor& m, const at::Tensor& rf,
                   const at::Tensor& dd, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& rowdz,
                   at::Tensor& coldz, bool accumulate, at::Tensor dq_out, at::Tensor dk_out, at::Tensor dv_out) {
  check_inputs(tp, q, k, v, G);
  TORCH_CHECK(tp.chunks > 0 || !(dq_out.defined() || dk_out.defined() || dv_out.defined()),
              "power_full: tile kernels: separate outputs are for chunks in the API layout");
  TORCH_CHECK(dk_out.defined() == dv_out.defined(), "power_full: tile kernels make dk and dv together");
  if (tp.chunks > 0) {
    const int64_t h = tp.X / (tp.b * tp.chunks);
    auto api = [&](const at::Tensor& t, int64_t heads, int64_t w, const char* what) {
      TORCH_CHECK(!t.defined() || (t.scalar_type() == q.scalar_type() && t.is_contiguous() &&
                                   t.numel() == tp.b * tp.t * heads * w && t.device() == q.device()),
                  "power_full: tile kernels: bad ", what);
    };
    api(dq_out, h * tp.g, q.size(-1), "dq output");
    api(dk_out, h, k.size(-1), "dk output");
    api(dv_out, h, v.size(-1), "dv output");
  }
  TORCH_CHECK(dy.is_contiguous() && dy.scalar_type() == q.scalar_type() &&
                  dy.numel() == q.numel() / q.size(-1) * v.size(-1),
              "power_full: tile kernels: bad dy");
  TORCH_CHECK(dk.defined() == dv.defined() || tp.chunks > 0, "power_full: tile kernels make dk and dv together");
  check_output(dq, q, tp.X * tp.R * q.size(-1), !accumulate && tp.chunks == 0, "dq");
  check_output(dk, q, tp.X * tp.C * k.size(-1), !accumulate && tp.chunks == 0, "dk");
  check_output(dv, q, tp.X * tp.C * v.size(-1), !accumulate && tp.chunks == 0, "dv");
  check_output(rowdz, q, tp.X * tp.R, false, "rowdz");
  check_output(coldz, q, tp.X * tp.C, false, "coldz");
  if (tp.X == 0 || tp.R == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  dispatch(q.scalar_type(), q.size(-1), [&](auto bf, auto d) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(d)::value;
    if (tp.b == 0) {
      backward_impl<BF, D, 0>(tp, q, k, v, G, dy, m, rf, dd, dq, dk, dv, rowdz, coldz, accumulate, dq_out, dk_out,
                              dv_out);
    } else if (tp.chunks == 0) {
      backward_impl<BF, D, 1>(tp, q, k, v, G, dy, m, rf, dd, dq, dk, dv, rowdz, coldz, accumulate, dq_out, dk_out,
                              dv_out);
    } else {
      backward_impl<BF, D, 2>(tp, q, k, v, G, dy, m, rf, dd, dq, dk, dv, rowdz, coldz, accumulate, dq_out, dk_out,
                              dv_out);
    }
  });
}

}  // namespace cuda
}  // namespace power_attention
