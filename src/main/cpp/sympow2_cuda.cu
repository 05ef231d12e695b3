// sympow2_cuda.cu: the degree-2 state products of sympow2_cuda.h. phi is never written to memory: each tensor-core
// operand of phi is an x block (ldmatrix from shared memory) scaled by one x value per row or per column, in fp32,
// rounded once to bf16. fp32 accumulation.
//
//   sympow2_scan_kernel    S_n = phi'(X_n)^T Y_n fused with the gated prefix over chunks (forward or reverse):
//                          a warp owns a 16-feature tile of the running state, rows stream in stages of 64
//   sympow2_query_kernel   B = phi'(X) H        a warp owns 16 rows, H streams one (A, a) group at a time
//   sympow2_grad_kernel    dx from (Y H^T)      likewise; dphi lives in registers, 16 features at a time
#include "sympow2_cuda.h"

#include "mma_sm80.cuh"
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

constexpr int kThreads = 256;  // 8 warps
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
// The chunk states and their gated prefix in one pass, per head: a warp owns one 16-feature tile of the running
// state (fp32 registers) and walks the head's chunks in order (REV: in reverse), 64 rows a stage:
//   at a chunk's start   out[n] = H (bf16);  REV: dL[n] += decay_n (Hs[n] . H)
//   over its rows        S = phi'(x)^T y (tensor cores)
//   at its end           H = decay_n H + S
// Forward: H starts at H0 and out = Hs, the states entering each chunk; last = the final state. Backward: H starts
// at the final state's gradient, S = phi'(Q')^T dB, out = the gradient of the state leaving each chunk, last = the
// initial state's gradient. No [N, D2, E] fp32 tensor is made.
// ---------------------------------------------------------------------------------------------------------------

template <bool BFX, int D, int E, bool REV>
__global__ void __launch_bounds__(kThreads) sympow2_scan_kernel(
    const u16* __restrict__ x, const float* __restrict__ rs, const u16* __restrict__ y,
    const float* __restrict__ decay, const float* __restrict__ Hin, const u16* __restrict__ Hs,
    u16* __restrict__ out, float* __restrict__ last, float* __restrict__ dL, int64_t N, int64_t c) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, TILES = D2 / 16, NT = E / 8;
  constexpr int SD = D + 8, SE = E + 16, WARPS = kThreads / 32, PARTS = (TILES + WARPS - 1) / WARPS;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);                              // [kScanPipe][64][SD]
  u16* sY = sX + kScanPipe * kStateTokens * SD;                         // [kScanPipe][64][SE]
  float* sR = reinterpret_cast<float*>(sY + kScanPipe * kStateTokens * SE);  // [kScanPipe][64]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t bh = blockIdx.x / PARTS;
  const int tile = static_cast<int>(blockIdx.x % PARTS) * WARPS + warp;
  const bool valid = tile < TILES;
  int t = valid ? tile : 0, A = 0;
  while (A < NB - 1 && t >= 16 * (NB - A)) t -= 16 * (NB - A), ++A;
  const int colA = 16 * A + t / (NB - A), colB = 16 * (A + t % (NB - A));
  const float cab = colB == 16 * A ? 1.f : kSqrt2;
  const int64_t f = static_cast<int64_t>(tile) * 16 + gr;  // this lane's state rows f, f + 8
  const int64_t rows = N * c;
  const u16* xb = x + bh * rows * D;
  const u16* yb = y + bh * rows * E;
  const float* rb = rs ? rs + bh * rows : nullptr;

  float H[NT][4];
  zero(H);
  if (Hin && valid) {
    const float* h = Hin + bh * D2 * E;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float2 a = *reinterpret_cast<const float2*>(h + f * E + nt * 8 + 2 * tg);
      const float2 b = *reinterpret_cast<const float2*>(h + (f + 8) * E + nt * 8 + 2 * tg);
      H[nt][0] = a.x, H[nt][1] = a.y, H[nt][2] = b.x, H[nt][3] = b.y;
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
    const int64_t n = REV ? N - 1 - p.k : p.k, t0 = n * c + p.s * kStateTokens, end = n * c + c;
    load_rows<D, kStateTokens, kThreads>(sX + buf * kStateTokens * SD, xb, t0, end);
    load_rows<E, kStateTokens, kThreads, SE>(sY + buf * kStateTokens * SE, yb, t0, end);
    for (int i = threadIdx.x; i < kStateTokens; i += kThreads) {
      float* dst = sR + buf * kStateTokens + i;
      const bool ok = t0 + i < end;
      if (rb) {
        cp_async4(dst, rb + (ok ? t0 + i : 0), ok);
      } else {
        *dst = ok ? 1.f : 0.f;
      }
    }
  };
  float S[NT][4];
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
    const int64_t n = REV ? N - 1 - cur.k : cur.k;
    const int s = cur.s;
    if (s == 0) {  // chunk start: hand out H
      zero(S);
      if (valid) {
        u16* o = out + (bh * N + n) * D2 * E;
        float dot = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int64_t c0 = f * E + nt * 8 + 2 * tg, c1 = c0 + 8 * E;
          *reinterpret_cast<u32*>(o + c0) = pack2<true>(H[nt][0], H[nt][1]);
          *reinterpret_cast<u32*>(o + c1) = pack2<true>(H[nt][2], H[nt][3]);
          if constexpr (REV) {
            const u16* hs = Hs + (bh * N + n) * D2 * E;
            const float2 a = unpack2<true>(*reinterpret_cast<const u32*>(hs + c0));
            const float2 b = unpack2<true>(*reinterpret_cast<const u32*>(hs + c1));
            dot += a.x * H[nt][0] + a.y * H[nt][1] + b.x * H[nt][2] + b.y * H[nt][3];
          }
        }
        if constexpr (REV) {
          if (dL) {
#pragma unroll
            for (int o2 = 16; o2 > 0; o2 >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o2);
            if (lane == 0 && dot != 0.f) atomicAdd(dL + bh * N + n, (decay ? decay[bh * N + n] : 1.f) * dot);
          }
        }
      }
    }
    const u16* cX = sX + buf * kStateTokens * SD;
    const u16* cY = sY + buf * kStateTokens * SE;
    const float* cR = sR + buf * kStateTokens;
    if (valid) {
#pragma unroll
      for (int kk = 0; kk < kStateTokens / 16; ++kk) {
        const int k0 = kk * 16, t0 = k0 + 2 * tg;
        u32 af[4];
        ldsm4t(af, at_b(cX, SD, k0, colB));
        const float u0 = cab * cR[t0] * to_float<BFX>(cX[t0 * SD + colA]);
        const float u1 = cab * cR[t0 + 1] * to_float<BFX>(cX[(t0 + 1) * SD + colA]);
        const float u2 = cab * cR[t0 + 8] * to_float<BFX>(cX[(t0 + 8) * SD + colA]);
        const float u3 = cab * cR[t0 + 9] * to_float<BFX>(cX[(t0 + 9) * SD + colA]);
        const u32 a[4] = {scale2<BFX>(af[0], u0, u1), scale2<BFX>(af[1], u0, u1), scale2<BFX>(af[2], u2, u3),
                          scale2<BFX>(af[3], u2, u3)};
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cY, SE, k0, np * 16));
          mma16816<true>(S[2 * np], a, r[0], r[1]);
          mma16816<true>(S[2 * np + 1], a, r[2], r[3]);
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cY, SE, k0, (NT - 1) * 8));
          mma16816<true>(S[NT - 1], a, r[0], r[1]);
        }
      }
    }
    if (s == spc - 1) {  // chunk end
      const float dec = decay ? decay[bh * N + n] : 1.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) H[nt][i] = dec * H[nt][i] + S[nt][i];
    }
    advance(cur);
    buf = buf + 1 == kScanPipe ? 0 : buf + 1;
    __syncthreads();
  }
  if (last && valid) {
    float* l = last + bh * D2 * E;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      *reinterpret_cast<float2*>(l + f * E + nt * 8 + 2 * tg) = make_float2(H[nt][0], H[nt][1]);
      *reinterpret_cast<float2*>(l + (f + 8) * E + nt * 8 + 2 * tg) = make_float2(H[nt][2], H[nt][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Row kernels: a CTA covers 128 rows of one block x (16 a warp); H [D2, E] streams through shared memory one
// feature group (A, a) at a time (16 (nb - A) rows), two buffers.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kRowsPerCta = 128;

// Shared layout of the row kernels: x rows [128][D + 8], H groups [2][16 nb][SH], with SH = E rounded up to 16,
// plus 8 (the grad kernel reads whole k16 steps of E; the columns past E stay zero).
template <int D, int E>
constexpr int row_sh() {
  return (E + 15) / 16 * 16 + 8;
}
template <int D, int E>
constexpr size_t row_smem(bool with_y) {
  return sizeof(u16) * (kRowsPerCta * (D + 8) + 2 * 16 * (D / 16) * row_sh<D, E>() +
                        (with_y ? kRowsPerCta * row_sh<D, E>() : 0));
}

template <int D, int E>
__device__ __forceinline__ void load_group(u16* dst, const u16* H, int A, int a) {
  constexpr int NB = D / 16, SH = row_sh<D, E>();
  const int off = group_offset(NB, A, a), rows = 16 * (NB - A);
  load_rows<E, 16 * NB, kThreads, SH>(dst, H + static_cast<int64_t>(off) * E, 0, rows);
}

// Zeroes columns [E, SH) of `rows` rows of a shared tile (never written by the loads).
template <int E, int SH>
__device__ __forceinline__ void zero_tail(u16* s, int rows) {
  constexpr int W = SH - E;
  for (int i = threadIdx.x; i < rows * W; i += kThreads) s[(i / W) * SH + E + i % W] = 0;
}

template <bool BFX, int D, int E>
__global__ void __launch_bounds__(kThreads, 1) sympow2_query_kernel(const u16* __restrict__ x,
                                                                 const float* __restrict__ rs,
                                                                 const u16* __restrict__ H, float* __restrict__ out,
                                                                 int64_t X, int64_t n) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, NT = E / 8, SD = D + 8, SH = row_sh<D, E>();
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + kRowsPerCta * SD;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t parts = (n + kRowsPerCta - 1) / kRowsPerCta;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * kRowsPerCta;
  const u16* Hb = H + bx * D2 * E;
  load_rows<D, kRowsPerCta, kThreads>(sX, x + bx * n * D, r0, n);
  load_group<D, E>(sH, Hb, 0, 0);
  cp_async_commit();
  const int64_t ra = r0 + warp * 16 + gr, rb = ra + 8;
  const float sa = ra < n ? (rs ? rs[bx * n + ra] : 1.f) : 0.f, sb = rb < n ? (rs ? rs[bx * n + rb] : 1.f) : 0.f;
  const u16* xa_row = sX + (warp * 16 + gr) * SD;
  const u16* xb_row = xa_row + 8 * SD;
  u32 xf[NB][4];
  float acc[NT][4];
  zero(acc);
  int buf = 0;
  static_for<NB>([&](auto A_) {
    constexpr int A = decltype(A_)::value;
    for (int a = 0; a < 16; ++a) {
      if (a < 15) {
        load_group<D, E>(sH + (buf ^ 1) * 16 * NB * SH, Hb, A, a + 1);
      } else if (A + 1 < NB) {
        load_group<D, E>(sH + (buf ^ 1) * 16 * NB * SH, Hb, A + 1, 0);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      if (A == 0 && a == 0) {
#pragma unroll
        for (int B = 0; B < NB; ++B) ldsm4(xf[B], at_a(sX, SD, warp * 16, 16 * B));
      }
      const u16* cH = sH + buf * 16 * NB * SH;
      const float wa = sa * to_float<BFX>(xa_row[16 * A + a]), wb = sb * to_float<BFX>(xb_row[16 * A + a]);
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        const float ca = c * wa, cb = c * wb;
        const u32 af[4] = {scale2<BFX>(xf[B][0], ca, ca), scale2<BFX>(xf[B][1], cb, cb),
                           scale2<BFX>(xf[B][2], ca, ca), scale2<BFX>(xf[B][3], cb, cb)};
        const int f0 = (B - A) * 16;
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cH, SH, f0, np * 16));
          mma16816<true>(acc[2 * np], af, r[0], r[1]);
          mma16816<true>(acc[2 * np + 1], af, r[2], r[3]);
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cH, SH, f0, (NT - 1) * 8));
          mma16816<true>(acc[NT - 1], af, r[0], r[1]);
        }
      }
      __syncthreads();
      buf ^= 1;
    }
  });
  float* ob = out + bx * n * E;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if (ra < n) *reinterpret_cast<float2*>(ob + ra * E + nt * 8 + 2 * tg) = make_float2(acc[nt][0], acc[nt][1]);
    if (rb < n) *reinterpret_cast<float2*>(ob + rb * E + nt * 8 + 2 * tg) = make_float2(acc[nt][2], acc[nt][3]);
  }
}

// dx_r = d/dx_r [phi'(x_r) . dphi_r], dphi_r = H y_r. Per group (A, a) and block B >= A, the 16 x 16 tile
// dphi[rows, (A, a, B, .)] comes from the tensor cores (k = E), then, with w = c_AB rs x[16 A + a]:
//   dx[16 B + b] += w dphi        (the x[16 B + b] factor of each feature)
//   dx[16 A + a] += c_AB rs sum_b dphi x[16 B + b]   (the x[16 A + a] factor)
template <bool BFX, int D, int E>
__global__ void __launch_bounds__(kThreads, 1) sympow2_grad_kernel(const u16* __restrict__ x,
                                                                const float* __restrict__ rs,
                                                                const u16* __restrict__ y,
                                                                const u16* __restrict__ H, float* __restrict__ dx,
                                                                float* __restrict__ u, int64_t X, int64_t n) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, SD = D + 8, SH = row_sh<D, E>(), EK = (E + 15) / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + kRowsPerCta * SD;
  u16* sY = sH + 2 * 16 * NB * SH;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gr = lane >> 2, tg = lane & 3;
  const int64_t parts = (n + kRowsPerCta - 1) / kRowsPerCta;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * kRowsPerCta;
  const u16* Hb = H + bx * D2 * E;
  zero_tail<E, SH>(sH, 2 * 16 * NB);
  zero_tail<E, SH>(sY, kRowsPerCta);
  load_rows<D, kRowsPerCta, kThreads>(sX, x + bx * n * D, r0, n);
  load_rows<E, kRowsPerCta, kThreads, SH>(sY, y + bx * n * E, r0, n);
  load_group<D, E>(sH, Hb, 0, 0);
  cp_async_commit();
  const int64_t ra = r0 + warp * 16 + gr, rb = ra + 8;
  const float sa = ra < n ? (rs ? rs[bx * n + ra] : 1.f) : 0.f, sb = rb < n ? (rs ? rs[bx * n + rb] : 1.f) : 0.f;
  const u16* xa_row = sX + (warp * 16 + gr) * SD;
  const u16* xb_row = xa_row + 8 * SD;
  u32 yf[EK][4];
  float g[D / 8][4];
  zero(g);
  int buf = 0;
  static_for<NB>([&](auto A_) {
    constexpr int A = decltype(A_)::value;
    for (int a = 0; a < 16; ++a) {
      if (a < 15) {
        load_group<D, E>(sH + (buf ^ 1) * 16 * NB * SH, Hb, A, a + 1);
      } else if (A + 1 < NB) {
        load_group<D, E>(sH + (buf ^ 1) * 16 * NB * SH, Hb, A + 1, 0);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      if (A == 0 && a == 0) {
#pragma unroll
        for (int kk = 0; kk < EK; ++kk) ldsm4(yf[kk], at_a(sY, SH, warp * 16, kk * 16));
      }
      const u16* cH = sH + buf * 16 * NB * SH;
      const float wa = sa * to_float<BFX>(xa_row[16 * A + a]), wb = sb * to_float<BFX>(xb_row[16 * A + a]);
      float pa = 0.f, pb = 0.f;
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        const int f0 = (B - A) * 16;
        float dp[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < EK; ++kk) {
          u32 r[4];
          ldsm4(r, at_b(cH, SH, f0, kk * 16));
          mma16816<true>(dp[0], yf[kk], r[0], r[1]);
          mma16816<true>(dp[1], yf[kk], r[2], r[3]);
        }
        const float ca = c * wa, cb = c * wb;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          g[2 * B + h][0] += ca * dp[h][0];
          g[2 * B + h][1] += ca * dp[h][1];
          g[2 * B + h][2] += cb * dp[h][2];
          g[2 * B + h][3] += cb * dp[h][3];
          const int col = 16 * B + 8 * h + 2 * tg;  // x of this lane's features, from shared memory
          const float2 xa = unpack2<BFX>(*reinterpret_cast<const u32*>(xa_row + col));
          const float2 xb = unpack2<BFX>(*reinterpret_cast<const u32*>(xb_row + col));
          pa += c * (dp[h][0] * xa.x + dp[h][1] * xa.y);
          pb += c * (dp[h][2] * xb.x + dp[h][3] * xb.y);
        }
      }
      pa = quad_sum(pa) * sa;
      pb = quad_sum(pb) * sb;
      // column 16 A + a: tile 2 A + a / 8, held by lane tg = (a % 8) / 2, element a % 2
      // Register arrays take compile-time indices only, and a branch per element would be merged into one store
      // through a computed address (local memory): add zeros everywhere else instead.
      const bool mine = tg == ((a & 7) >> 1), odd = a & 1;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool here = mine && (a >> 3) == h;
        g[2 * A + h][0] += here && !odd ? pa : 0.f;
        g[2 * A + h][1] += here && odd ? pa : 0.f;
        g[2 * A + h][2] += here && !odd ? pb : 0.f;
        g[2 * A + h][3] += here && odd ? pb : 0.f;
      }
      __syncthreads();
      buf ^= 1;
    }
  });
  float* ob = dx + bx * n * D;
  float ua = 0.f, ub = 0.f;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    if (ra < n) *reinterpret_cast<float2*>(ob + ra * D + nt * 8 + 2 * tg) = make_float2(g[nt][0], g[nt][1]);
    if (rb < n) *reinterpret_cast<float2*>(ob + rb * D + nt * 8 + 2 * tg) = make_float2(g[nt][2], g[nt][3]);
    const float2 xa = unpack2<BFX>(*reinterpret_cast<const u32*>(xa_row + nt * 8 + 2 * tg));
    const float2 xb = unpack2<BFX>(*reinterpret_cast<const u32*>(xb_row + nt * 8 + 2 * tg));
    ua += xa.x * g[nt][0] + xa.y * g[nt][1];
    ub += xb.x * g[nt][2] + xb.y * g[nt][3];
  }
  ua = quad_sum(ua) * 0.5f;  // Euler: x . grad of a degree-2 form is twice the form
  ub = quad_sum(ub) * 0.5f;
  if (u && tg == 0) {
    if (ra < n) u[bx * n + ra] = ua;
    if (rb < n) u[bx * n + rb] = ub;
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

void check_x(const at::Tensor& x, const at::Tensor& rs) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && sympow2_supported(x.scalar_type(), x.size(2), x.size(2)),
              "power_full: degree-2 kernels: bad x");
  TORCH_CHECK(!rs.defined() || (rs.scalar_type() == at::kFloat && rs.is_contiguous() &&
                                rs.numel() == x.size(0) * x.size(1)),
              "power_full: degree-2 kernels: bad row scale");
}
void check_bf16(const at::Tensor& t, int64_t X, int64_t rows, int64_t cols, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.numel() == X * rows * cols,
              "power_full: degree-2 kernels: bad ", what);
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

at::Tensor sympow2_query(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& H) {
  check_x(x, rs);
  const int64_t X = x.size(0), n = x.size(1), d = x.size(2), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  at::Tensor out = at::empty({X, n, E}, x.options().dtype(at::kFloat));
  if (X == 0 || n == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  dispatch(x.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = sympow2_query_kernel<BF, D, Ee>;
    const size_t smem = row_smem<D, Ee>(false);
    allow_smem(kernel, smem);
    const int64_t parts = (n + kRowsPerCta - 1) / kRowsPerCta;
    kernel<<<grid_of(X * parts), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(bits(x), fptr(rs), bits(H),
                                                                                       out.data_ptr<float>(), X, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> sympow2_grad(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& y,
                                               const at::Tensor& H) {
  check_x(x, rs);
  const int64_t X = x.size(0), n = x.size(1), d = x.size(2), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  check_bf16(y, X, n, E, "y");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  at::Tensor dx = at::empty({X, n, d}, x.options().dtype(at::kFloat));
  at::Tensor u = at::empty({X * n}, x.options().dtype(at::kFloat));
  if (X == 0 || n == 0) return {dx, u};
  const c10::cuda::CUDAGuard guard(x.device());
  dispatch(x.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = sympow2_grad_kernel<BF, D, Ee>;
    const size_t smem = row_smem<D, Ee>(true);
    allow_smem(kernel, smem);
    const int64_t parts = (n + kRowsPerCta - 1) / kRowsPerCta;
    kernel<<<grid_of(X * parts), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x), fptr(rs), bits(y), bits(H), dx.data_ptr<float>(), u.data_ptr<float>(), X, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, u};
}

namespace {

template <bool REV>
void scan_launch(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& y, const at::Tensor& decay,
                 const at::Tensor& Hin, const at::Tensor& Hs, int64_t N, at::Tensor& out, at::Tensor& last,
                 at::Tensor& dL) {
  check_x(x, rs);
  const int64_t BH = x.size(0), rows = x.size(1), d = x.size(2), D2 = sympow2_dim(d), E = y.size(-1);
  TORCH_CHECK(N > 0 && rows % N == 0, "power_full: degree-2 scan: rows do not split into ", N, " chunks");
  check_bf16(y, BH, rows, E, "y");
  check_bf16(out, BH, N * D2, E, "out");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
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
  const c10::cuda::CUDAGuard guard(x.device());
  dispatch(x.scalar_type(), d, [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8, TILES = 256 * (D / 16) * (D / 16 + 1) / 2 / 16;
    auto kernel = sympow2_scan_kernel<BF, D, Ee, REV>;
    constexpr size_t smem = states_smem<D, Ee>();
    allow_smem(kernel, smem);
    const int64_t parts = (TILES + kThreads / 32 - 1) / (kThreads / 32);
    kernel<<<grid_of(BH * parts), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x), fptr(rs), bits(y), dec, hin, REV ? bits(Hs) : nullptr, static_cast<u16*>(out.data_ptr()), lst, dl,
        N, rows / N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

void sympow2_scan_forward(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& y, const at::Tensor& decay,
                          const at::Tensor& H0, int64_t N, at::Tensor& Hs, at::Tensor& final_state) {
  at::Tensor none;
  scan_launch<false>(x, rs, y, decay, H0, at::Tensor(), N, Hs, final_state, none);
}

void sympow2_scan_backward(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& y, const at::Tensor& decay,
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
