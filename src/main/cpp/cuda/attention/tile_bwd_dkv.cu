// tile_bwd_dkv.cu: the backward's key-side tile kernel of attention_tile.h (tile_kernel.cuh) and its launcher.
// Backward. With the saved m: P = exp(z - m) sign^p, dz = (dy . v rf + dd) P, ds = dz p / s (the gradient of the
// unscaled score), dq = ds k, dk = ds^T q, dv = (P rf)^T dy.
#include "cuda/attention/tile_kernel.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/sm90_select.h"
#include "cuda/common/static_switch.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace tile {
namespace {

// dk, dv go to dkT, dvT in the input dtype through a.ok, a.ov, plus dk_add, dv_add (fp32, the compute layout
// [X, C, .]) when given.
template <bool BF, int D, int E>
__global__ void __launch_bounds__(kThreads, dkv_min_ctas<D, E>()) tile_bwd_dkv_kernel(Args a, const u16* __restrict__ q,
                                                                const u16* __restrict__ k, const u16* __restrict__ v,
                                                                const float* __restrict__ G,
                                                                const u16* __restrict__ dy,
                                                                const float* __restrict__ m,
                                                                const float* __restrict__ rf,
                                                                const float* __restrict__ dd,
                                                                const float* __restrict__ dk_add,
                                                                const float* __restrict__ dv_add,
                                                                float* __restrict__ coldz, u16* __restrict__ dkT,
                                                                u16* __restrict__ dvT) {
  constexpr int BM = dkv_rows<D, E>(), SD = D + 8, SE = E + 8;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sK = reinterpret_cast<u16*>(smem);
  u16* sV = sK + kRows * SD;
  u16* sQ = sV + kRows * SE;   // [2][BM][SD]
  u16* sY = sQ + 2 * BM * SD;  // [2][BM][SE]
  float* sRow = reinterpret_cast<float*>(sY + 2 * BM * SE);  // [2][6][BM]: m, rf, dd, gq, token (as int), own
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t x = blockIdx.x % a.X, kt = blockIdx.x / a.X;  // the keys seen by the most rows first
  const int64_t j0 = kt * kRows, R = a.R, C = a.C;
  const u16* qx = q + a.mq.base(x);
  const u16* yx = dy + a.my.base(x);
  const int64_t nq = a.mq.rows(x, R), nk = a.mk.rows(x, C);  // rows in memory
  const float* Gx = G ? G + x * C : nullptr;
  const int64_t rstart = j0 * a.g;  // the first row that sees key j0
  const int nsteps = static_cast<int>((R - rstart + BM - 1) / BM);
  auto load_q = [&](int st, int buf) {
    const int64_t i0 = rstart + static_cast<int64_t>(st) * BM;
    load_rows_mapped<D, BM, kThreads, D + 8>(sQ + buf * BM * SD, qx, a.mq, i0, nq);
    load_rows_mapped<E, BM, kThreads, E + 8>(sY + buf * BM * SE, yx, a.my, i0, nq);
    float* rw = sRow + buf * 6 * BM;
    for (int i = threadIdx.x; i < BM; i += kThreads) {
      const int64_t r = i0 + i;
      const bool ok = r < R;
      const int64_t at = x * R + (ok ? r : 0);
      cp_async4(rw + i, m + at, ok);
      cp_async4(rw + BM + i, rf + at, ok);
      cp_async4(rw + 2 * BM + i, dd + at, ok);
      if (Gx) cp_async4(rw + 3 * BM + i, Gx + (ok ? r / a.g : 0), ok);
      reinterpret_cast<int*>(rw + 4 * BM)[i] = ok ? static_cast<int>(r / a.g) : -1;
      cp_async4(rw + 5 * BM + i, a.own + at, ok);
    }
  };
  load_rows_mapped<D, kRows, kThreads, D + 8>(sK, k + a.mk.base(x), a.mk, j0, nk);
  load_rows_mapped<E, kRows, kThreads, E + 8>(sV, v + a.mv.base(x), a.mv, j0, nk);
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
  int ea = 0, eb = 0;  // fp16: the keys' ds exponents (tile_kernel.cuh, fit_half_range)

  for (int st = 0; st < nsteps; ++st) {
    if (st + 1 < nsteps) load_q(st + 1, (st + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const u16* cQ = sQ + (st & 1) * BM * SD;
    const u16* cY = sY + (st & 1) * BM * SE;
    const float* rw = sRow + (st & 1) * 6 * BM;
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
    // key tokens in 32-bit units for the masked instance (tok[] holds the rows' tokens as int: -1 past R)
    const int tka = static_cast<int>(ja), tkb = static_cast<int>(jb);
    auto scores = [&](auto p2_, auto masked_) {
      constexpr bool P2 = decltype(p2_)::value, kMasked = decltype(masked_)::value;
#pragma unroll
      for (int nf = 0; nf < BM / 8; ++nf) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int il = nf * 8 + tg * 2 + h;
          const float rfi = rw[BM + il], ddi = rw[2 * BM + il], owni = rw[5 * BM + il];
          const float ci = a.lp2 + ((Gx ? rw[3 * BM + il] : 0.f) - rw[il]) * kLog2e;
          const int ti = tok[il];
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const float sv = s[nf][2 * half + h];
            const int jk = half ? tkb : tka;
            float t = dp[nf][2 * half + h] * rfi + ddi;
            if constexpr (kMasked) t = jk == ti ? owni : t;  // the row's own key
            float w, ds;
            if constexpr (P2) {
              float f = ex2(ci - (half ? gkb : gka));
              if constexpr (kMasked) f = jk <= ti ? f : 0.f;
              const float sf = sv * f;
              w = sf * sv;
              ds = 2.f * t * sf;
            } else {
              w = ex2(pf_ * lg2(fabsf(sv)) + (ci - (half ? gkb : gka)));
              if (odd && sv < 0.f) w = -w;
              if constexpr (kMasked) w = jk <= ti ? w : 0.f;
              ds = sv != 0.f ? __fdividef(t * w, sv) * pf_ : 0.f;
            }
            const float dz = t * w;
            float dzg = dz;
            if constexpr (kMasked) dzg = jk != ti ? dz : 0.f;  // not the diagonal (see the dq kernel)
            if (half) csb += dzg; else csa += dzg;
            s[nf][2 * half + h] = w * rfi;
            dp[nf][2 * half + h] = ds;
          }
        }
      }
    };
    if (p2) {
      if (full) scores(std::true_type{}, std::false_type{}); else scores(std::true_type{}, std::true_type{});
    } else {
      if (full) scores(std::false_type{}, std::false_type{}); else scores(std::false_type{}, std::true_type{});
    }
    if constexpr (!BF) fit_half_range<BM / 8, D>(dp, ka, ea, eb);
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
  if constexpr (!BF) restore_exp<D>(ka, ea, eb);
  const int64_t nko = a.ok.rows(x, C);
  if (dkT) store_mapped<BF, D>(dkT + a.ok.base(x), a.ok, ka, ja, nko, dk_add ? dk_add + x * C * D : nullptr);
  if (dvT) store_mapped<BF, E>(dvT + a.ov.base(x), a.ov, va, ja, nko, dv_add ? dv_add + x * C * E : nullptr);
  csa = quad_sum(csa);
  csb = quad_sum(csb);
  if (coldz && tg == 0) {
    if (ja < C) coldz[x * C + ja] = csa;
    if (jb < C) coldz[x * C + jb] = csb;
  }
}

}  // namespace

void launch_bwd_dkv(const Args& a, bool bf, int64_t d, const u16* q, const u16* k, const u16* v, const float* G,
                    const u16* dy, const float* m, const float* rf, const float* dd, const float* dk_add,
                    const float* dv_add, float* coldz, u16* dk, u16* dv) {
  if (dkv_sm90_supported(d) && sm90a_tiles(kernel_set(c10::cuda::current_device()))) {
    const char* rows = std::getenv("POWER_ATTENTION_TILE_DKV_ROWS");
    launch_bwd_dkv_sm90(a, bf, rows && std::string(rows) == "32" ? 32 : 64, q, k, v, G, dy, m, rf, dd, dk_add,
                        dv_add, coldz, dk, dv);
    return;
  }
  switch_half_dim(bf, d, "tile kernel", [&](auto bf_, auto d_) {
    constexpr bool BF = decltype(bf_)::value;
    constexpr int D = decltype(d_)::value, E = D;
    auto kernel = tile_bwd_dkv_kernel<BF, D, E>;
    constexpr size_t smem = dkv_smem<D, E>();
    allow_smem(kernel, smem);
    kernel<<<grid_of((a.C + kRows - 1) / kRows, a.X), kThreads, smem, stream()>>>(a, q, k, v, G, dy, m, rf, dd,
                                                                                  dk_add, dv_add, coldz, dk, dv);
    check_launch();
  });
}

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
