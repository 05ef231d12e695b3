// tile_bwd_dkv_sm90.cu: the backward's key-side tile kernel on Hopper (sm_90a, wgmma) at d = e = 64, and its
// launcher (launch_bwd_dkv_sm90, tile_kernel.cuh; launch_bwd_dkv picks it where the device runs the sm_90a kernels).
//
// The same arithmetic as tile_bwd_dkv.cu's kernel (the scores' code is that kernel's, in the same order), with the
// four products of a step as warpgroup MMAs: the CTA's one warpgroup holds 64 keys (warp w keys 16 w .. 16 w + 15,
// the accumulator layout of wgmma being mma.sync's a warp), and a step of BM query rows runs
//   S^T = K Q^T, dP^T = V dY^T   (m64 nBM, both operands in shared memory, K-major),
//   dV += (P rf)^T dY, dK += dS^T Q   (m64 n64, the A operand the step's scores in registers, B MN-major),
// so a step reads each shared operand once for the warpgroup (the sm_80 kernel's warps each read every Q and dY
// fragment). K, V and the Q / dY steps live in shared memory chunk-major (tile_sm90.cuh); the steps stream in by
// cp.async, two buffers.
#include "cuda/attention/tile_kernel.cuh"
#include "cuda/attention/tile_sm90.cuh"
#include "cuda/common/launch.cuh"

#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace tile {
namespace {

constexpr int kD = 64;  // d = e

// CTAs a SM the kernel is compiled for: steps of 64 rows hold 128 accumulator registers a thread (two CTAs),
// steps of 32 rows 96 (three).
template <int BM>
constexpr int dkv90_min_ctas() {
  return BM >= 64 ? 2 : 3;
}
template <int BM>
constexpr size_t dkv90_smem() {
  return sizeof(u16) * (2 * kRows * kD + 2 * 2 * BM * kD) + sizeof(float) * 2 * 6 * BM;
}

template <bool BF, int BM>
__global__ void __launch_bounds__(kThreads, dkv90_min_ctas<BM>())
    tile_bwd_dkv_sm90_kernel(Args a, const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             const float* __restrict__ G, const u16* __restrict__ dy, const float* __restrict__ m,
                             const float* __restrict__ rf, const float* __restrict__ dd,
                             const float* __restrict__ dk_add, const float* __restrict__ dv_add,
                             float* __restrict__ coldz, u16* __restrict__ dkT, u16* __restrict__ dvT) {
#ifdef POWER_ATTENTION_SM90A
  using namespace sm90;
  constexpr int D = kD, E = kD;
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sK = reinterpret_cast<u16*>(smem);  // chunk-major [D / 8][64][8]
  u16* sV = sK + kRows * D;                // [E / 8][64][8]
  u16* sQ = sV + kRows * E;                // [2][D / 8][BM][8]
  u16* sY = sQ + 2 * BM * D;               // [2][E / 8][BM][8]
  float* sRow = reinterpret_cast<float*>(sY + 2 * BM * E);  // [2][6][BM]: m, rf, dd, gq, token (as int), own
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
    load_rows_cm<D, BM, kThreads>(sQ + buf * BM * D, qx, a.mq, i0, nq);
    load_rows_cm<E, BM, kThreads>(sY + buf * BM * E, yx, a.my, i0, nq);
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
  load_rows_cm<D, kRows, kThreads>(sK, k + a.mk.base(x), a.mk, j0, nk);
  load_rows_cm<E, kRows, kThreads>(sV, v + a.mv.base(x), a.mv, j0, nk);
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
  const uint64_t descK = desc_rows_mn<kRows>(sK), descV = desc_rows_mn<kRows>(sV);

  // a step's weights and score gradients as A operands, read by its dV / dK products until the next step's wait
  u32 pa[BM / 16][4], da[BM / 16][4];
  for (int st = 0; st < nsteps; ++st) {
    cp_async_wait<0>();  // step st landed (its copies issued during step st - 1)
    wgmma::fence_proxy_async();
    __syncthreads();
    const u16* cQ = sQ + (st & 1) * BM * D;
    const u16* cY = sY + (st & 1) * BM * E;
    const float* rw = sRow + (st & 1) * 6 * BM;
    const int* tok = reinterpret_cast<const int*>(rw + 4 * BM);
    float s[BM / 8][4], dp[BM / 8][4];
    {
      const uint64_t dq = desc_rows_mn<BM>(cQ), dyd = desc_rows_mn<BM>(cY);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Mma<BM, BF>::ss(&s[0][0], descK + kk * kstep_kmajor<kRows>(), dq + kk * kstep_kmajor<BM>(), kk > 0);
#pragma unroll
      for (int kk = 0; kk < E / 16; ++kk)
        Mma<BM, BF>::ss(&dp[0][0], descV + kk * kstep_kmajor<kRows>(), dyd + kk * kstep_kmajor<BM>(), kk > 0);
      wgmma::commit();
      wgmma::wait<0>();  // the scores, and step st - 1's dV / dK products: its buffers are free
      fence_acc(s);
      fence_acc(dp);
      fence_acc(va);
      fence_acc(ka);
    }
    if (st + 1 < nsteps) load_q(st + 1, (st + 1) & 1);
    cp_async_commit();
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
    {
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        pa[kk][0] = pack2<BF>(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = pack2<BF>(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        da[kk][0] = pack2<BF>(dp[2 * kk][0], dp[2 * kk][1]);
        da[kk][1] = pack2<BF>(dp[2 * kk][2], dp[2 * kk][3]);
        da[kk][2] = pack2<BF>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
        da[kk][3] = pack2<BF>(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
      }
      const uint64_t dq = desc_rows_k<BM>(cQ), dyd = desc_rows_k<BM>(cY);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BM / 16; ++kk) {
        Mma<E, BF>::rs_mn(&va[0][0], pa[kk], dyd + kk * kstep_mnmajor(), 1);
        Mma<D, BF>::rs_mn(&ka[0][0], da[kk], dq + kk * kstep_mnmajor(), 1);
      }
      wgmma::commit();  // runs on while the next step's copies land and its products are issued
    }
  }
  wgmma::wait<0>();
  fence_acc(va);
  fence_acc(ka);
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
#endif
}

template <bool BF, int BM>
void launch(const Args& a, const u16* q, const u16* k, const u16* v, const float* G, const u16* dy, const float* m,
            const float* rf, const float* dd, const float* dk_add, const float* dv_add, float* coldz, u16* dk,
            u16* dv) {
  auto kernel = tile_bwd_dkv_sm90_kernel<BF, BM>;
  constexpr size_t smem = dkv90_smem<BM>();
  allow_smem(kernel, smem);
  kernel<<<grid_of((a.C + kRows - 1) / kRows, a.X), kThreads, smem, stream()>>>(a, q, k, v, G, dy, m, rf, dd,
                                                                                dk_add, dv_add, coldz, dk, dv);
  check_launch();
}

}  // namespace

bool dkv_sm90_supported(int64_t d) { return d == kD; }

void launch_bwd_dkv_sm90(const Args& a, bool bf, int rows, const u16* q, const u16* k, const u16* v, const float* G,
                         const u16* dy, const float* m, const float* rf, const float* dd, const float* dk_add,
                         const float* dv_add, float* coldz, u16* dk, u16* dv) {
  TORCH_CHECK(rows == 32 || rows == 64, "power_full: internal: sm_90a dkv tile kernel: no step of ", rows, " rows");
  if (bf) {
    rows == 64 ? launch<true, 64>(a, q, k, v, G, dy, m, rf, dd, dk_add, dv_add, coldz, dk, dv)
               : launch<true, 32>(a, q, k, v, G, dy, m, rf, dd, dk_add, dv_add, coldz, dk, dv);
  } else {
    rows == 64 ? launch<false, 64>(a, q, k, v, G, dy, m, rf, dd, dk_add, dv_add, coldz, dk, dv)
               : launch<false, 32>(a, q, k, v, G, dy, m, rf, dd, dk_add, dv_add, coldz, dk, dv);
  }
}

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
