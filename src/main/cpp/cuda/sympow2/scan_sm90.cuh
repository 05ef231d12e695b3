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
// each warp's staging tile of out [16][E] bf16 (the reverse scan: also one of Hs, and an mbarrier), sU [4 WG][64]
// fp32 (each warp's row scalars), a chunk's decay a buffer: d = 64 four warpgroups 150 KiB (reverse 186), two 93
// (111); d = 128 two warpgroups 173 (207).
#pragma once

#include "cuda/common/bulk_sm90.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/common/wgmma_sm90.cuh"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

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
  static constexpr int WARPS = 4 * WG, OT = 16 * E;   // a warp's staging tile: its 16 feature rows of a state
  // shared memory: the stage buffers, the warps' output tiles (and in the reverse scan their tiles of the forward's
  // states), the row scalars, each warp's row scalars, a chunk's decay a buffer (8 floats), the warps' mbarriers
  static constexpr size_t smem_for(bool rev) {
    return sizeof(uint16_t) * (PIPE * (XS + YS) + (rev ? 2 : 1) * WARPS * OT) +
           sizeof(float) * (PIPE * ROWS + WARPS * ROWS + 8) + (rev ? sizeof(uint64_t) * WARPS : 0);
  }
  static_assert(PIPE <= 8, "a chunk's decay a buffer: 8 floats");
  static_assert(TILES % WG == 0, "a head's m64 tiles split evenly over the CTAs");
  static_assert(E == 72 || E == 136, "wgmma shapes instantiated for E = 72, 136 (wgmma_sm90.cuh)");
};

#ifdef POWER_ATTENTION_SM90A
// f(integral_constant<int, 0>) .. f(integral_constant<int, N - 1>): a loop whose index is a compile-time constant in
// the body (shared-memory offsets as instruction immediates).
template <class F, int... I>
__device__ __forceinline__ void static_for_seq(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_seq(f, std::make_integer_sequence<int, N>{});
}

// cp.async of 16 / 4 bytes from global src to shared address dst + OFF bytes; ok false: zeros, nothing read.
template <int OFF>
__device__ __forceinline__ void cp16_at(mma::u32 dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0+%3], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0),
               "n"(OFF));
}
__device__ __forceinline__ void cp4_at(mma::u32 dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 4 : 0));
}
// ldmatrix.x4.trans at shared address addr + OFF bytes
template <int OFF>
__device__ __forceinline__ void ldsm4t_at(mma::u32* r, mma::u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr), "n"(OFF));
}
#endif

// The scan over the N chunks of head blockIdx.x / PARTS, features [64 WG p, 64 WG (p + 1)) with p = blockIdx.x % PARTS.
// Same arguments as the sm_80 kernel; ONES: y holds e = E - 8 columns and the kernel makes [y | 1 | 0].
//
// A stage's copies, one 16-byte piece each, at fixed places of the thread for every stage (compile-time trip
// counts, the shared offsets as immediates, one global pointer a stage from the chunk's base):
//  - x (64 rows x D / 8 pieces, row-major, stride SD): row xr + k XR, column piece tid % (D / 8); a warp reads
//    whole 128-byte row segments;
//  - y (core matrices): the first YM (8 or 16) column chunks by all threads, row (tid % 8) + 8 (tid / 8 YM) + k YR,
//    chunk (tid / 8) % YM (each 8-thread phase writes 128 contiguous bytes; a warp reads 64 or 128 bytes of eight
//    rows); threads 0-63 the last chunk, row tid (y's ninth / seventeenth chunk, or the ones column when ONES);
//  - the row scalars: threads 64-127, row tid - 64.
// G1: both maps have g == 1 (row r at r ld: a piece's pointer steps by 64 ld a stage); else the same pieces through
// RowMap::row (rows r / g, members r % g), a kernel of its own (the general path beside the other in one loop takes
// registers the stepped one needs: ptxas spilled at 128).
template <bool BFX, int D, bool REV, bool ONES, int WG, bool G1>
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
  constexpr int YW = ONES ? E - 8 : E;         // columns of y in memory
  constexpr int XC = D / 8, XR = THREADS / XC;  // x pieces a row, rows a pass
  constexpr int YM = YW / 8 >= 16 ? 16 : 8, YR = THREADS / YM;  // y chunks of the main passes, rows a pass
  static_assert(THREADS % XC == 0 && ROWS % XR == 0, "x: whole rows a pass, whole passes a stage");
  static_assert(YR % 8 == 0 && ROWS % YR == 0, "y: whole 8-row groups a pass, whole passes a stage");
  static_assert(YW / 8 - YM == (ONES ? 0 : 1) && YM == NT - 1, "y: the main chunks, then one chunk (or the ones)");
  static_assert(THREADS >= 2 * ROWS, "threads 0-127 take the last chunk and the row scalars");
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);                      // [PIPE][64][SD]
  u16* sY = sX + PIPE * XS;                                    // [PIPE][NT][64][8]
  u16* sO = sY + PIPE * YS;                                    // [WARPS][16][E]: the warps' tiles of out
  u16* sH = sO + T::WARPS * T::OT;                             // REV: [WARPS][16][E], their tiles of Hs
  float* sR = reinterpret_cast<float*>(sH + (REV ? T::WARPS * T::OT : 0));  // [PIPE][64]
  float* sU = sR + PIPE * ROWS + (threadIdx.x >> 5) * ROWS;    // this warp's row scalars of the stage it builds
  float* sDec = sR + PIPE * ROWS + T::WARPS * ROWS;            // [8]: the decay of the chunk a buffer's stage starts
  uint64_t* sBar = reinterpret_cast<uint64_t*>(sDec + 8);      // REV: [WARPS], the warps' Hs tiles landed
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gr = lane >> 2, tg = lane & 3;
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
  const int f0 = tile * 16 + gr;  // this lane's feature rows f0, f0 + 8
  const u16* xh = x + xm.base(bh * N);
  const u16* yh = y + ym.base(bh * N);
  constexpr bool g1 = G1;

  float acc[NT * 4];
#pragma unroll
  for (int i = 0; i < NT * 4; ++i) acc[i] = 0.f;
  if (Hin) {
    const float* h = Hin + bh * D2 * E + static_cast<int64_t>(f0) * E + 2 * tg;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float2 u = *reinterpret_cast<const float2*>(h + nt * 8);
      const float2 v = *reinterpret_cast<const float2*>(h + 8 * E + nt * 8);
      acc[4 * nt] = u.x, acc[4 * nt + 1] = u.y, acc[4 * nt + 2] = v.x, acc[4 * nt + 3] = v.y;
    }
  }
  // this thread's pieces: shared addresses in buffer 0; global pointers at the pieces of the next stage to load
  // (g == 1: stepped by 64 rows a stage), the kernel's arguments x, y, rs where a piece is past the rows
  const int xr = tid / XC, xcol = (tid % XC) * 8;
  const int yr = (tid & 7) + 8 * (tid / (8 * YM)), ych = (tid >> 3) & (YM - 1), er = tid & (ROWS - 1);
  const u32 xdst = smem_addr(sX + xr * SD + xcol), ydst = smem_addr(sY + ych * ROWS * 8 + yr * 8);
  const u32 edst = smem_addr(sY + (NT - 1) * ROWS * 8 + er * 8), rdst = smem_addr(sR + er);

  const int spc = static_cast<int>((c + ROWS - 1) / ROWS);  // stages a chunk
  const int stages = static_cast<int>(N) * spc;
  // the next stage to load: stage ps of the pk-th chunk in walking order; the rows of that chunk that exist (nx, ny)
  int pk = 0, ps = 0, nx = 0, ny = 0;
  const u16 *px = x, *py = y;  // g == 1: this thread's x and y pieces of the stage's first rows
  auto enter_chunk = [&]() {
    const int64_t pn = REV ? N - 1 - pk : pk;
    nx = static_cast<int>(xm.chunk_rows(pn, c)), ny = static_cast<int>(ym.chunk_rows(pn, c));
    if constexpr (g1) {
      px = xh + pn * xm.step() + xr * xm.ld + xcol;
      py = yh + pn * ym.step() + yr * ym.ld + ych * 8;
    }
  };
  enter_chunk();
  auto load = [&](int buf) {
    const int s0 = ps * ROWS, lx = nx - s0, ly = ny - s0, lc = static_cast<int>(c) - s0;
    const int64_t pn = REV ? N - 1 - pk : pk;
    const u32 bx = xdst + buf * (2 * XS), by = ydst + buf * (2 * YS);
    if constexpr (g1) {
      static_for<ROWS / XR>([&](auto K) {
        constexpr int k = decltype(K)::value;
        const bool ok = xr + k * XR < lx;
        cp16_at<2 * k * XR * SD>(bx, ok ? px + k * XR * xm.ld : x, ok);
      });
      static_for<ROWS / YR>([&](auto K) {
        constexpr int k = decltype(K)::value;
        const bool ok = yr + k * YR < ly;
        cp16_at<2 * k * YR * 8>(by, ok ? py + k * YR * ym.ld : y, ok);
      });
    } else {
      const u16* xc = xh + pn * xm.step() + xcol;
      const u16* yc = yh + pn * ym.step() + ych * 8;
      static_for<ROWS / XR>([&](auto K) {
        constexpr int k = decltype(K)::value;
        const bool ok = xr + k * XR < lx;
        cp16_at<2 * k * XR * SD>(bx, ok ? xc + xm.row(s0 + xr + k * XR) : x, ok);
      });
      static_for<ROWS / YR>([&](auto K) {
        constexpr int k = decltype(K)::value;
        const bool ok = yr + k * YR < ly;
        cp16_at<2 * k * YR * 8>(by, ok ? yc + ym.row(s0 + yr + k * YR) : y, ok);
      });
    }
    if (tid < ROWS) {  // the last column chunk: y's, or 1 then zeros in rows below c - s0
      if constexpr (ONES) {
        *reinterpret_cast<uint4*>(sY + buf * YS + (NT - 1) * ROWS * 8 + er * 8) =
            make_uint4(er < lc ? 0x3F80u : 0u, 0u, 0u, 0u);  // bf16 1.0
      } else {
        const bool ok = er < ly;
        // (threads 0-63: from this thread's main piece, row yr chunk ych, to row er chunk YM)
        const u16* p = g1 ? py + ((er - yr) * ym.ld + (YM - ych) * 8) : yh + pn * ym.step() + ym.row(s0 + er) + YM * 8;
        cp16_at<0>(edst + buf * (2 * YS), ok ? p : y, ok);
      }
    } else if (tid < 2 * ROWS) {  // the row scalars
      const bool ok = er < lc;
      if (rs) {
        cp4_at(rdst + buf * (4 * ROWS), ok ? rs + (bh * N + pn) * c + s0 + er : rs, ok);
      } else {
        sR[buf * ROWS + er] = ok ? 1.f : 0.f;
      }
    }
    if (tid == 0 && ps == 0 && decay) cp4_at(smem_addr(sDec + buf), decay + bh * N + pn, true);  // the chunk's decay
    if (++ps == spc) {
      ps = 0;
      if (++pk < N) enter_chunk();
    } else if constexpr (g1) {
      px += ROWS * xm.ld, py += ROWS * ym.ld;
    }
  };
  if constexpr (REV) {  // each warp's mbarrier, then Hs of the first chunk in walking order
    if (lane == 0) {
      bulk::mbar_init(smem_addr(sBar + warp), 1);
      bulk::fence_init();
      const int64_t first = (bh * N + (N - 1)) * (D2 * E) + static_cast<int64_t>(tile) * 16 * E;
      bulk::load(smem_addr(sH + warp * T::OT), Hs + first, 2 * T::OT, smem_addr(sBar + warp));
    }
    __syncwarp();
  }
#pragma unroll
  for (int i = 0; i < PIPE - 1; ++i) {  // stages 0 .. PIPE - 2: one commit group each
    if (i < stages) load(i);
    cp_async_commit();
  }
  u32 af[2][4][4];  // the A operands of two stages (4 k16 steps each): one read by the running wgmma, one being built
  auto keep = [](u32(&r)[4][4]) {  // r stays live (in its registers) up to here
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int k = 0; k < 4; ++k) asm volatile("" : "+r"(r[i][k])::"memory");
  };
  // the stage the tensor cores take next: stage cs of the ck-th chunk in walking order, in buffer cb
  int ck = 0, cs = 0, cb = 0, pb = PIPE - 1;
  // chunk start (stage cur, s = 0, no wgmma running): hand out H, then decay it. out[n] = H (bf16) goes through the
  // warp's tile sO (stmatrix of the accumulators) and one bulk copy of its 16 contiguous feature rows; in the reverse
  // scan the warp's 16 rows of Hs[n] were brought to sH by a bulk load issued at the last chunk start.
  const u32 sOw = smem_addr(sO + warp * T::OT), sHw = smem_addr(sH + warp * T::OT);
  const u32 mat = (((lane & 7) + 8 * ((lane >> 3) & 1)) * E + 8 * (lane >> 4)) * 2;  // this lane's stmatrix row
  [[maybe_unused]] const u32 bar = smem_addr(sBar + warp);
  const int64_t wrow = static_cast<int64_t>(tile) * 16 * E;  // the warp's rows in a state
  auto hs_prefetch = [&](int k) {  // REV, lane 0: Hs of the k-th chunk in walking order into sH
    if constexpr (REV) bulk::load(sHw, Hs + (bh * N + (N - 1 - k)) * (D2 * E) + wrow, 2 * T::OT, bar);
  };
  auto chunk_start = [&]() {
    const int64_t n = REV ? N - 1 - ck : ck;
    if (lane == 0) bulk::wait_read<0>();  // the last chunk's copy has read sO
    __syncwarp();
    static_for<NT / 2>([&](auto P) {
      constexpr int nt = 2 * decltype(P)::value;
      bulk::stsm4_at<nt * 16>(sOw + mat, pack2<true>(acc[4 * nt], acc[4 * nt + 1]),
                              pack2<true>(acc[4 * nt + 2], acc[4 * nt + 3]),
                              pack2<true>(acc[4 * nt + 4], acc[4 * nt + 5]),
                              pack2<true>(acc[4 * nt + 6], acc[4 * nt + 7]));
    });
    if constexpr (NT % 2 == 1) {
      constexpr int nt = NT - 1;
      bulk::stsm2_at<nt * 16>(sOw + mat, pack2<true>(acc[4 * nt], acc[4 * nt + 1]),
                              pack2<true>(acc[4 * nt + 2], acc[4 * nt + 3]));
    }
    wgmma::fence_proxy_async();
    __syncwarp();
    if (lane == 0) {
      bulk::store(out + (bh * N + n) * (D2 * E) + wrow, sOw, 2 * T::OT);
      bulk::commit();
    }
    const float dec = decay ? sDec[cb] : 1.f;
    if constexpr (REV) {
      bulk::mbar_wait(bar, static_cast<u32>(ck & 1));
      float dot = 0.f;
      static_for<NT / 2>([&](auto P) {
        constexpr int nt = 2 * decltype(P)::value;
        u32 h[4];
        bulk::ldsm4_at<nt * 16>(h, sHw + mat);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float2 u = unpack2<true>(h[2 * i]), v = unpack2<true>(h[2 * i + 1]);
          const int a0 = 4 * (nt + i);
          dot += u.x * acc[a0] + u.y * acc[a0 + 1] + v.x * acc[a0 + 2] + v.y * acc[a0 + 3];
        }
      });
      if constexpr (NT % 2 == 1) {
        constexpr int nt = NT - 1;
        u32 h[2];
        bulk::ldsm2_at<nt * 16>(h, sHw + mat);
        const float2 u = unpack2<true>(h[0]), v = unpack2<true>(h[1]);
        dot += u.x * acc[4 * nt] + u.y * acc[4 * nt + 1] + v.x * acc[4 * nt + 2] + v.y * acc[4 * nt + 3];
      }
      __syncwarp();  // every lane's reads of sH done
      if (lane == 0 && ck + 1 < N) hs_prefetch(ck + 1);
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
  // this lane's ldmatrix address (buffer 0, k16 step 0) of its warp's x block: the A operand's rows are the x
  // tile's columns colB .. colB + 15 (ldmatrix.trans of rows kk 16 ..)
  const u32 xa = smem_addr(sX + ((lane & 7) + (lane >> 4) * 8) * SD + colB + ((lane >> 3) & 1) * 8);
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
    const u32 ba = xa + buf * (2 * XS);
    static_for<ROWS / 16>([&](auto K) {
      constexpr int kk = decltype(K)::value;
      const int t0 = kk * 16 + 2 * tg;
      u32 xf[4];
      ldsm4t_at<2 * kk * 16 * SD>(xf, ba);
      const float2 u01 = *reinterpret_cast<const float2*>(sU + t0);      // rows t0, t0 + 1
      const float2 u89 = *reinterpret_cast<const float2*>(sU + t0 + 8);  // rows t0 + 8, t0 + 9
      af[P][kk][0] = scale2<BFX>(xf[0], u01.x, u01.y);
      af[P][kk][1] = scale2<BFX>(xf[1], u01.x, u01.y);
      af[P][kk][2] = scale2<BFX>(xf[2], u89.x, u89.y);
      af[P][kk][3] = scale2<BFX>(xf[3], u89.x, u89.y);
    });
  };
  // the descriptor of buffer 0's y as no-swizzle core matrices, MN-major (LBO 128 bytes: the next 8 rows, SBO 1024
  // bytes: the next 8 columns); a buffer, a k16 step are added to its address field (14 bits, below 256 KiB)
  const uint64_t ydesc = wgmma::desc_noswizzle(smem_addr(sY), 128, 16 * ROWS);
  // stage q (operands in set P) through the tensor cores while the warps build stage q + 1's into the other set
  auto step = [&](auto P_, int q) {
    constexpr int P = decltype(P_)::value;
    constexpr auto Q = std::integral_constant<int, 1 - P>{};
    wgmma::fence();
    const uint64_t d = ydesc + static_cast<uint64_t>(cb * (2 * YS / 16));
    static_for<ROWS / 16>([&](auto K) {
      constexpr int kk = decltype(K)::value;
      wgmma::Wgmma<E>::rs(acc, af[P][kk], d + 256 / 16 * kk);
    });
    wgmma::commit();
    cb = cb + 1 == PIPE ? 0 : cb + 1;
    if (++cs == spc) cs = 0, ++ck;
    const bool more = q + 1 < stages;
    if (more) {
      cp_async_wait<PIPE - 3>();  // this thread's copies of stage q + 1 have landed (later stages' may still run)
      wgmma::fence_proxy_async();
      __syncthreads();  // everyone's copies of q + 1 visible; everyone past stage q - 1's wait
      if (q + PIPE - 1 < stages) load(pb), pb = pb + 1 == PIPE ? 0 : pb + 1;
    }
    cp_async_commit();
    if (more) build(Q, cb);
    wgmma::wait<0>();
    wgmma::Wgmma<E>::fence_operand(acc);
    keep(af[P]);
    if (more && cs == 0) chunk_start();
  };
  cp_async_wait<PIPE - 2>();  // stage 0
  wgmma::fence_proxy_async();
  __syncthreads();
  chunk_start();
  build(std::integral_constant<int, 0>{}, 0);
  for (int q = 0; q < stages; q += 2) {
    step(std::integral_constant<int, 0>{}, q);
    if (q + 1 < stages) step(std::integral_constant<int, 1>{}, q + 1);
  }
  wgmma::Wgmma<E>::fence_operand(acc);
  if (lane == 0) bulk::wait_all<0>();  // the last chunk's copy of out has landed (and read sO)
  if (last) {
    float* l = last + bh * D2 * E + static_cast<int64_t>(f0) * E + 2 * tg;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      *reinterpret_cast<float2*>(l + nt * 8) = make_float2(acc[4 * nt], acc[4 * nt + 1]);
      *reinterpret_cast<float2*>(l + 8 * E + nt * 8) = make_float2(acc[4 * nt + 2], acc[4 * nt + 3]);
    }
  }
#endif
}

// Grid and shared memory of the kernel for WG warpgroups a CTA; the launch's error (cudaSuccess where it was queued;
// cudaErrorInvalidConfiguration for a grid over 2^31 - 1 CTAs).
template <bool BF, int D, bool REV, bool ONES, int WG, bool G1>
cudaError_t scan_launch_shape(const mma::u16* x, const RowMap& xm, const float* rs, const mma::u16* y,
                              const RowMap& ym, const float* decay, const float* Hin, const mma::u16* Hs,
                              mma::u16* out, float* last, float* dL, int64_t BH, int64_t N, int64_t c,
                              cudaStream_t stream) {
  using T = ScanTraits<D, WG>;
  auto kernel = sympow2_scan_sm90_kernel<BF, D, REV, ONES, WG, G1>;
  const int64_t blocks = BH * T::PARTS;
  if (blocks <= 0) return cudaSuccess;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(T::smem_for(REV)));
  if (attr != cudaSuccess) return attr;
  kernel<<<static_cast<unsigned>(blocks), T::THREADS, T::smem_for(REV), stream>>>(x, xm, rs, y, ym, decay, Hin, Hs,
                                                                                  out, last, dL, N, c);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
