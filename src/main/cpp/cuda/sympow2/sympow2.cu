// sympow2_cuda.cu: the degree-2 state products of sympow2_cuda.h. phi is never written to memory: each tensor-core
// operand of phi is an x block (ldmatrix from shared memory) scaled by one x value per row or per column, in fp32,
// rounded once to bf16. fp32 accumulation.
//
//   sympow2_scan_kernel    S_n = phi'(X_n)^T Y_n fused with the gated prefix over chunks (forward or reverse):
//                          a warp owns a 16-feature tile of the running state, rows stream in stages of 64
//   sympow2_query_kernel   B = phi'(X) H        a warp owns 32 rows, H streams one (A, a) group at a time
//   sympow2_grad_kernel    dx from (Y H^T)      likewise; dphi lives in registers, 16 features at a time
#include "cuda/sympow2/sympow2.h"

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/state_scale.cuh"
#include "sympow.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace power_attention {
namespace cuda {
namespace {

using namespace mma;

constexpr float kSqrt2 = 1.41421356237309504880f;

// Offset of feature group (A, a) in the internal layout (nb blocks): the groups of blocks A' < A hold
// 256 (nb - A') features each; group (A, a) is 16 (nb - A) features.
__host__ __device__ constexpr int group_offset(int nb, int A, int a) {
  return 256 * (A * nb - A * (A - 1) / 2) + a * 16 * (nb - A);
}

// f(integral_constant<int, I>) for I = 0 .. N-1, unrolled (a plain `#pragma unroll` over a loop that holds a
// run-time loop and barriers was left rolled by the compiler, which sent the accumulators to local memory).
template <typename F, int... I>
__device__ __forceinline__ void static_for_impl(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Scales the two halves of an A-operand register (two values of one row, or of one column pair) by f0, f1 and
// rounds to bf16.
template <bool BFX>
__device__ __forceinline__ u32 scale2(u32 v, float f0, float f1) {
  const float2 x = unpack2<BFX>(v);
  return pack2<true>(x.x * f0, x.y * f1);
}

constexpr int kStateTokens = 64;  // rows a stage of the scan kernel
constexpr int kScanPipe = 3;      // stages in flight: one head's rows stream through each CTA in order

// Row strides of the scan kernel's tiles: an odd number of 16-byte units keeps ldmatrix free of bank conflicts
// (E = e + 8 is 8 mod 16, so its tile takes 16 more).
template <int D, int E>
constexpr size_t states_smem() {
  return sizeof(u16) * kScanPipe * kStateTokens * ((D + 8) + (E + 16)) + sizeof(float) * kScanPipe * kStateTokens;
}

// ---------------------------------------------------------------------------------------------------------------
// The chunk states and their gated prefix in one pass, per head: a warp owns two 16-feature tiles of the running
// state (fp32 registers) that share their x block (features (A, a, B, .) and (A, a + 1, B, .)), so one ldmatrix'd
// operand and each value fragment feed two tensor-core products. It walks the head's chunks in order (REV: in
// reverse), 64 rows a stage:
//   at a chunk's start   out[n] = H (bf16);  REV: dL[n] += decay_n (Hs[n] . H);  then H = decay_n H
//   over its rows        H += phi'(x)^T y (tensor cores)
// Forward: H starts at H0 and out = Hs, the states entering each chunk; last = the final state. Backward: H starts
// at the final state's gradient, the rows are Q' and dB, out = the gradient of the state leaving each chunk, last =
// the initial state's gradient. No [N, D2, E] fp32 tensor is made.
// ---------------------------------------------------------------------------------------------------------------

// The extended columns [e, e + 8) of a shared tile of y rows: 1 then zeros in rows below n, zeros past them
// (16-byte stores: every tile here keeps those columns 16-byte aligned).
template <int e, int ROWS, int S, int THREADS>
__device__ __forceinline__ void ones_column(u16* tile, int64_t n) {
  for (int i = threadIdx.x; i < ROWS; i += THREADS)
    *reinterpret_cast<uint4*>(tile + i * S + e) = make_uint4(i < n ? 0x3F80u : 0u, 0u, 0u, 0u);  // bf16 1.0
}

constexpr int kScanThreads = 128;  // 4 warps: 20 CTAs a head at d = 64, up to 3 a SM

// ONES: y holds e = E - 8 columns and the kernel makes the extended ones ([y | 1 | 0], see sympow2_cuda.h).
template <bool BFX, int D, int E, bool REV, bool ONES = false>
__global__ void __launch_bounds__(kScanThreads) sympow2_scan_kernel(
    const u16* __restrict__ x, RowMap xm, const float* __restrict__ rs, const u16* __restrict__ y, RowMap ym,
    const float* __restrict__ decay, const float* __restrict__ Hin, const u16* __restrict__ Hs,
    u16* __restrict__ out, float* __restrict__ last, float* __restrict__ dL, int64_t N, int64_t c) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, PAIRS = D2 / 32, NT = E / 8;
  constexpr int SD = D + 8, SE = E + 16, WARPS = kScanThreads / 32, PARTS = (PAIRS + WARPS - 1) / WARPS;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);                              // [kScanPipe][64][SD]
  u16* sY = sX + kScanPipe * kStateTokens * SD;                         // [kScanPipe][64][SE]
  float* sR = reinterpret_cast<float*>(sY + kScanPipe * kStateTokens * SE);  // [kScanPipe][64]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t bh = blockIdx.x / PARTS;
  const int pair = static_cast<int>(blockIdx.x % PARTS) * WARPS + warp;
  const bool valid = pair < PAIRS;
  // pair t of group A (8 (nb - A) pairs): a = 2 (t / W), B = A + t % W with W = nb - A; its tiles are the groups'
  // tiles a W + (B - A) and (a + 1) W + (B - A), after the 16 (nb - A') tiles of each earlier group A'
  int t = valid ? pair : 0, A = 0, first = 0;
  while (A < NB - 1 && t >= 8 * (NB - A)) t -= 8 * (NB - A), first += 16 * (NB - A), ++A;
  const int W = NB - A, a2 = 2 * (t / W), j = t % W;
  const int colA = 16 * A + a2, colB = 16 * (A + j);  // x columns of the row scalars (colA, colA + 1) and the block
  const float cab = j == 0 ? 1.f : kSqrt2;
  const int tile0 = first + a2 * W + j;
  const int64_t f[2] = {static_cast<int64_t>(tile0) * 16 + gr, static_cast<int64_t>(tile0 + W) * 16 + gr};
  // chunk n of the head: rows at x + xm.base(bh N) + n xm.step() (likewise y), row scales in the compute layout
  const u16* xh = x + xm.base(bh * N);
  const u16* yh = y + ym.base(bh * N);
  const int64_t xstep = xm.step(), ystep = ym.step();
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  const float* rb = rs ? rs + bh * N * c : nullptr;

  float H[2][NT][4];
  zero(H[0]);
  zero(H[1]);
  if (Hin && valid) {
    const float* h = Hin + bh * D2 * E;
#pragma unroll
    for (int z = 0; z < 2; ++z)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 u = *reinterpret_cast<const float2*>(h + f[z] * E + nt * 8 + 2 * tg);
        const float2 v = *reinterpret_cast<const float2*>(h + (f[z] + 8) * E + nt * 8 + 2 * tg);
        H[z][nt][0] = u.x, H[z][nt][1] = u.y, H[z][nt][2] = v.x, H[z][nt][3] = v.y;
      }
  }
  const int spc = static_cast<int>((c + kStateTokens - 1) / kStateTokens);  // stages a chunk
  const int64_t stages = N * spc;
  // stage q is stage s of the k-th chunk in walking order (chunk N - 1 - k when REV), tracked by counters: 64-bit
  // divisions here cost more instructions than a stage's matrix products
  struct Pos {
    int64_t k;
    int s;
  };
  auto advance = [&](Pos& p) {
    if (++p.s == spc) p.s = 0, ++p.k;
  };
  auto load = [&](const Pos& p, int buf) {
    const int64_t n = REV ? N - 1 - p.k : p.k, s0 = static_cast<int64_t>(p.s) * kStateTokens;
    load_rows_mapped<D, kStateTokens, kScanThreads, SD>(sX + buf * kStateTokens * SD, xh + n * xstep, xm, s0,
                                                        xm.chunk_rows(n, c));
    load_rows_mapped<YW, kStateTokens, kScanThreads, SE>(sY + buf * kStateTokens * SE, yh + n * ystep, ym, s0,
                                                         ym.chunk_rows(n, c));
    if constexpr (ONES) ones_column<YW, kStateTokens, SE, kScanThreads>(sY + buf * kStateTokens * SE, c - s0);
    for (int i = threadIdx.x; i < kStateTokens; i += kScanThreads) {
      float* dst = sR + buf * kStateTokens + i;
      const bool ok = s0 + i < c;
      if (rb) {
        cp_async4(dst, rb + (ok ? n * c + s0 + i : 0), ok);
      } else {
        *dst = ok ? 1.f : 0.f;
      }
    }
  };
  // a ring of kScanPipe stages: kScanPipe - 1 loads in flight while one is used (a CTA's rows arrive in order, so
  // its stream is latency-bound with fewer)
  Pos cur{0, 0}, pre{0, 0};
#pragma unroll
  for (int i = 0; i < kScanPipe - 1; ++i) {
    if (i < stages) load(pre, i), advance(pre);
    cp_async_commit();
  }
  int buf = 0, pre_buf = kScanPipe - 1;
  for (int64_t q = 0; q < stages; ++q) {
    if (q + kScanPipe - 1 < stages) load(pre, pre_buf), advance(pre);
    pre_buf = pre_buf + 1 == kScanPipe ? 0 : pre_buf + 1;
    cp_async_commit();
    cp_async_wait<kScanPipe - 1>();
    __syncthreads();
    if (cur.s == 0 && valid) {  // chunk start: hand out H, then decay it
      const int64_t n = REV ? N - 1 - cur.k : cur.k;
      u16* o = out + (bh * N + n) * D2 * E;
      float dot = 0.f;
#pragma unroll
      for (int z = 0; z < 2; ++z)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int64_t c0 = f[z] * E + nt * 8 + 2 * tg, c1 = c0 + 8 * E;
          *reinterpret_cast<u32*>(o + c0) = pack2<true>(H[z][nt][0], H[z][nt][1]);
          *reinterpret_cast<u32*>(o + c1) = pack2<true>(H[z][nt][2], H[z][nt][3]);
          if constexpr (REV) {
            const u16* hs = Hs + (bh * N + n) * D2 * E;
            const float2 u = unpack2<true>(*reinterpret_cast<const u32*>(hs + c0));
            const float2 v = unpack2<true>(*reinterpret_cast<const u32*>(hs + c1));
            dot += u.x * H[z][nt][0] + u.y * H[z][nt][1] + v.x * H[z][nt][2] + v.y * H[z][nt][3];
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
        for (int z = 0; z < 2; ++z)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) H[z][nt][e] *= dec;
      }
    }
    const u16* cX = sX + buf * kStateTokens * SD;
    const u16* cY = sY + buf * kStateTokens * SE;
    const float* cR = sR + buf * kStateTokens;
    if (valid) {
#pragma unroll
      for (int kk = 0; kk < kStateTokens / 16; ++kk) {
        const int k0 = kk * 16, t0 = k0 + 2 * tg;
        u32 xf[4];
        ldsm4t(xf, at_b(cX, SD, k0, colB));
        // row scalars: rs x[colA] (tile 0) and rs x[colA + 1] (tile 1) of rows t0, t0 + 1, t0 + 8, t0 + 9
        float u[2][4];
        const int tr[4] = {t0, t0 + 1, t0 + 8, t0 + 9};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 xv = unpack2<BFX>(*reinterpret_cast<const u32*>(cX + tr[i] * SD + colA));
          const float r = cab * cR[tr[i]];
          u[0][i] = r * xv.x;
          u[1][i] = r * xv.y;
        }
        u32 af[2][4];
#pragma unroll
        for (int z = 0; z < 2; ++z) {
          af[z][0] = scale2<BFX>(xf[0], u[z][0], u[z][1]);
          af[z][1] = scale2<BFX>(xf[1], u[z][0], u[z][1]);
          af[z][2] = scale2<BFX>(xf[2], u[z][2], u[z][3]);
          af[z][3] = scale2<BFX>(xf[3], u[z][2], u[z][3]);
        }
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cY, SE, k0, np * 16));
#pragma unroll
          for (int z = 0; z < 2; ++z) {
            mma16816<true>(H[z][2 * np], af[z], r[0], r[1]);
            mma16816<true>(H[z][2 * np + 1], af[z], r[2], r[3]);
          }
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cY, SE, k0, (NT - 1) * 8));
          mma16816<true>(H[0][NT - 1], af[0], r[0], r[1]);
          mma16816<true>(H[1][NT - 1], af[1], r[0], r[1]);
        }
      }
    }
    advance(cur);
    buf = buf + 1 == kScanPipe ? 0 : buf + 1;
    __syncthreads();
  }
  if (last && valid) {
    float* l = last + bh * D2 * E;
#pragma unroll
    for (int z = 0; z < 2; ++z)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        *reinterpret_cast<float2*>(l + f[z] * E + nt * 8 + 2 * tg) = make_float2(H[z][nt][0], H[z][nt][1]);
        *reinterpret_cast<float2*>(l + (f[z] + 8) * E + nt * 8 + 2 * tg) = make_float2(H[z][nt][2], H[z][nt][3]);
      }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Row kernels: a CTA of 4 warps covers 128 rows of one block x, 32 a warp (two m16 tiles, so each H fragment read
// from shared memory feeds two tensor-core products); H [D2, E] streams through shared memory one feature group
// (A, a) at a time (16 (nb - A) rows), through a ring of kGroupBufs buffers.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kRowThreads = 128;  // 4 warps

// m16 tiles a warp (two; one at d = 128, where two would spill registers) and rows a CTA
template <int D>
constexpr int row_tiles() {
  return D >= 128 ? 1 : 2;
}
template <int D>
constexpr int rows_per_cta() {
  return kRowThreads / 32 * 16 * row_tiles<D>();
}

// Shared layout of the row kernels: x rows [rows_per_cta][D + 8], H groups [kGroupBufs][16 nb][SH], with SH = E
// rounded up to 16, plus 8 (the grad kernel reads whole k16 steps of E; the columns past E stay zero). One load in
// flight while a group is used (four buffers, three in flight, measured 2-4% slower).
constexpr int kGroupBufs = 2;
template <int D, int E>
constexpr int row_sh() {
  return (E + 15) / 16 * 16 + 8;
}
template <int D, int E>
constexpr size_t row_smem(bool with_y) {
  return sizeof(u16) * (rows_per_cta<D>() * (D + 8) + kGroupBufs * 16 * (D / 16) * row_sh<D, E>() +
                        (with_y ? rows_per_cta<D>() * row_sh<D, E>() : 0));
}

template <int D, int E>
__device__ __forceinline__ void load_group(u16* dst, const u16* H, int A, int a) {
  constexpr int NB = D / 16, SH = row_sh<D, E>();
  const int off = group_offset(NB, A, a), rows = 16 * (NB - A);
  load_rows<E, 16 * NB, kRowThreads, SH>(dst, H + static_cast<int64_t>(off) * E, 0, rows);
}

// Group gi = 16 A + a into its ring buffer, when there is one (commits a group of copies either way).
template <int D, int E>
__device__ __forceinline__ void prefetch_group(u16* sH, const u16* H, int gi) {
  constexpr int NB = D / 16, SH = row_sh<D, E>();
  if (gi < 16 * NB) load_group<D, E>(sH + (gi % kGroupBufs) * 16 * NB * SH, H, gi / 16, gi % 16);
  cp_async_commit();
}

// Zeroes columns [E, SH) of `rows` rows of a shared tile (never written by the loads).
template <int E, int SH>
__device__ __forceinline__ void zero_tail(u16* s, int rows) {
  constexpr int W = SH - E;
  for (int i = threadIdx.x; i < rows * W; i += kRowThreads) s[(i / W) * SH + E + i % W] = 0;
}

// This lane's rows of a row kernel: m16 tile i, half h (row gr or gr + 8): the row in the CTA's tile, and its scale
// (0 past n).
template <int MT>
struct LaneRows {
  int row[MT][2];
  float scale[MT][2];
};
template <int MT>
__device__ __forceinline__ LaneRows<MT> lane_rows(const float* rs, int64_t bx, int64_t r0, int64_t n) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  LaneRows<MT> L;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 16 * MT + 16 * i + (lane >> 2) + 8 * h;
      const int64_t r = r0 + row;
      L.row[i][h] = row;
      L.scale[i][h] = r < n ? (rs ? rs[bx * n + r] : 1.f) : 0.f;
    }
  return L;
}

// The chunked form's combination (SPEC §4.6) in the query kernel's epilogue: with B = phi'(q) H the row's state
// term and wa, ws the row factors of state_scale.cuh (from m, the token's gc and the chunk's mu): den = l wa + B[e] ws,
// y = (numA wa + B[:e] ws) / den (0 where den is). numA, y [rows, e], l, m, den [rows], fp32; gc [X rows / g] fp32
// (null: 0), mu [X] fp64; y also to yo (the input dtype) through map, when given.
struct Combine {
  const float* numA = nullptr;
  const float* l = nullptr;
  const float* m = nullptr;
  const float* gc = nullptr;
  const double* mu = nullptr;
  int g = 1;
  float* y = nullptr;
  float* den = nullptr;
  u16* yo = nullptr;
  RowMap map;
};

template <bool BFX, int D, int E>
__global__ void __launch_bounds__(kRowThreads, 2) sympow2_query_kernel(const u16* __restrict__ x, RowMap xm,
                                                                    const float* __restrict__ rs,
                                                                    const u16* __restrict__ H,
                                                                    float* __restrict__ out, int64_t X, int64_t n,
                                                                    int cols, Combine cmb) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, NT = E / 8, SD = D + 8, SH = row_sh<D, E>();
  constexpr int MT = row_tiles<D>(), ROWS = rows_per_cta<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + ROWS * SD;
  const int warp = threadIdx.x >> 5, tg = threadIdx.x & 3;
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * D2 * E;
  load_rows_mapped<D, ROWS, kRowThreads, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
#pragma unroll
  for (int i = 0; i < kGroupBufs - 1; ++i) prefetch_group<D, E>(sH, Hb, i);
  const LaneRows<MT> L = lane_rows<MT>(rs, bx, r0, n);
  u32 xf[MT][NB][4];
  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) zero(acc[i]);
  static_for<NB>([&](auto A_) {
    constexpr int A = decltype(A_)::value;
    for (int a = 0; a < 16; ++a) {
      const int gi = 16 * A + a;
      prefetch_group<D, E>(sH, Hb, gi + kGroupBufs - 1);
      cp_async_wait<kGroupBufs - 1>();
      __syncthreads();
      if (A == 0 && a == 0) {
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int B = 0; B < NB; ++B) ldsm4(xf[i][B], at_a(sX, SD, warp * 16 * MT + 16 * i, 16 * B));
      }
      const u16* cH = sH + (gi % kGroupBufs) * 16 * NB * SH;
      float w[MT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) w[i][h] = L.scale[i][h] * to_float<BFX>(sX[L.row[i][h] * SD + 16 * A + a]);
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        u32 af[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const float ca = c * w[i][0], cb = c * w[i][1];
          af[i][0] = scale2<BFX>(xf[i][B][0], ca, ca);
          af[i][1] = scale2<BFX>(xf[i][B][1], cb, cb);
          af[i][2] = scale2<BFX>(xf[i][B][2], ca, ca);
          af[i][3] = scale2<BFX>(xf[i][B][3], cb, cb);
        }
        const int f0 = (B - A) * 16;
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cH, SH, f0, np * 16));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma16816<true>(acc[i][2 * np], af[i], r[0], r[1]);
            mma16816<true>(acc[i][2 * np + 1], af[i], r[2], r[3]);
          }
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cH, SH, f0, (NT - 1) * 8));
#pragma unroll
          for (int i = 0; i < MT; ++i) mma16816<true>(acc[i][NT - 1], af[i], r[0], r[1]);
        }
      }
      __syncthreads();
    }
  });
  if (cmb.y) {
    constexpr int e = E - 8;  // B[:, e] is the normaliser's column: element 0 of lane tg = 0 in tile e / 8
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float be = __shfl_sync(0xffffffffu, acc[i][e / 8][2 * h], lane & ~3);
        const int64_t r = r0 + L.row[i][h];
        if (r >= n) continue;
        const int64_t row = bx * n + r;
        float wa, ws;
        state_row_weights<float>(cmb.m[row], cmb.gc ? cmb.gc[bx * (n / cmb.g) + r / cmb.g] : 0.f, cmb.mu[bx], wa, ws);
        const float dn = cmb.l[row] * wa + be * ws;
        u16* yo = cmb.yo && r < cmb.map.rows(bx, n) ? cmb.yo + cmb.map.base(bx) + cmb.map.row(r) : nullptr;
#pragma unroll
        for (int nt = 0; nt < e / 8; ++nt) {
          const int64_t at = row * e + nt * 8 + 2 * tg;
          const float2 na = *reinterpret_cast<const float2*>(cmb.numA + at);
          const float y0 = na.x * wa + acc[i][nt][2 * h] * ws, y1 = na.y * wa + acc[i][nt][2 * h + 1] * ws;
          const float2 yv = dn != 0.f ? make_float2(y0 / dn, y1 / dn) : make_float2(0.f, 0.f);
          *reinterpret_cast<float2*>(cmb.y + at) = yv;
          if (yo) *reinterpret_cast<u32*>(yo + nt * 8 + 2 * tg) = pack2<BFX>(yv.x, yv.y);
        }
        if (tg == 0) cmb.den[row] = dn;
      }
    return;
  }
  float* ob = out + bx * n * cols;  // the first `cols` columns (a multiple of 8)
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + L.row[i][h];
      if (r >= n) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        if (nt * 8 < cols)
          *reinterpret_cast<float2*>(ob + r * cols + nt * 8 + 2 * tg) =
              make_float2(acc[i][nt][2 * h], acc[i][nt][2 * h + 1]);
    }
}

// dx_r = d/dx_r [phi'(x_r) . dphi_r], dphi_r = H y_r. Per group (A, a) and block B >= A, the 16 x 16 tile
// dphi[rows, (A, a, B, .)] comes from the tensor cores (k = E), then, with w = c_AB rs x[16 A + a]:
//   dx[16 B + b] += w dphi        (the x[16 B + b] factor of each feature)
//   dx[16 A + a] += c_AB rs sum_b dphi x[16 B + b]   (the x[16 A + a] factor)
template <bool BFX, int D, int E, bool ONES = false>
__global__ void __launch_bounds__(kRowThreads, 2) sympow2_grad_kernel(const u16* __restrict__ x, RowMap xm,
                                                                   const float* __restrict__ rs,
                                                                   const u16* __restrict__ y, RowMap ym,
                                                                   const u16* __restrict__ H, float* __restrict__ dx,
                                                                   float* __restrict__ u, int64_t X, int64_t n) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, SD = D + 8, SH = row_sh<D, E>(), EK = (E + 15) / 16;
  constexpr int MT = row_tiles<D>(), ROWS = rows_per_cta<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + ROWS * SD;
  u16* sY = sH + kGroupBufs * 16 * NB * SH;
  const int warp = threadIdx.x >> 5, tg = threadIdx.x & 3;
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * D2 * E;
  zero_tail<E, SH>(sH, kGroupBufs * 16 * NB);
  zero_tail<E, SH>(sY, ROWS);
  load_rows_mapped<D, ROWS, kRowThreads, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  load_rows_mapped<YW, ROWS, kRowThreads, SH>(sY, y + ym.base(bx), ym, r0, ym.rows(bx, n));
  if constexpr (ONES) ones_column<YW, ROWS, SH, kRowThreads>(sY, n - r0);
#pragma unroll
  for (int i = 0; i < kGroupBufs - 1; ++i) prefetch_group<D, E>(sH, Hb, i);
  const LaneRows<MT> L = lane_rows<MT>(rs, bx, r0, n);
  u32 yf[MT][EK][4];
  float g[MT][D / 8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) zero(g[i]);
  static_for<NB>([&](auto A_) {
    constexpr int A = decltype(A_)::value;
    for (int a = 0; a < 16; ++a) {
      const int gi = 16 * A + a;
      prefetch_group<D, E>(sH, Hb, gi + kGroupBufs - 1);
      cp_async_wait<kGroupBufs - 1>();
      __syncthreads();
      if (A == 0 && a == 0) {
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int kk = 0; kk < EK; ++kk) ldsm4(yf[i][kk], at_a(sY, SH, warp * 16 * MT + 16 * i, kk * 16));
      }
      const u16* cH = sH + (gi % kGroupBufs) * 16 * NB * SH;
      float w[MT][2], p[MT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          w[i][h] = L.scale[i][h] * to_float<BFX>(sX[L.row[i][h] * SD + 16 * A + a]);
          p[i][h] = 0.f;
        }
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        const int f0 = (B - A) * 16;
        float dp[MT][2][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) zero(dp[i]);
#pragma unroll
        for (int kk = 0; kk < EK; ++kk) {
          u32 r[4];
          ldsm4(r, at_b(cH, SH, f0, kk * 16));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma16816<true>(dp[i][0], yf[i][kk], r[0], r[1]);
            mma16816<true>(dp[i][1], yf[i][kk], r[2], r[3]);
          }
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const float ca = c * w[i][0], cb = c * w[i][1];
          const u16* xa_row = sX + L.row[i][0] * SD;
          const u16* xb_row = sX + L.row[i][1] * SD;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            g[i][2 * B + h][0] += ca * dp[i][h][0];
            g[i][2 * B + h][1] += ca * dp[i][h][1];
            g[i][2 * B + h][2] += cb * dp[i][h][2];
            g[i][2 * B + h][3] += cb * dp[i][h][3];
            const int col = 16 * B + 8 * h + 2 * tg;  // x of this lane's features, from shared memory
            const float2 xa = unpack2<BFX>(*reinterpret_cast<const u32*>(xa_row + col));
            const float2 xb = unpack2<BFX>(*reinterpret_cast<const u32*>(xb_row + col));
            p[i][0] += c * (dp[i][h][0] * xa.x + dp[i][h][1] * xa.y);
            p[i][1] += c * (dp[i][h][2] * xb.x + dp[i][h][3] * xb.y);
          }
        }
      }
      // column 16 A + a: tile 2 A + a / 8, held by lane tg = (a % 8) / 2, element a % 2
      // Register arrays take compile-time indices only, and a branch per element would be merged into one store
      // through a computed address (local memory): add zeros everywhere else instead.
      const bool mine = tg == ((a & 7) >> 1), odd = a & 1;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const float pa = quad_sum(p[i][0]) * L.scale[i][0], pb = quad_sum(p[i][1]) * L.scale[i][1];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const bool here = mine && (a >> 3) == h;
          g[i][2 * A + h][0] += here && !odd ? pa : 0.f;
          g[i][2 * A + h][1] += here && odd ? pa : 0.f;
          g[i][2 * A + h][2] += here && !odd ? pb : 0.f;
          g[i][2 * A + h][3] += here && odd ? pb : 0.f;
        }
      }
      __syncthreads();
    }
  });
  float* ob = dx + bx * n * D;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + L.row[i][h];
      const u16* xrow = sX + L.row[i][h] * SD;
      float uu = 0.f;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        const float g0 = g[i][nt][2 * h], g1 = g[i][nt][2 * h + 1];
        if (r < n) *reinterpret_cast<float2*>(ob + r * D + nt * 8 + 2 * tg) = make_float2(g0, g1);
        const float2 xv = unpack2<BFX>(*reinterpret_cast<const u32*>(xrow + nt * 8 + 2 * tg));
        uu += xv.x * g0 + xv.y * g1;
      }
      uu = quad_sum(uu) * 0.5f;  // Euler: x . grad of a degree-2 form is twice the form
      if (u && tg == 0 && r < n) u[bx * n + r] = uu;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

const u16* bits(const at::Tensor& t) { return static_cast<const u16*>(t.data_ptr()); }
const float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

unsigned grid_of(int64_t n) {
  TORCH_CHECK(n > 0 && n < (int64_t(1) << 31), "power_full: grid of ", n, " blocks");
  return static_cast<unsigned>(n);
}

template <typename F>
void dispatch(at::ScalarType dt, int64_t d, F&& f) {
  using std::integral_constant;
  const bool bf = dt == at::kBFloat16;
  switch (d) {
    case 16: bf ? f(std::true_type{}, integral_constant<int, 16>{}) : f(std::false_type{}, integral_constant<int, 16>{}); break;
    case 32: bf ? f(std::true_type{}, integral_constant<int, 32>{}) : f(std::false_type{}, integral_constant<int, 32>{}); break;
    case 64: bf ? f(std::true_type{}, integral_constant<int, 64>{}) : f(std::false_type{}, integral_constant<int, 64>{}); break;
    case 128: bf ? f(std::true_type{}, integral_constant<int, 128>{}) : f(std::false_type{}, integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "power_full: no degree-2 kernel for d = ", d);
  }
}

// An operand's blocks, rows a block and row map. The compute layout [X, n, w] has its own dense map; a scan's
// operand there is [BH, N c, w], whose blocks are its N chunks a head.
struct Operand {
  int64_t X, n;
  RowMap map;
};
Operand operand(const Rows& r, int64_t w, const char* what, int64_t N = 1) {
  const at::Tensor& t = r.data;
  TORCH_CHECK(t.defined() && t.is_contiguous() && t.dim() >= 1 && t.size(-1) == w,
              "power_full: degree-2 kernels: bad ", what);
  if (!r.mapped()) {
    TORCH_CHECK(t.dim() == 3 && t.size(1) % N == 0, "power_full: degree-2 kernels: ", what, " must be [X, n, ", w,
                "] with n a multiple of ", N, ", got ", t.sizes());
    const int64_t n = t.size(1) / N;
    return {t.size(0) * N, n, RowMap::dense(n, w)};
  }
  const RowMap& m = r.map;
  TORCH_CHECK(t.dim() == 4 && m.c > 0 && m.w == w && t.size(1) == m.t && t.size(2) == m.h * m.g &&
                  m.t > (m.N - 1) * m.c && m.t <= m.N * m.c && (N == 1 || m.N == N),
              "power_full: degree-2 kernels: ", what, " ", t.sizes(), " disagrees with its row map");
  return {t.size(0) * m.h * m.N, m.c * m.g, m};
}
Operand check_x(const Rows& x, const at::Tensor& rs, int64_t N = 1) {
  const at::Tensor& t = x.data;
  TORCH_CHECK(t.defined() && sympow2_supported(t.scalar_type(), t.size(-1), t.size(-1)),
              "power_full: degree-2 kernels: bad x");
  const Operand o = operand(x, t.size(-1), "x", N);
  TORCH_CHECK(!rs.defined() || (rs.scalar_type() == at::kFloat && rs.is_contiguous() && rs.numel() == o.X * o.n),
              "power_full: degree-2 kernels: bad row scale");
  return o;
}
void check_bf16(const at::Tensor& t, int64_t X, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.numel() == X * rows * cols,
              "power_full: degree-2 kernels: bad ", what);
}
// A y operand of X blocks of n rows: bf16, E columns or (ones: the kernel makes [y | 1 | 0]) E - 8.
Operand check_y(const Rows& y, const Operand& x, int64_t E, int64_t N = 1) {
  TORCH_CHECK(y.data.defined() && y.data.scalar_type() == at::kBFloat16,
              "power_full: degree-2 kernels: y must be bf16");
  const int64_t w = y.data.size(-1);
  TORCH_CHECK(w == E || w == E - 8, "power_full: degree-2 kernels: y has ", w, " columns, expected ", E, " or ",
              E - 8);
  const Operand o = operand(y, w, "y", N);
  TORCH_CHECK(o.X == x.X && o.n == x.n, "power_full: degree-2 kernels: y's rows disagree with x's");
  return o;
}

// The maps between sympow.h's layout and the internal one, per (device, d): index [D2] (int64) and scale [D2].
struct LayoutMap {
  at::Tensor index, scale;
};

const LayoutMap& layout_map(const at::Device& dev, int64_t d) {
  static std::mutex mu;
  static std::map<std::pair<int, int64_t>, LayoutMap> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(static_cast<int>(dev.index()), d);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<int64_t> indices;
  sympow_coefficients(d, 2, &indices);  // rows (i, j), i <= j, in sympow.h's order
  std::map<std::pair<int64_t, int64_t>, int64_t> row_of;
  for (size_t r = 0; r < indices.size() / 2; ++r) row_of[{indices[2 * r], indices[2 * r + 1]}] = static_cast<int64_t>(r);
  const int64_t nb = d / 16;
  std::vector<int64_t> index;
  std::vector<float> scale;
  for (int64_t A = 0; A < nb; ++A)
    for (int64_t a = 0; a < 16; ++a)
      for (int64_t B = A; B < nb; ++B)
        for (int64_t b = 0; b < 16; ++b) {
          const int64_t i = 16 * A + a, j = 16 * B + b;
          index.push_back(row_of.at({std::min(i, j), std::max(i, j)}));
          // sympow.h: sqrt(2) x_i x_j for i < j; internal: c_AB x_i x_j, c = 1 on diagonal blocks
          scale.push_back(A == B && a != b ? static_cast<float>(1.0 / std::sqrt(2.0)) : 1.f);
        }
  LayoutMap m;
  const int64_t D2 = static_cast<int64_t>(index.size());
  m.index = at::from_blob(index.data(), {D2}, at::kLong).to(dev);
  m.scale = at::from_blob(scale.data(), {D2}, at::kFloat).to(dev);
  return cache.emplace(key, m).first->second;
}

}  // namespace

bool sympow2_supported(at::ScalarType dtype, int64_t d, int64_t e) {
  return (dtype == at::kBFloat16 || dtype == at::kHalf) && d == e && (d == 16 || d == 32 || d == 64 || d == 128);
}

int64_t sympow2_dim(int64_t d) {
  const int64_t nb = d / 16;
  return 256 * nb * (nb + 1) / 2;
}

namespace {

void query_launch(const Rows& x, const Operand& ox, const at::Tensor& rs, const at::Tensor& H, at::Tensor& out,
                  int64_t cols, const Combine& cmb) {
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1);
  if (X == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(x.data.device());
  dispatch(x.data.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = sympow2_query_kernel<BF, D, Ee>;
    const size_t smem = row_smem<D, Ee>(false);
    allow_smem(kernel, smem);
    const int64_t parts = (n + rows_per_cta<D>() - 1) / rows_per_cta<D>();
    kernel<<<grid_of(X * parts), kRowThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(H), out.defined() ? out.data_ptr<float>() : nullptr, X, n,
        static_cast<int>(cols), cmb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor sympow2_query(const Rows& x, const at::Tensor& rs, const at::Tensor& H, int64_t cols) {
  const Operand ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  if (cols < 0) cols = E;
  TORCH_CHECK(cols > 0 && cols <= E && cols % 8 == 0, "power_full: degree-2 query: bad column count ", cols);
  at::Tensor out = at::empty({X, n, cols}, H.options().dtype(at::kFloat));
  query_launch(x, ox, rs, H, out, cols, Combine{});
  return out;
}

void sympow2_query_combine(const Rows& x, const at::Tensor& rs, const at::Tensor& H, const at::Tensor& numA,
                           const at::Tensor& l, const at::Tensor& m, const at::Tensor& gc, const at::Tensor& mu,
                           at::Tensor& y, at::Tensor& den, at::Tensor y_api, const RowMap& map) {
  const Operand ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1), e = d;
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  auto f32 = [&](const at::Tensor& t, int64_t numel, const char* what) {
    TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel &&
                    t.device() == H.device(),
                "power_full: degree-2 query: bad ", what);
  };
  f32(numA, X * n * e, "numA");
  f32(l, X * n, "l");
  f32(m, X * n, "m");
  f32(y, X * n * e, "y");
  f32(den, X * n, "den");
  TORCH_CHECK(mu.defined() && mu.scalar_type() == at::kDouble && mu.is_contiguous() && mu.numel() == X &&
                  mu.device() == H.device(),
              "power_full: degree-2 query: bad mu");
  const int64_t tokens = gc.defined() ? gc.numel() / std::max<int64_t>(X, 1) : 0;
  TORCH_CHECK(!gc.defined() || (gc.scalar_type() == at::kFloat && gc.is_contiguous() && gc.numel() == X * tokens &&
                                tokens > 0 && n % tokens == 0 && gc.device() == H.device()),
              "power_full: degree-2 query: bad gc");
  Combine c;
  c.gc = gc.defined() ? gc.data_ptr<float>() : nullptr;
  c.mu = mu.data_ptr<double>();
  c.g = gc.defined() ? static_cast<int>(n / tokens) : 1;
  c.numA = numA.data_ptr<float>(), c.l = l.data_ptr<float>(), c.m = m.data_ptr<float>();
  c.y = y.data_ptr<float>(), c.den = den.data_ptr<float>();
  if (y_api.defined()) {
    TORCH_CHECK(y_api.scalar_type() == x.data.scalar_type() && y_api.is_contiguous() &&
                    y_api.device() == H.device() && map.w == e,
                "power_full: degree-2 query: bad y output");
    c.yo = static_cast<u16*>(y_api.data_ptr());
    c.map = map;
  }
  at::Tensor none;
  query_launch(x, ox, rs, H, none, E, c);
}

std::pair<at::Tensor, at::Tensor> sympow2_grad(const Rows& x, const at::Tensor& rs, const Rows& y,
                                               const at::Tensor& H) {
  const Operand ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  const Operand oy = check_y(y, ox, E);
  const bool ones = y.data.size(-1) == d;  // [y | 1 | 0] made in the kernel
  at::Tensor dx = at::empty({X, n, d}, H.options().dtype(at::kFloat));
  at::Tensor u = at::empty({X * n}, H.options().dtype(at::kFloat));
  if (X == 0 || n == 0) return {dx, u};
  const c10::cuda::CUDAGuard guard(H.device());
  dispatch(x.data.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = ones ? sympow2_grad_kernel<BF, D, Ee, true> : sympow2_grad_kernel<BF, D, Ee, false>;
    const size_t smem = row_smem<D, Ee>(true);
    allow_smem(kernel, smem);
    const int64_t parts = (n + rows_per_cta<D>() - 1) / rows_per_cta<D>();
    kernel<<<grid_of(X * parts), kRowThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(y.data), oy.map, bits(H), dx.data_ptr<float>(), u.data_ptr<float>(), X,
        n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, u};
}

namespace {

template <bool REV>
void scan_launch(const Rows& x, const at::Tensor& rs, const Rows& y, const at::Tensor& decay, const at::Tensor& Hin,
                 const at::Tensor& Hs, int64_t N, at::Tensor& out, at::Tensor& last, at::Tensor& dL) {
  TORCH_CHECK(N > 0, "power_full: degree-2 scan: N = ", N);
  const Operand ox = check_x(x, rs, N);  // blocks: the N chunks of each head
  const int64_t BH = ox.X / N, d = x.data.size(-1), D2 = sympow2_dim(d), E = d + 8;
  const Operand oy = check_y(y, ox, E, N);
  const bool ones = y.data.size(-1) == d;  // [y | 1 | 0] made in the kernel (the forward's values)
  TORCH_CHECK(!ones || !REV, "power_full: degree-2 scan: the reverse scan takes extended rows");
  check_bf16(out, BH, N * D2, E, "out");
  auto f32 = [](const at::Tensor& t, int64_t n, const char* what) {
    TORCH_CHECK(!t.defined() || (t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n),
                "power_full: degree-2 scan: bad ", what);
    return t.defined() ? t.data_ptr<float>() : nullptr;
  };
  const float* dec = f32(decay, BH * N, "decay");
  const float* hin = f32(Hin, BH * D2 * E, "initial state");
  float* lst = f32(last, BH * D2 * E, "last state");
  float* dl = f32(dL, BH * N, "dL");
  if (REV) check_bf16(Hs, BH, N * D2, E, "Hs");
  if (BH == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  dispatch(x.data.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8, PAIRS = 256 * (D / 16) * (D / 16 + 1) / 2 / 32;
    auto kernel = sympow2_scan_kernel<BF, D, Ee, REV, false>;
    if constexpr (!REV) {
      if (ones) kernel = sympow2_scan_kernel<BF, D, Ee, REV, true>;
    }
    constexpr size_t smem = states_smem<D, Ee>();
    allow_smem(kernel, smem);
    const int64_t parts = (PAIRS + kScanThreads / 32 - 1) / (kScanThreads / 32);
    kernel<<<grid_of(BH * parts), kScanThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(y.data), oy.map, dec, hin, REV ? bits(Hs) : nullptr,
        static_cast<u16*>(out.data_ptr()), lst, dl, N, ox.n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void sympow2_scan_forward(const Rows& x, const at::Tensor& rs, const Rows& y, const at::Tensor& decay,
                          const at::Tensor& H0, int64_t N, at::Tensor& Hs, at::Tensor& final_state) {
  at::Tensor none;
  scan_launch<false>(x, rs, y, decay, H0, at::Tensor(), N, Hs, final_state, none);
}

void sympow2_scan_backward(const Rows& x, const at::Tensor& rs, const Rows& y, const at::Tensor& decay,
                           const at::Tensor& Hs, const at::Tensor& dfinal, int64_t N, at::Tensor& An, at::Tensor& dL,
                           at::Tensor& dH0) {
  scan_launch<true>(x, rs, y, decay, dfinal, Hs, N, An, dH0, dL);
}

at::Tensor sympow2_to_internal(const at::Tensor& ext, int64_t d) {
  const LayoutMap& m = layout_map(ext.device(), d);
  return ext.index_select(1, m.index) * m.scale.to(ext.scalar_type()).view({1, -1, 1});
}

at::Tensor sympow2_to_official(const at::Tensor& ext2, int64_t d) {
  const LayoutMap& m = layout_map(ext2.device(), d);
  at::Tensor out = at::zeros({ext2.size(0), sympow_dim(d, 2), ext2.size(2)}, ext2.options());
  return out.index_add_(1, m.index, ext2 * m.scale.to(ext2.scalar_type()).view({1, -1, 1}));
}

}  // namespace cuda
}  // namespace power_attention
