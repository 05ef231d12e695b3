// tile_fwd.cu: the forward tile kernel of attention_tile.h (tile_kernel.cuh) and its launcher.
#include "cuda/attention/tile_kernel.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/sm90_select.h"
#include "cuda/common/static_switch.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace tile {
namespace {

template <bool BF, int D, int E>
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
  const u16* qx = q + a.mq.base(x);
  const u16* kx = k + a.mk.base(x);
  const u16* vx = v + a.mv.base(x);
  const int64_t nq = a.mq.rows(x, R), nk = a.mk.rows(x, C);  // rows in memory
  const float* Gx = G ? G + x * C : nullptr;
  const int64_t nkeys = (std::min<int64_t>(r0 + kRows, R) - 1) / a.g + 1;
  const int ntiles = static_cast<int>((nkeys + BN - 1) / BN);
  auto load_kv = [&](int jt, int buf) {
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    load_rows_mapped<D, BN, kThreads, D + 8>(sK + buf * BN * SD, kx, a.mk, j0, nk);
    load_rows_mapped<E, BN, kThreads, E + 8>(sV + buf * BN * SE, vx, a.mv, j0, nk);
    if (Gx)
      for (int i = threadIdx.x; i < BN; i += kThreads) cp_async4(sG + buf * BN + i, Gx + std::min(j0 + i, C - 1), j0 + i < C);
  };
  load_rows_mapped<D, kRows, kThreads, D + 8>(sQ, qx, a.mq, r0, nq);
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
    scale_rows(o, fa, fb);
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
    auto scores = [&] {
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
    };
    scores();
    const int64_t j0 = static_cast<int64_t>(jt) * BN;
    // Keys of this tile each row sees (0..BN; BN: all), in 32-bit tile-relative units; a tile that every row of the
    // warp sees whole takes the unmasked instance of the weights below (no per-score compares).
    const int lima = static_cast<int>(std::min<int64_t>(std::max<int64_t>(visa - j0, 0), BN));
    const int limb = static_cast<int>(std::min<int64_t>(std::max<int64_t>(visb - j0, 0), BN));
    const bool full = j0 + BN <= vis_warp;
    auto weights = [&](auto masked_) {
      constexpr bool kMasked = decltype(masked_)::value;
      // Degree 2 without a MUFU a score: w = s^2 kf_j 2^(c_i + gref - m_i), kf_j = 2^(-g_j - gref) <= 1 with gref
      // the tile's largest -g_j (a MUFU a key), one lg2 and one ex2 a row. Taken when the whole warp's tile is in
      // range: the tile's gates span at most 2^64 and every row with visible keys has a largest s^2 kf in
      // [2^-60, 2^100] (so nothing that matters underflows or overflows); otherwise the log form below (on s made
      // again: s^2 kf replaces s here).
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
          // w = s^2 kf in place of s, then the rows' largest over visible keys
          float ta = 0.f, tb = 0.f;
#pragma unroll
          for (int nf = 0; nf < BN / 8; ++nf)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float kf = Gx ? ex2(-cG[nf * 8 + tg * 2 + h] * kLog2e - gmax) : 1.f;
              float wa = s[nf][h] * s[nf][h] * kf, wb = s[nf][2 + h] * s[nf][2 + h] * kf;
              if constexpr (kMasked) {
                const int jl = nf * 8 + tg * 2 + h;
                wa = jl < lima ? wa : 0.f;
                wb = jl < limb ? wb : 0.f;
              }
              s[nf][h] = wa;
              s[nf][2 + h] = wb;
              ta = fmaxf(ta, wa);
              tb = fmaxf(tb, wb);
            }
          ta = quad_max(ta);
          tb = quad_max(tb);
          const bool bada = lima > 0 && !(ta >= 0x1p-60f && ta <= 0x1p100f);
          const bool badb = limb > 0 && !(tb >= 0x1p-60f && tb <= 0x1p100f);
          if (!__any_sync(0xffffffffu, bada || badb)) {
            powered = true;
            raise_max(ta > 0.f ? fmaxf(ma, ca + gmax + lg2(ta)) : ma, tb > 0.f ? fmaxf(mb, cb + gmax + lg2(tb)) : mb);
            const float qa = ma == kNegInf ? 0.f : ex2(ca + gmax - ma), qb = mb == kNegInf ? 0.f : ex2(cb + gmax - mb);
#pragma unroll
            for (int nf = 0; nf < BN / 8; ++nf)
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const float pa = s[nf][h] * qa, pb = s[nf][2 + h] * qb;
                s[nf][h] = pa;
                s[nf][2 + h] = pb;
              }
          } else {
            scores();
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
            if constexpr (kMasked) {
              za = jl < lima ? za : kNegInf;
              zb = jl < limb ? zb : kNegInf;
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
          }
        }
      }
    };
    if (full) {
      weights(std::false_type{});
    } else {
      weights(std::true_type{});
    }
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const u32 pf2[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]), pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                          pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                          pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      add_weights<BF>(pf2, la, lb);
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
    scale_rows(o, la != 0.f ? 1.f / la : 0.f, lb != 0.f ? 1.f / lb : 0.f);
  }
  if (num) store_rows<E>(num + x * R * E, o, ra, R);
  if (yo) store_mapped<BF, E>(yo + a.my.base(x), a.my, o, ra, R);
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

}  // namespace

void launch_fwd(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                float* num, float* m, float* l, bool normalize, u16* y) {
  if (fwd_sm90_supported(d) && sm90a_tiles(kernel_set(c10::cuda::current_device()))) {
    launch_fwd_sm90(a, bf, q, k, v, G, num, m, l, normalize, y);
    return;
  }
  switch_half_dim(bf, d, "tile kernel", [&](auto bf_, auto d_) {
    constexpr bool BF = decltype(bf_)::value;
    constexpr int D = decltype(d_)::value, E = D;
    auto kernel = tile_fwd_kernel<BF, D, E>;
    constexpr size_t smem = fwd_smem<D, E>();
    allow_smem(kernel, smem);
    const unsigned grid = grid_of((a.R + kRows - 1) / kRows, a.X);
    kernel<<<grid, kThreads, smem, stream()>>>(a, q, k, v, G, num, m, l, normalize, y);
    check_launch();
  });
}

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
