// tile_bwd_dq_sm90.cu: the backward's query-side tile kernel on Hopper (sm_90a, wgmma) at d = e = 64, and its
// launcher (launch_bwd_dq_sm90, tile_kernel.cuh; launch_bwd_dq picks it where the device runs the sm_90a kernels).
//
// The same arithmetic as tile_bwd_dq.cu's kernel (the scores' code is that kernel's, in the same order), with the
// products as warpgroup MMAs: the CTA's one warpgroup holds 64 query rows (warp w rows 16 w .. 16 w + 15), and a
// step of BN keys runs S = Q K^T, dP = dY V^T (m64 nBN, both operands in shared memory, K-major), then
// dQ += dS K (m64 n64, the A operand the step's score gradients in registers, K MN-major). Q, dY and the K / V
// steps live in shared memory chunk-major (tile_sm90.cuh); the steps stream in by cp.async, two buffers.
#include "cuda/attention/tile_kernel.cuh"
#include "cuda/attention/tile_sm90.cuh"
#include "cuda/common/launch.cuh"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace tile {
namespace {

constexpr int kD = 64;  // d = e
constexpr int BN = 64;  // keys a step

constexpr size_t dq90_smem() { return sizeof(u16) * (2 * kRows * kD + 2 * 2 * BN * kD) + sizeof(float) * 2 * BN; }

// dq goes to dqT in the input dtype through a.oq, plus dq_add (fp32, the compute layout [X, R, D]) when given.
template <bool BF, int MIN_CTAS>
__global__ void __launch_bounds__(kThreads, MIN_CTAS)
    tile_bwd_dq_sm90_kernel(Args a, const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                            const float* __restrict__ G, const u16* __restrict__ dy, const float* __restrict__ m,
                            const float* __restrict__ rf, const float* __restrict__ dd,
                            const float* __restrict__ dq_add, float* __restrict__ rowdz, u16* __restrict__ dqT) {
#ifdef POWER_ATTENTION_SM90A
  using namespace sm90;
  constexpr int D = kD, E = kD;
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sQ = reinterpret_cast<u16*>(smem);  // chunk-major [D / 8][64][8]
  u16* sY = sQ + kRows * D;                // [E / 8][64][8]
  u16* sK = sY + kRows * E;                // [2][D / 8][BN][8]
  u16* sV = sK + 2 * BN * D;               // [2][E / 8][BN][8]
  float* sG = reinterpret_cast<float*>(sV + 2 * BN * E);
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
    load_rows_cm<D, BN, kThreads>(sK + buf * BN * D, kx, a.mk, j0, nk);
    load_rows_cm<E, BN, kThreads>(sV + buf * BN * E, vx, a.mv, j0, nk);
    if (Gx)
      for (int i = threadIdx.x; i < BN; i += kThreads) cp_async4(sG + buf * BN + i, Gx + std::min(j0 + i, C - 1), j0 + i < C);
  };
  load_rows_cm<D, kRows, kThreads>(sQ, q + a.mq.base(x), a.mq, r0, nq);
  load_rows_cm<E, kRows, kThreads>(sY, dy + a.my.base(x), a.my, r0, nq);
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
  const uint64_t descQ = desc_rows_mn<kRows>(sQ), descY = desc_rows_mn<kRows>(sY);
  float acc[D / 8][4];
  zero(acc);
  float rsa = 0.f, rsb = 0.f;
  int ea = 0, eb = 0;  // fp16: the rows' ds exponents (tile_kernel.cuh, fit_half_range)

  u32 da[BN / 16][4];  // a step's score gradients as A operands, read by its dQ product until the next step's wait
  for (int jt = 0; jt < ntiles; ++jt) {
    cp_async_wait<0>();  // step jt landed (its copies issued during step jt - 1)
    wgmma::fence_proxy_async();
    __syncthreads();
    const u16* cK = sK + (jt & 1) * BN * D;
    const u16* cV = sV + (jt & 1) * BN * E;
    const float* cG = sG + (jt & 1) * BN;
    float s[BN / 8][4], dp[BN / 8][4];
    {
      const uint64_t dk = desc_rows_mn<BN>(cK), dv = desc_rows_mn<BN>(cV);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Mma<BN, BF>::ss(&s[0][0], descQ + kk * kstep_kmajor<kRows>(), dk + kk * kstep_kmajor<BN>(), kk > 0);
#pragma unroll
      for (int kk = 0; kk < E / 16; ++kk)
        Mma<BN, BF>::ss(&dp[0][0], descY + kk * kstep_kmajor<kRows>(), dv + kk * kstep_kmajor<BN>(), kk > 0);
      wgmma::commit();
      wgmma::wait<0>();  // the scores, and step jt - 1's dQ product: its buffers are free
      fence_acc(s);
      fence_acc(dp);
      fence_acc(acc);
    }
    if (jt + 1 < ntiles) load_kv(jt + 1, (jt + 1) & 1);
    cp_async_commit();
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
    {
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        da[kk][0] = pack2<BF>(s[2 * kk][0], s[2 * kk][1]);
        da[kk][1] = pack2<BF>(s[2 * kk][2], s[2 * kk][3]);
        da[kk][2] = pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        da[kk][3] = pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
      const uint64_t dk = desc_rows_k<BN>(cK);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) Mma<D, BF>::rs_mn(&acc[0][0], da[kk], dk + kk * kstep_mnmajor(), 1);
      wgmma::commit();  // runs on while the next step's copies land and its products are issued
    }
  }
  wgmma::wait<0>();
  fence_acc(acc);
  if constexpr (!BF) restore_exp<D>(acc, ea, eb);
  if (dqT)
    store_mapped<BF, D>(dqT + a.oq.base(x), a.oq, acc, ra, a.oq.rows(x, R), dq_add ? dq_add + x * R * D : nullptr);
  rsa = quad_sum(rsa);
  rsb = quad_sum(rsb);
  if (rowdz && tg == 0) {
    if (oka) rowdz[x * R + ra] = rsa;
    if (okb) rowdz[x * R + rb] = rsb;
  }
#endif
}

template <bool BF, int MIN_CTAS>
void launch(const Args& a, const u16* q, const u16* k, const u16* v, const float* G, const u16* dy, const float* m,
            const float* rf, const float* dd, const float* dq_add, float* rowdz, u16* dq) {
  auto kernel = tile_bwd_dq_sm90_kernel<BF, MIN_CTAS>;
  constexpr size_t smem = dq90_smem();
  allow_smem(kernel, smem);
  kernel<<<grid_of((a.R + kRows - 1) / kRows, a.X), kThreads, smem, stream()>>>(a, q, k, v, G, dy, m, rf, dd, dq_add,
                                                                                rowdz, dq);
  check_launch();
}

}  // namespace

bool dq_sm90_supported(int64_t d) { return d == kD; }

void launch_bwd_dq_sm90(const Args& a, bool bf, const u16* q, const u16* k, const u16* v, const float* G,
                        const u16* dy, const float* m, const float* rf, const float* dd, const float* dq_add,
                        float* rowdz, u16* dq) {
  if (sm90::tile_sm90_ctas() == 3) {
    bf ? launch<true, 3>(a, q, k, v, G, dy, m, rf, dd, dq_add, rowdz, dq)
       : launch<false, 3>(a, q, k, v, G, dy, m, rf, dd, dq_add, rowdz, dq);
  } else {
    bf ? launch<true, 2>(a, q, k, v, G, dy, m, rf, dd, dq_add, rowdz, dq)
       : launch<false, 2>(a, q, k, v, G, dy, m, rf, dd, dq_add, rowdz, dq);
  }
}

}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
