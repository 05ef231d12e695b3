// mma_sm80.cuh: the tensor-core primitives of the CUDA kernels (sm_80 and newer): cp.async, ldmatrix, mma.sync
// m16n8k16 with fp32 accumulation, operand packing, fragment addresses in padded shared tiles, quad reductions.
//
// Fragment layouts (lane = 4 * gr + tg): an A operand (16 x 16) holds rows gr / gr + 8 and columns 2 tg, 2 tg + 1
// (+ 8); a B operand (16 x 8) holds k rows 2 tg, 2 tg + 1 (+ 8) of column gr; an accumulator (16 x 8) holds
// rows gr / gr + 8, columns 2 tg, 2 tg + 1 (registers 0-1 / 2-3).
#pragma once

#include "cuda/common/operand.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace power_attention {
namespace cuda {
namespace mma {

using u16 = uint16_t;
using u32 = uint32_t;

__device__ __forceinline__ u32 smem_addr(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm4(u32* r, const u16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4t(u32* r, const u16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm2t(u32* r, const u16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

// c += a b for one m16n8k16 tile; BF: bf16 operands, else fp16.
template <bool BF>
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
  if constexpr (BF) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as one register of the operand dtype, lo in the low half (the lower k index).
template <bool BF>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  if constexpr (BF) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const u32*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const u32*>(&v);
  }
}

// One register of two operand values as floats (lo first); one stored value as a float.
template <bool BF>
__device__ __forceinline__ float2 unpack2(u32 v) {
  if constexpr (BF) {
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
  }
}
template <bool BF>
__device__ __forceinline__ float to_float(u16 v) {
  if constexpr (BF) {
    return __uint_as_float(static_cast<u32>(v) << 16);
  } else {
    return __half2float(__ushort_as_half(v));
  }
}

// ldmatrix addresses of this lane in a row-major shared tile with row stride S (elements):
//  - at_a: a 16x16 A operand at (r0, c0), or (with .trans) the B operand of a tile stored [k][n] at (k0, n0);
//    registers 0-1 / 2-3 are then the two 8-column halves;
//  - at_b: the B operands of two n8 tiles of a matrix stored [n][k] at (n0, k0) (registers 0-1: n0, 2-3: n0 + 8),
//    or (with .trans) the A operand of a matrix stored transposed, [k][m], at (k0, m0).
__device__ __forceinline__ const u16* at_a(const u16* s, int S, int r0, int c0) {
  const int l = threadIdx.x & 31;
  return s + (r0 + (l & 15)) * S + c0 + (l >> 4) * 8;
}
__device__ __forceinline__ const u16* at_b(const u16* s, int S, int n0, int k0) {
  const int l = threadIdx.x & 31;
  return s + (n0 + (l & 7) + (l >> 4) * 8) * S + k0 + ((l >> 3) & 1) * 8;
}

// Rows [row0, row0 + ROWS) of a [n, W] matrix into a shared tile with row stride S (default W + 8), by a block of
// THREADS threads; rows past n are zeros. Columns [W, S) are not written.
template <int W, int ROWS, int THREADS, int S = W + 8>
__device__ __forceinline__ void load_rows(u16* dst, const u16* src, int64_t row0, int64_t n) {
  constexpr int kChunks = W / 8;
  for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
    const int r = i / kChunks, c = (i - r * kChunks) * 8;
    const bool ok = row0 + r < n;
    cp_async16(dst + r * S + c, ok ? src + (row0 + r) * W + c : src, ok);
  }
}

// Rows [row0, row0 + ROWS) of a block through map mp (src at the block's base: row r at src + mp.row(r)) into a
// shared tile with row stride S; rows past n are zeros. Where a pass covers whole rows and the map has one row
// stride (g == 1), each thread steps one pointer (a 64-bit multiply a 16-byte piece cost the tile kernels 18-26%).
template <int W, int ROWS, int THREADS, int S = W + 8>
__device__ __forceinline__ void load_rows_mapped(u16* dst, const u16* src, const RowMap& mp, int64_t row0,
                                                 int64_t n) {
  constexpr int kChunks = W / 8;
  if constexpr (THREADS % kChunks == 0) {
    constexpr int kStep = THREADS / kChunks;  // rows a pass
    const int r1 = threadIdx.x / kChunks, c = (threadIdx.x - r1 * kChunks) * 8;
    if (mp.g == 1) {
      const u16* p = src + (row0 + r1) * mp.ld + c;
      const int64_t step = kStep * mp.ld;
#pragma unroll
      for (int r = r1; r < ROWS; r += kStep, p += step) {
        const bool ok = row0 + r < n;
        cp_async16(dst + r * S + c, ok ? p : src, ok);
      }
    } else {
#pragma unroll
      for (int r = r1; r < ROWS; r += kStep) {
        const bool ok = row0 + r < n;
        cp_async16(dst + r * S + c, ok ? src + mp.row(row0 + r) + c : src, ok);
      }
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
      const int r = i / kChunks, c = (i - r * kChunks) * 8;
      const bool ok = row0 + r < n;
      cp_async16(dst + r * S + c, ok ? src + mp.row(row0 + r) + c : src, ok);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&a)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.f;
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

}  // namespace mma
}  // namespace cuda
}  // namespace power_attention
