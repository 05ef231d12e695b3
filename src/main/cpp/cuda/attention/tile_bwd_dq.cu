// tile_bwd_dq.cu: the backward's query-side tile kernel of attention_tile.h (tile_kernel.cuh) and its launcher.
// Backward. With the saved m: P = exp(z - m) sign^p, dz = (dy . v rf + dd) P, ds = dz p / s (the gradient of the
// unscaled score), dq = ds k, dk = ds^T q, dv = (P rf)^T dy.
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

// dq goes to dqT in the input dtype through a.oq, plus dq_add (fp32, the compute layout [X, R, D]) when given.
template <bool BF, int D, int E>
__global__ void __launch_bounds__(kThreads, dq_min_ctas<D, E>()) tile_bwd_dq_kernel(Args a, const u16* __restrict__ q,
                                                               const u16* __restrict__ k, const u16* __restrict__ v,
                                                               const float* __restrict__ G, const u16* __restrict__ dy,
                                                               const float* __restrict__ m,
                                                               const float* __restrict__ rf,
                                                               const float* __restrict__ dd,
                                                               const float* __restrict__ dq_add,
                                                               float* __restrict__ rowdz, u16* __restrict__ dqT) {
  constexpr int BN = dq_keys<D, E>(), SD = D + 8, SE = E + 8;
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
  load_rows_mapped<D, kRows, kThreads, D + 8>(sQ, q + a.mq.base(x), a.mq, r0, nq);
  load_rows_mapped<E, kRows, kThreads, E + 8>(sY, dy + a.my.base(x), a.my, r0, nq);
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
  const float owna = oka ? a.own[x * R + ra] : 0.f, ownb = okb ? a.own[x * R + rb] : 0.f;  // t at the own key
  const float pf_ = static_cast<float>(a.p);
  const float room = kRoom + (a.gmin ? a.gmin[x] * kLog2e : 0.f);
  const bool p2 = __all_sync(0xffffffffu, a.p == 2 && ca < room && cb < room);  // warp-uniform
  const bool odd = a.p & 1;
  u32 qf[D / 16][4], yf[E / 16][4];
  float acc[D / 8][4];
  zero(acc);
  float rsa = 0.f, rsb = 0.f;
  int ea = 0, eb = 0;  // fp16: the rows' ds exponents (tile_kernel.cuh, fit_half_range)

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
    // in 32-bit tile-relative units: keys each row sees (0..BN), and its diagonal key (-1: not in this tile)
    const auto seen = [&](int64_t vis) { return static_cast<int>(std::min<int64_t>(std::max<int64_t>(vis - j0, 0), BN)); };
    const auto diag = [&](int64_t vis) { return vis - j0 >= 1 && vis - j0 <= BN ? static_cast<int>(vis - 1 - j0) : -1; };
    const int lima = seen(visa), limb = seen(visb), diaga = diag(visa), diagb = diag(visb);
    auto scores = [&](auto p2_, auto masked_) {
      constexpr bool P2 = decltype(p2_)::value, kMasked = decltype(masked_)::value;
#pragma unroll
      for (int nf = 0; nf < BN / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int jl = nf * 8 + tg * 2 + h;
          const float gk = Gx ? cG[jl] * kLog2e : 0.f;
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const float sv = s[nf][2 * half + h];
            float t = dp[nf][2 * half + h] * (half ? rfb : rfa) + (half ? ddb : dda);
            if constexpr (kMasked) t = jl == (half ? diagb : diaga) ? (half ? ownb : owna) : t;
            float dz, ds;
            if constexpr (P2) {
              float f = ex2((half ? cb : ca) - gk);
              if constexpr (kMasked) f = jl < (half ? limb : lima) ? f : 0.f;
              const float ts = t * sv * f;
              dz = ts * sv;
              ds = 2.f * ts;
            } else {
              float w = ex2(pf_ * lg2(fabsf(sv)) + ((half ? cb : ca) - gk));
              if (odd && sv < 0.f) w = -w;
              if constexpr (kMasked) w = jl < (half ? limb : lima) ? w : 0.f;
              dz = t * w;
              ds = sv != 0.f ? __fdividef(dz, sv) * pf_ : 0.f;
            }
            // the gate terms skip the diagonal: G_i - G_i does not depend on G (both sums would carry it)
            float dzg = dz;
            if constexpr (kMasked) dzg = jl != (half ? diagb : diaga) ? dz : 0.f;
            if (half) rsb += dzg; else rsa += dzg;
            s[nf][2 * half + h] = ds;
          }
        }
      }
    };
    if (p2) {
      if (full) scores(std::true_type{}, std::false_type{}); else scores(std::true_type{}, std::true_type{});
    } else {
      if (full) scores(std::false_type{}, std::false_type{}); else scores(std::false_type{}, std::true_type{});
    }
    if constexpr (!BF) fit_half_range<BN / 8, D>(s, acc, ea, eb);
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
  if constexpr (!BF) restore_exp<D>(acc, ea, eb);
  if (dqT)
    store_mapped<BF, D>(dqT + a.oq.base(x), a.oq, acc, ra, a.oq.rows(x, R), dq_add ? dq_add + x * R * D : nullptr);
  rsa = quad_sum(rsa);
  rsb = quad_sum(rsb);
  if (rowdz && tg == 0) {
    if (oka) rowdz[x * R + ra] = rsa;
    if (okb) rowdz[x * R + rb] = rsb;
  }
}

}  // namespace

void launch_bwd_dq(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                   const u16* dy, const float* m, const float* rf, const float* dd, const float* dq_add,
                   float* rowdz, u16* dq) {
  if (dq_sm90_supported(d) && sm90a_tiles(kernel_set(c10::cuda::current_device()))) {
    launch_bwd_dq_sm90(a, bf, q, k, v, G, dy, m, rf, dd, dq_add, rowdz, dq);
    return;
  }
  switch_half_dim(bf, d, "tile kernel", [&](auto bf_, auto d_) {
    constexpr bool BF = decltype(bf_)::value;
    constexpr int D = decltype(d_)::value, E = D;
    auto kernel = tile_bwd_dq_kernel<BF, D, E>;
    constexpr size_t smem = dq_smem<D, E>();
    allow_smem(kernel, smem);
    kernel<<<grid_of((a.R + kRows - 1) / kRows, a.X), kThreads, smem, stream()>>>(a, q, k, v, G, dy, m, rf, dd,
                                                                                  dq_add, rowdz, dq);
    check_launch();
  });
}

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
