// scan_sm90.cuh: the degree-2 chunk states fused with the gated prefix on Hopper (sm_90a): the kernel and its launch
// for one CTA shape (scan_sm90.cu launches the library's shapes; the harness's scan timings name the others).
//
// The same scan as the sm_80 kernel (scan.cu, sympow2_scan_kernel), with wgmma in place of mma.sync. A CTA is WG
// warpgroups; warpgroup w owns one m64 tile of the running state (64 features x E columns, fp32 accumulators in
// wgmma's layout), so a CTA covers 64 WG features of one head and streams the head's rows once for all of them:
//   at a chunk's start   out[n] = H (bf16);  REV: dL[n] += decay_n (Hs[n] . H);  then H = decay_n H
//   over its rows        H += phi'(x)^T y   (per 16 rows: one m64 n E k16 wgmma a warpgroup)
// The A operand phi'(x)^T (features x rows) is built in registers, each warp its 16 features: the x block of its
// feature tile (ldmatrix.trans from the row-major x tile) scaled per row by c_AB rs x[16 A + a] in fp32, rounded once
// to bf16 (the sm_80 kernel's operand, bit for bit); the warp forms a stage's 64 row scalars once, two a lane, into a
// shared row of its own. The B operand y (rows x E) is read by the tensor cores from
// shared memory as no-swizzle core matrices, MN-major: for each 8-column chunk the stage's 64 rows are consecutive
// 16-byte rows (LBO 128 bytes: the next 8 rows; SBO 1024 bytes: the next 8 columns). A stage is 64 rows; the warps
// build stage q + 1's operands while the tensor cores run stage q's four wgmma, and the copies of stages
// q + 2 .. q + PIPE - 1 are in flight (ScanTraits::PIPE buffers).
//
// Shared memory a CTA: PIPE x (sX [64][D + 8] (ldmatrix-friendly stride) + sY [E / 8][64][8] bf16 + sR [64] fp32),
// plus sU [4 WG][64] fp32 (each warp's row scalars): d = 64 four warpgroups 6 x 18.3 + 4 = 114 KiB, two 4 x 18.3 + 3 =
// 76 KiB; d = 128 two warpgroups 4 x 34.3 + 3 = 140 KiB.
#pragma once

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/common/wgmma_sm90.cuh"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {

// Compile-time constants of the scan for head dimension D (d == e, E = e + 8 state columns) and WG warpgroups a CTA.
template <int D, int WG_>
struct ScanTraits {
  static constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, E = D + 8, NT = E / 8;
  static constexpr int WG = WG_, THREADS = 128 * WG;
  // __launch_bounds__: 16 warps a SM at d = 64 (registers up to 128 a thread at WG = 4; shared memory allows three
  // CTAs of 75 KiB), one CTA of 140 KiB at d = 128
  static constexpr int MIN_CTAS = D >= 128 ? 1 : WG >= 4 ? 1 : WG == 2 ? 2 : 3;
  static constexpr int ROWS = 64;                  // rows a stage
  // stage buffers: the one being built, the one in the tensor cores, PIPE - 2 loading (six at d = 64 in four
  // warpgroups, one CTA a SM; four where two or three CTAs share a SM, and at d = 128)
  static constexpr int PIPE = D == 64 && WG >= 4 ? 6 : 4;
  static constexpr int SD = D + 8;                 // x tile row stride (elements): an odd number of 16-byte units
  static constexpr int TILES = D2 / 64;            // m64 tiles of a head's state
  static constexpr int PARTS = TILES / WG;         // CTAs a head
  static constexpr int XS = ROWS * SD, YS = ROWS * E;  // elements of a stage's x and y buffers
  static constexpr size_t smem =
      sizeof(uint16_t) * PIPE * (XS + YS) + sizeof(float) * (PIPE * ROWS + 4 * WG * ROWS);
  static_assert(TILES % WG == 0, "a head's m64 tiles split evenly over the CTAs");
  static_assert(E == 72 || E == 136, "wgmma shapes instantiated for E = 72, 136 (wgmma_sm90.cuh)");
};

#ifdef POWER_ATTENTION_SM90A
// Rows [row0, row0 + 64) of a block through map mp (src at the block's base) into a stage's y buffer as core matrices:
// piece (r, ch) at ch 64 8 + r 8 elements, for the W / 8 chunks in memory; rows past n are zeros. Thread i takes
// r = i % 8 + 8 (i / (8 NC)), ch = (i / 8) % NC: each 8-thread phase writes 8 consecutive 16-byte rows (no bank
// conflicts) and a warp reads 64 contiguous bytes of each of eight rows.
template <int W, int THREADS>
__device__ __forceinline__ void scan_load_y(mma::u16* dst, const mma::u16* src, const RowMap& mp, int64_t row0,
                                            int64_t n) {
  constexpr int NC = W / 8, ROWS = 64;
  for (int i = threadIdx.x; i < ROWS * NC; i += THREADS) {
    const int r = (i & 7) + 8 * (i / (8 * NC)), ch = (i >> 3) % NC;
    const bool ok = row0 + r < n;
    mma::cp_async16(dst + ch * ROWS * 8 + r * 8, ok ? src + mp.row(row0 + r) + ch * 8 : src, ok);
  }
}
#endif

// The scan over the N chunks of head blockIdx.x / PARTS, features [64 WG p, 64 WG (p + 1)) with p = blockIdx.x % PARTS.
// Same arguments as the sm_80 kernel; ONES: y holds e = E - 8 columns and the kernel makes [y | 1 | 0].
template <bool BFX, int D, bool REV, bool ONES, int WG>
__global__ void __launch_bounds__(ScanTraits<D, WG>::THREADS, ScanTraits<D, WG>::MIN_CTAS)
    sympow2_scan_sm90_kernel(const mma::u16* __restrict__ x, RowMap xm, const float* __restrict__ rs,
                             const mma::u16* __restrict__ y, RowMap ym, const float* __restrict__ decay,
                             const float* __restrict__ Hin, const mma::u16* __restrict__ Hs, mma::u16* __restrict__ out,
                             float* __restrict__ last, float* __restrict__ dL, int64_t N, int64_t c) {
#ifdef POWER_ATTENTION_SM90A
  using namespace mma;
  using T = ScanTraits<D, WG>;
  constexpr int NB = T::NB, D2 = T::D2, E = T::E, NT = T::NT, ROWS = T::ROWS, PIPE = T::PIPE, SD = T::SD;
  constexpr int THREADS = T::THREADS, XS = T::XS, YS = T::YS;
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);                      // [PIPE][64][SD]
  u16* sY = sX + PIPE * XS;                                    // [PIPE][NT][64][8]
  float* sR = reinterpret_cast<float*>(sY + PIPE * YS);        // [PIPE][64]
  float* sU = sR + PIPE * ROWS + (threadIdx.x >> 5) * ROWS;    // this warp's row scalars of the stage it builds
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t bh = blockIdx.x / T::PARTS;
  // this warp's 16-feature tile k (features 16 k ..): m64 tile WG p + warp / 4, its warp warp % 4. Tile k is tile
  // a W + j of group A (W = nb - A tiles a group, 16 groups a block A): features (A, a, A + j, .), row scalar
  // x[16 A + a], block x[16 (A + j) ..]
  const int tile = 4 * (static_cast<int>(blockIdx.x % T::PARTS) * WG + (warp >> 2)) + (warp & 3);
  int t = tile, A = 0;
  while (A < NB - 1 && t >= 16 * (NB - A)) t -= 16 * (NB - A), ++A;
  const int W = NB - A, a = t / W, j = t % W;
  const int colA = 16 * A + a, colB = 16 * (A + j);
  const float cab = j == 0 ? 1.f : kSqrt2;
  const int64_t f0 = static_cast<int64_t>(tile) * 16 + gr;  // this lane's feature rows f0, f0 + 8
  const u16* xh = x + xm.base(bh * N);
  const u16* yh = y + ym.base(bh * N);
  const int64_t xstep = xm.step(), ystep = ym.step();
  const float* rb = rs ? rs + bh * N * c : nullptr;

  float acc[NT * 4];
#pragma unroll
  for (int i = 0; i < NT * 4; ++i) acc[i] = 0.f;
  if (Hin) {
    const float* h = Hin + bh * D2 * E;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float2 u = *reinterpret_cast<const float2*>(h + f0 * E + nt * 8 + 2 * tg);
      const float2 v = *reinterpret_cast<const float2*>(h + (f0 + 8) * E + nt * 8 + 2 * tg);
      acc[4 * nt] = u.x, acc[4 * nt + 1] = u.y, acc[4 * nt + 2] = v.x, acc[4 * nt + 3] = v.y;
    }
  }
  const int spc = static_cast<int>((c + ROWS - 1) / ROWS);  // stages a chunk
  const int64_t stages = N * spc;
  struct Pos {  // stage s of the k-th chunk in walking order (chunk N - 1 - k when REV)
    int64_t k;
    int s;
  };
  auto advance = [&](Pos& p) {
    if (++p.s == spc) p.s = 0, ++p.k;
  };
  auto load = [&](const Pos& p, int buf) {
    const int64_t n = REV ? N - 1 - p.k : p.k, s0 = static_cast<int64_t>(p.s) * ROWS;
    load_rows_mapped<D, ROWS, THREADS, SD>(sX + buf * XS, xh + n * xstep, xm, s0, xm.chunk_rows(n, c));
    scan_load_y<YW, THREADS>(sY + buf * YS, yh + n * ystep, ym, s0, ym.chunk_rows(n, c));
    if constexpr (ONES) {
      for (int i = threadIdx.x; i < ROWS; i += THREADS)  // chunk NT - 1: 1 then zeros in rows below c - s0
        *reinterpret_cast<uint4*>(sY + buf * YS + (NT - 1) * ROWS * 8 + i * 8) =
            make_uint4(s0 + i < c ? 0x3F80u : 0u, 0u, 0u, 0u);  // bf16 1.0
    }
    for (int i = threadIdx.x; i < ROWS; i += THREADS) {
      float* dst = sR + buf * ROWS + i;
      const bool ok = s0 + i < c;
      if (rb) {
        cp_async4(dst, rb + (ok ? n * c + s0 + i : 0), ok);
      } else {
        *dst = ok ? 1.f : 0.f;
      }
    }
  };
  Pos cur{0, 0}, pre{0, 0};
#pragma unroll
  for (int i = 0; i < PIPE - 1; ++i) {  // stages 0 .. PIPE - 2: one commit group each
    if (i < stages) load(pre, i), advance(pre);
    cp_async_commit();
  }
  u32 af[2][4][4];  // the A operands of two stages (4 k16 steps each): one read by the running wgmma, one being built
  auto keep = [](u32(&r)[4][4]) {  // r stays live (in its registers) up to here
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int k = 0; k < 4; ++k) asm volatile("" : "+r"(r[i][k])::"memory");
  };
  // chunk start (stage cur, s = 0, no wgmma running): hand out H, then decay it
  auto chunk_start = [&]() {
    const int64_t n = REV ? N - 1 - cur.k : cur.k;
    u16* o = out + (bh * N + n) * D2 * E;
    [[maybe_unused]] float dot = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int64_t c0 = f0 * E + nt * 8 + 2 * tg, c1 = c0 + 8 * E;
      *reinterpret_cast<u32*>(o + c0) = pack2<true>(acc[4 * nt], acc[4 * nt + 1]);
      *reinterpret_cast<u32*>(o + c1) = pack2<true>(acc[4 * nt + 2], acc[4 * nt + 3]);
      if constexpr (REV) {
        const u16* hs = Hs + (bh * N + n) * D2 * E;
        const float2 u = unpack2<true>(*reinterpret_cast<const u32*>(hs + c0));
        const float2 v = unpack2<true>(*reinterpret_cast<const u32*>(hs + c1));
        dot += u.x * acc[4 * nt] + u.y * acc[4 * nt + 1] + v.x * acc[4 * nt + 2] + v.y * acc[4 * nt + 3];
      }
    }
    const float dec = decay ? decay[bh * N + n] : 1.f;
    if constexpr (REV) {
      if (dL) {
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o2);
        if (lane == 0 && dot != 0.f) atomicAdd(dL + bh * N + n, dec * dot);
      }
    }
    if (decay) {
#pragma unroll
      for (int i = 0; i < NT * 4; ++i) acc[i] *= dec;
    }
  };
  // the A operands of the stage in buffer buf into set P
  auto build = [&](auto P_, int buf) {
    constexpr int P = decltype(P_)::value;
    const u16* cX = sX + buf * XS;
    const float* cR = sR + buf * ROWS;
    // the row scalars c_AB rs x[colA] of the stage's 64 rows, two a lane, into this warp's sU (the warp's reads of
    // the last stage's are behind the barrier before this)
#pragma unroll
    for (int i = lane; i < ROWS; i += 32) sU[i] = (cab * cR[i]) * to_float<BFX>(cX[i * SD + colA]);
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < ROWS / 16; ++kk) {
      const int t0 = kk * 16 + 2 * tg;
      u32 xf[4];
      ldsm4t(xf, at_b(cX, SD, kk * 16, colB));
      const float2 u01 = *reinterpret_cast<const float2*>(sU + t0);      // rows t0, t0 + 1
      const float2 u89 = *reinterpret_cast<const float2*>(sU + t0 + 8);  // rows t0 + 8, t0 + 9
      af[P][kk][0] = scale2<BFX>(xf[0], u01.x, u01.y);
      af[P][kk][1] = scale2<BFX>(xf[1], u01.x, u01.y);
      af[P][kk][2] = scale2<BFX>(xf[2], u89.x, u89.y);
      af[P][kk][3] = scale2<BFX>(xf[3], u89.x, u89.y);
    }
  };
  // stage q (operands in set P) through the tensor cores while the warps build stage q + 1's into the other set
  auto step = [&](auto P_, int64_t q) {
    constexpr int P = decltype(P_)::value;
    constexpr auto Q = std::integral_constant<int, 1 - P>{};
    wgmma::fence();
    const u32 base = smem_addr(sY + static_cast<int>(q % PIPE) * YS);
#pragma unroll
    for (int kk = 0; kk < ROWS / 16; ++kk)
      wgmma::Wgmma<E>::rs(acc, af[P][kk], wgmma::desc_noswizzle(base + 256 * kk, 128, 16 * ROWS));
    wgmma::commit();
    advance(cur);
    const bool more = q + 1 < stages;
    if (more) {
      cp_async_wait<PIPE - 3>();  // this thread's copies of stage q + 1 have landed (later stages' may still run)
      wgmma::fence_proxy_async();
      __syncthreads();  // everyone's copies of q + 1 visible; everyone past stage q - 1's wait
      if (q + PIPE - 1 < stages) load(pre, static_cast<int>((q + PIPE - 1) % PIPE)), advance(pre);
    }
    cp_async_commit();
    if (more) build(Q, static_cast<int>((q + 1) % PIPE));
    wgmma::wait<0>();
    wgmma::Wgmma<E>::fence_operand(acc);
    keep(af[P]);
    if (more && cur.s == 0) chunk_start();
  };
  cp_async_wait<PIPE - 2>();  // stage 0
  wgmma::fence_proxy_async();
  __syncthreads();
  chunk_start();
  build(std::integral_constant<int, 0>{}, 0);
  for (int64_t q = 0; q < stages; q += 2) {
    step(std::integral_constant<int, 0>{}, q);
    if (q + 1 < stages) step(std::integral_constant<int, 1>{}, q + 1);
  }
  wgmma::Wgmma<E>::fence_operand(acc);
  if (last) {
    float* l = last + bh * D2 * E;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      *reinterpret_cast<float2*>(l + f0 * E + nt * 8 + 2 * tg) = make_float2(acc[4 * nt], acc[4 * nt + 1]);
      *reinterpret_cast<float2*>(l + (f0 + 8) * E + nt * 8 + 2 * tg) = make_float2(acc[4 * nt + 2], acc[4 * nt + 3]);
    }
  }
#endif
}

// Grid and shared memory of the kernel for WG warpgroups a CTA; the launch's error (cudaSuccess where it was queued;
// cudaErrorInvalidConfiguration for a grid over 2^31 - 1 CTAs).
template <bool BF, int D, bool REV, bool ONES, int WG>
cudaError_t scan_launch_shape(const mma::u16* x, const RowMap& xm, const float* rs, const mma::u16* y,
                              const RowMap& ym, const float* decay, const float* Hin, const mma::u16* Hs,
                              mma::u16* out, float* last, float* dL, int64_t BH, int64_t N, int64_t c,
                              cudaStream_t stream) {
  using T = ScanTraits<D, WG>;
  auto kernel = sympow2_scan_sm90_kernel<BF, D, REV, ONES, WG>;
  const int64_t blocks = BH * T::PARTS;
  if (blocks <= 0) return cudaSuccess;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::smem));
  if (attr != cudaSuccess) return attr;
  kernel<<<static_cast<unsigned>(blocks), T::THREADS, T::smem, stream>>>(x, xm, rs, y, ym, decay, Hin, Hs, out, last,
                                                                         dL, N, c);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
