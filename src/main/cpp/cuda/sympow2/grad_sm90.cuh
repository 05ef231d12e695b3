// grad_sm90.cuh: the degree-2 gradient through phi on Hopper (sm_90a): the kernel and its launch for one CTA shape
// (grad_sm90.cu launches the library's shapes).
//
// The same result as the sm_80 kernel (grad.cu, sympow2_grad_kernel), with wgmma in place of mma.sync: for each
// feature group (A, a) and block B >= A, the tile dphi[rows, (A, a, B, .)] = Y H[(A, a, B, .)]^T (k = E, padded to
// a multiple of 16 with zeros), then the same register epilogue in the same order (dx[16 B + b] += c_AB rs
// x[16 A + a] dphi, and the sum for dx[16 A + a]), so dx and u are bitwise those of the sm_80 kernel where the
// tensor cores' sums are.
//
// A CTA is WG warpgroups of one m64 tile each (ROWS = 64 WG rows of one block x). Y is the A operand, in registers
// for the whole kernel (ldmatrix once from shared memory; it is the same for every group); H streams through
// shared memory one group at a time, PIPE buffers deep, shared by every warpgroup, and is the B operand, K-major
// (a group's feature rows hold their E columns, as H does in memory). A group's product runs in units of UB
// blocks (16 UB features, one m64 n(16 UB) k16 wgmma per k step): the unit after the current one (of this group or
// the next) runs in the tensor cores while the warps run the current unit's epilogue from the other of two
// accumulator sets, so a warpgroup keeps the tensor cores busy through its own epilogue; the CTA meets at one
// barrier every two groups (their H buffers), and the tensor cores drain every four groups (the loop's back edge).
//
// Shared memory (d = 64, four warpgroups: 36 + 44 + 80 KiB): sX [ROWS][D + 8] (the x rows as loaded), sY
// [ROWS][SY] (the y rows, read into registers once; columns E .. SY zero), then over both sXf [ROWS][D + 8] fp32
// (the x rows converted once: the epilogue reads x pairs without unpacking), and sH [PIPE][NK][16 nb][8] bf16 (a
// group's features as no-swizzle core matrices: for each 8-column chunk k of E the group's feature rows are
// consecutive 16-byte rows at k 16 nb 16 bytes, so that one descriptor shape serves every group: LBO = 256 nb bytes
// (next 8 columns, the k direction), SBO = 128 bytes (next 8 features); chunks past E / 8 stay zero).
#pragma once

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

// The shape of a CTA: WG warpgroups of one m64 tile each; UB blocks of 16 features a unit of the product; PIPE
// group buffers (buffer gi % PIPE: a mask where PIPE is a power of 2), up to PIPE - 3 loads in flight; MIN_CTAS a SM
// (__launch_bounds__: registers).
template <int WG_, int UB_, int PIPE_, int MIN_CTAS_ = (WG_ >= 4 ? 1 : 2)>
struct GradShape {
  static constexpr int WG = WG_, UB = UB_, PIPE = PIPE_, MIN_CTAS = MIN_CTAS_;
};

// The library's shapes at d = 64 (grad_sm90.cu): four warpgroups (256 rows a CTA, one CTA a SM, eight buffers) and
// two (128 rows, two CTAs a SM, five buffers), both in units of two blocks.
using GradWide = GradShape<4, 2, 8>;
using GradNarrow = GradShape<2, 2, 5>;

template <int D, typename S>
struct GradTraits {
  static constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, E = D + 8;
  static constexpr int WG = S::WG, UB = S::UB, THREADS = 128 * WG, ROWS = 64 * WG;
  static constexpr int MIN_CTAS = S::MIN_CTAS;      // __launch_bounds__
  static constexpr int EK = (E + 15) / 16;           // k16 steps (the last one padded with zeros)
  static constexpr int NK = 2 * EK;                  // 8-column chunks of a group buffer
  static constexpr int NC = E / 8;                   // chunks that hold H
  static constexpr int FMAX = 16 * NB;               // features of the largest group (A = 0)
  static constexpr int GROUP = NK * FMAX * 8;        // elements of a group buffer
  static constexpr int PIPE = S::PIPE;               // group buffers: two in the tensor cores (a unit of one
                                                     // group, its successor), the rest landed or in flight
  static_assert(PIPE >= 5, "a barrier for two groups: two groups landed, one in use, loads in flight");
  static constexpr int SD = D + 8;                   // x tile row stride (elements)
  static constexpr int SF = D + 8;                   // x tile row stride in fp32 (floats; 8 mod 32: the epilogue's
                                                     // float2 reads of a half-warp hit 32 different banks)
  static constexpr int SY = EK * 16 + 8;             // y tile row stride: whole k16 steps, ldmatrix-friendly
  static constexpr size_t smem =
      sizeof(uint16_t) * (static_cast<size_t>(ROWS) * (SD + SY) + static_cast<size_t>(PIPE) * GROUP);
  static_assert(E % 8 == 0 && NC < NK, "the padded k step needs at least one zero chunk");
  static_assert(ROWS * SF * 4 <= ROWS * (SD + SY) * 2, "the fp32 x rows replace the x and y tiles");
};

#ifdef POWER_ATTENTION_SM90A
namespace gradmma {
using u32 = uint32_t;

// KMajor<N>::rs(d, a, b): d (m64 x N fp32, N / 2 registers) += a (4 registers, bf16, m64 x k16) b (bf16, k16 x N,
// K-major: descriptor b); first(d, a, b): d = a b (d an output only, so that no earlier value of d is kept alive
// for it).
template <int N>
struct KMajor;

template <>
struct KMajor<16> {
  static __device__ __forceinline__ void first(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(0));
  }
  static __device__ __forceinline__ void rs(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  }
};

template <>
struct KMajor<32> {
  static __device__ __forceinline__ void first(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
        "%12, %13, %14, %15}, "
        "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3]), "=f"(d[4]), "=f"(d[5]), "=f"(d[6]), "=f"(d[7]), 
          "=f"(d[8]), "=f"(d[9]), "=f"(d[10]), "=f"(d[11]), "=f"(d[12]), "=f"(d[13]), "=f"(d[14]), "=f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(0));
  }
  static __device__ __forceinline__ void rs(float* d, const u32* a, uint64_t b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
        "%12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
  }
};

// Keeps the compiler from moving accesses to an accumulator set across a wgmma wait.
template <int N>
__device__ __forceinline__ void fence_regs(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
}  // namespace gradmma

// Group gi = 16 A + a of H (rows [off, off + R) of [D2, E], R = 16 (nb - A)) into a buffer: piece (f, chunk k) at
// k 8 FMAX + 8 f elements. Piece p = i + j THREADS of thread i (j = 0, 1, ..) is chunk p / FMAX, feature
// p % FMAX (so at 8 p elements): each 8-thread phase writes 128 consecutive bytes, and a thread's pieces cost a shift
// and a mask. The thread index is read anew each call: kept across groups, the pieces' offsets take registers the
// kernel has none to spare for (ptxas then spills).
template <int D, typename S>
__device__ __forceinline__ void grad_load_group(mma::u16* dst, const mma::u16* H, int gi) {
  using T = GradTraits<D, S>;
  constexpr int NB = T::NB, E = T::E, NC = T::NC, FMAX = T::FMAX;
  static_assert((FMAX & (FMAX - 1)) == 0 && T::THREADS % FMAX == 0, "pieces by shift and mask");
  const int A = gi >> 4, R = 16 * (NB - A);
  const mma::u16* src = H + group_offset(NB, A, gi & 15) * E;
  unsigned tid;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
#pragma unroll
  for (int j = 0; j < (NC * FMAX + T::THREADS - 1) / T::THREADS; ++j) {
    const int p = static_cast<int>(tid) + j * T::THREADS, ch = p / FMAX, f = p % FMAX;
    if ((j + 1) * T::THREADS <= NC * FMAX || ch < NC)
      if (f < R) mma::cp_async16(dst + 8 * p, src + f * E + ch * 8, true);
  }
}
#endif

// dx, u of the rows of block bx = blockIdx.x / parts; the sm_80 kernel's arguments and results.
template <bool BFX, int D, bool ONES, typename S>
__global__ void __launch_bounds__(GradTraits<D, S>::THREADS, GradTraits<D, S>::MIN_CTAS)
    sympow2_grad_sm90_kernel(const mma::u16* __restrict__ x, RowMap xm, const float* __restrict__ rs,
                             const mma::u16* __restrict__ y, RowMap ym, const mma::u16* __restrict__ H,
                             float* __restrict__ dx, float* __restrict__ u, int64_t X, int64_t n) {
#ifdef POWER_ATTENTION_SM90A
  using namespace mma;
  using T = GradTraits<D, S>;
  constexpr int NB = T::NB, E = T::E, EK = T::EK, UB = T::UB, ROWS = T::ROWS, PIPE = T::PIPE, SD = T::SD;
  constexpr int SY = T::SY, SF = T::SF, THREADS = T::THREADS, NG = 16 * NB;
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sY = sX + ROWS * SD;
  u16* sH = sY + ROWS * SY;
  float* sXf = reinterpret_cast<float*>(smem);  // the x rows in fp32, over sX and sY once Y is in registers
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tg = lane & 3;
  const int wg = warp >> 2, wl = warp & 3;
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * T::D2 * E;

  // this lane's rows (tile row 64 wg + 16 wl + gr + 8 h) and their scales (0 past n)
  int row[2];
  float scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = 64 * wg + 16 * wl + gr + 8 * h;
    const int64_t r = r0 + row[h];
    scale[h] = r < n ? (rs ? rs[bx * n + r] : 1.f) : 0.f;
  }

  // zeros where no copy writes: the y columns [E, SY), the chunks past E / 8 of every group buffer
  for (int i = threadIdx.x; i < ROWS * (SY - E); i += THREADS) sY[(i / (SY - E)) * SY + E + i % (SY - E)] = 0;
  for (int i = threadIdx.x; i < PIPE * (T::NK - T::NC) * T::FMAX; i += THREADS) {
    const int buf = i / ((T::NK - T::NC) * T::FMAX), rest = i % ((T::NK - T::NC) * T::FMAX);
    *reinterpret_cast<uint4*>(sH + buf * T::GROUP + (T::NC * T::FMAX + rest) * 8) = make_uint4(0u, 0u, 0u, 0u);
  }
  // copies: the x and y rows, then groups 0 .. PIPE - 4, one commit group each (the rows go with group 0)
  load_rows_mapped<D, ROWS, THREADS, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  load_rows_mapped<YW, ROWS, THREADS, SY>(sY, y + ym.base(bx), ym, r0, ym.rows(bx, n));
  if constexpr (ONES) ones_column<YW, ROWS, SY, THREADS>(sY, n - r0);
  auto prefetch = [&](int gi) {
    if (gi < NG) grad_load_group<D, S>(sH + (static_cast<unsigned>(gi) % PIPE) * T::GROUP, Hb, gi);
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < PIPE - 3; ++i) prefetch(i);

  // one barrier for two groups (gi even): the copies of groups gi and gi + 1 landed and visible to the tensor cores;
  // every warpgroup done with groups gi - 3 and gi - 2, whose buffers take groups gi + PIPE - 3 and gi + PIPE - 2
  auto arrive = [&](int gi) {
    cp_async_wait<PIPE - 5>();
    wgmma::fence_proxy_async();
    __syncthreads();
    prefetch(gi + PIPE - 3);
    prefetch(gi + PIPE - 2);
  };

  u32 yf[EK][4];        // Y, the A operand of every product
  float acc[2][8 * UB];  // two accumulator sets: one in the tensor cores, one in the epilogue
  float g[D / 8][4];     // dx of this lane's rows, in the accumulator layout
  zero(g);

  // unit U of group gi = 16 A + a (blocks A + UB U ..) into accumulator set P; d0: the descriptor of buffer 0's
  // start, LBO: next 8 columns (k), SBO: next 8 features (n)
  constexpr u32 LBO = T::FMAX * 16, SBO = 128;
  const uint64_t d0 = wgmma::desc_noswizzle(smem_addr(sH), LBO, SBO);
  auto issue = [&](auto A_, auto U_, auto P_, int gi) {
    constexpr int A = decltype(A_)::value, U = decltype(U_)::value, P = decltype(P_)::value;
    constexpr int B0 = A + UB * U, NBK = (NB - B0) < UB ? (NB - B0) : UB;
    // the descriptor of sH moved by this unit's offset (the address field counts 16 bytes; no carry out of it:
    // shared addresses stay below 2^18)
    const uint64_t d = d0 + (static_cast<unsigned>(gi) % PIPE) * (T::GROUP * 2 / 16) + 16 * (B0 - A) * 16 / 16;
    wgmma::fence();
    gradmma::KMajor<16 * NBK>::first(acc[P], yf[0], d);
#pragma unroll
    for (int kk = 1; kk < EK; ++kk) gradmma::KMajor<16 * NBK>::rs(acc[P], yf[kk], d + kk * 2 * LBO / 16);
    wgmma::commit();
  };

  // the epilogue of unit U of group (A, a) from set P (the sm_80 kernel's arithmetic, in its order)
  float w[2], p[2];
  auto epilogue = [&](auto A_, auto U_, auto P_) {
    constexpr int A = decltype(A_)::value, U = decltype(U_)::value, P = decltype(P_)::value;
    constexpr int B0 = A + UB * U, B1 = (B0 + UB) < NB ? (B0 + UB) : NB;
    const float* xa_row = sXf + row[0] * SF;
    const float* xb_row = sXf + row[1] * SF;
#pragma unroll
    for (int B = B0; B < B1; ++B) {
      const float c = B == A ? 1.f : kSqrt2;
      const float ca = c * w[0], cb = c * w[1];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float* dp = &acc[P][8 * (B - B0) + 4 * h];
        g[2 * B + h][0] += ca * dp[0];
        g[2 * B + h][1] += ca * dp[1];
        g[2 * B + h][2] += cb * dp[2];
        g[2 * B + h][3] += cb * dp[3];
        const int col = 16 * B + 8 * h + 2 * tg;
        const float2 xa = *reinterpret_cast<const float2*>(xa_row + col);
        const float2 xb = *reinterpret_cast<const float2*>(xb_row + col);
        p[0] += c * (dp[0] * xa.x + dp[1] * xa.y);
        p[1] += c * (dp[2] * xb.x + dp[3] * xb.y);
      }
    }
  };

  // group (A, a) whose units use the sets from parity Q on: each unit's successor (the next unit, or the first of
  // the next group after its barrier) into the other set, then the unit's epilogue. FIRST: the group's first unit
  // is issued here (after its barrier); LAST: no successor, the tensor cores drain (no wgmma stays in flight across
  // the loop's back edge, where ptxas would serialise every wgmma of the kernel).
  auto group = [&](auto A_, auto Q_, auto FIRST_, auto LAST_, int a) {
    constexpr int A = decltype(A_)::value, Q = decltype(Q_)::value;
    constexpr bool FIRST = decltype(FIRST_)::value, LAST = decltype(LAST_)::value;
    constexpr int NU = (NB - A + UB - 1) / UB;
    const int gi = 16 * A + a;
    if constexpr (FIRST) {
      if (gi > 0) arrive(gi);  // groups 0 and 1: their barrier came with the rows
      issue(A_, std::integral_constant<int, 0>{}, std::integral_constant<int, (Q * NU) & 1>{}, gi);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      w[h] = scale[h] * sXf[row[h] * SF + 16 * A + a];
      p[h] = 0.f;
    }
    static_for<NU>([&](auto U_) {
      constexpr int U = decltype(U_)::value, P = (Q * NU + U) & 1;
      constexpr auto next = std::integral_constant<int, 1 - P>{};
      if constexpr (U + 1 < NU) {
        issue(A_, std::integral_constant<int, U + 1>{}, next, gi);
        wgmma::wait<1>();
      } else if constexpr (!LAST) {
        if constexpr (Q % 2 == 1) arrive(gi + 1);  // group gi + 1 even: its pair's barrier
        issue(A_, std::integral_constant<int, 0>{}, next, gi + 1);
        wgmma::wait<1>();
      } else {
        wgmma::wait<0>();
      }
      gradmma::fence_regs<8 * UB>(acc[P]);
      epilogue(A_, U_, std::integral_constant<int, P>{});
    });
    // column 16 A + a: tile 2 A + a / 8, held by lane tg = (a % 8) / 2, element a % 2 (the sm_80 kernel's
    // select-and-add: register arrays take compile-time indices only)
    const bool mine = tg == ((a & 7) >> 1), odd = a & 1;
    const float pa = quad_sum(p[0]) * scale[0], pb = quad_sum(p[1]) * scale[1];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool here = mine && (a >> 3) == h;
      g[2 * A + h][0] += here && !odd ? pa : 0.f;
      g[2 * A + h][1] += here && odd ? pa : 0.f;
      g[2 * A + h][2] += here && !odd ? pb : 0.f;
      g[2 * A + h][3] += here && odd ? pb : 0.f;
    }
  };

  arrive(0);  // the x and y rows and groups 0, 1
#pragma unroll
  for (int kk = 0; kk < EK; ++kk) ldsm4(yf[kk], at_a(sY, SY, 64 * wg + 16 * wl, kk * 16));
  {  // the x rows to fp32 (exact), so that the epilogue reads them without unpacking
    constexpr int PIECES = ROWS * D / 8 / THREADS;  // 8 values each
    static_assert(ROWS * D % (8 * THREADS) == 0, "whole pieces a thread");
    uint4 v[PIECES];
#pragma unroll
    for (int k = 0; k < PIECES; ++k) {
      const int i = threadIdx.x + k * THREADS, r = i / (D / 8), c = (i % (D / 8)) * 8;
      v[k] = *reinterpret_cast<const uint4*>(sX + r * SD + c);
    }
    __syncthreads();  // every read of sX and sY done
#pragma unroll
    for (int k = 0; k < PIECES; ++k) {
      const int i = threadIdx.x + k * THREADS, r = i / (D / 8), c = (i % (D / 8)) * 8;
      const float2 a = unpack2<BFX>(v[k].x), b = unpack2<BFX>(v[k].y), e = unpack2<BFX>(v[k].z), f = unpack2<BFX>(v[k].w);
      *reinterpret_cast<float4*>(sXf + r * SF + c) = make_float4(a.x, a.y, b.x, b.y);
      *reinterpret_cast<float4*>(sXf + r * SF + c + 4) = make_float4(e.x, e.y, f.x, f.y);
    }
    __syncthreads();
  }
  // four groups a loop body
  static_for<NB>([&](auto A_) {
    using std::integral_constant;
    constexpr std::true_type yes{};
    constexpr std::false_type no{};
    for (int a = 0; a < 16; a += 4) {
      group(A_, integral_constant<int, 0>{}, yes, no, a);
      group(A_, integral_constant<int, 1>{}, no, no, a + 1);
      group(A_, integral_constant<int, 2>{}, no, no, a + 2);
      group(A_, integral_constant<int, 3>{}, no, yes, a + 3);
    }
  });

  float* ob = dx + bx * n * D;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t r = r0 + row[h];
    const float* xrow = sXf + row[h] * SF;
    float uu = 0.f;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const float g0 = g[nt][2 * h], g1 = g[nt][2 * h + 1];
      if (r < n) *reinterpret_cast<float2*>(ob + r * D + nt * 8 + 2 * tg) = make_float2(g0, g1);
      const float2 xv = *reinterpret_cast<const float2*>(xrow + nt * 8 + 2 * tg);
      uu += xv.x * g0 + xv.y * g1;
    }
    uu = quad_sum(uu) * 0.5f;  // Euler: x . grad of a degree-2 form is twice the form
    if (u && tg == 0 && r < n) u[bx * n + r] = uu;
  }
#endif
}

// Grid and shared memory of the kernel for shape S; the launch's error (cudaSuccess where it was queued).
template <bool BF, int D, bool ONES, typename S>
cudaError_t grad_launch_shape(const mma::u16* x, const RowMap& xm, const float* rs, const mma::u16* y,
                              const RowMap& ym, const mma::u16* H, float* dx, float* u, int64_t X, int64_t n,
                              cudaStream_t stream) {
  using T = GradTraits<D, S>;
  auto kernel = sympow2_grad_sm90_kernel<BF, D, ONES, S>;
  const int64_t blocks = X * ((n + T::ROWS - 1) / T::ROWS);
  if (blocks <= 0) return cudaSuccess;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::smem));
  if (attr != cudaSuccess) return attr;
  kernel<<<static_cast<unsigned>(blocks), T::THREADS, T::smem, stream>>>(x, xm, rs, y, ym, H, dx, u, X, n);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
