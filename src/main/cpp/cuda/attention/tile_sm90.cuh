// tile_sm90.cuh: what the Hopper (sm_90a) tile kernels share: the wgmma forms they issue, the shared-memory tile
// layout their operands use, and its loader.
//
// The tile layout ("chunk-major"): a tile of ROWS rows of W 16-bit elements is W / 8 chunks of 8 columns, each chunk
// the tile's rows as consecutive 16-byte pieces: element (r, c) at (c / 8) ROWS 8 + 8 r + c % 8. Its 8 x 8 pieces
// are wgmma's no-swizzle core matrices (128 contiguous bytes) in both readings:
//   - rows the M or N dimension, columns K (K-major): LBO = 16 ROWS bytes (next chunk, the k direction), SBO = 128
//     (next 8 rows);
//   - rows K, columns N (MN-major, trans-b): LBO = 128 (next 8 rows, the k direction), SBO = 16 ROWS (next chunk).
// (The conventions of cuda/sympow2's gradient (K-major) and query (MN-major) kernels, whose group buffers are this
// layout.) A k16 step moves a K-major descriptor by two chunks and an MN-major one by 16 rows.
#pragma once

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/common/wgmma_sm90.cuh"

#include <cstdint>
#include <cstdlib>

namespace power_attention {
namespace cuda {
namespace tile {
namespace sm90 {

using u16 = uint16_t;
using u32 = uint32_t;

// Loads rows [row0, row0 + ROWS) of a block (rows at src + mp.row(r), those at or past n as zeros) into a
// chunk-major tile. Piece i of the tile (i = tid + j THREADS) is row 8 (i / 8 / CH) + i % 8 of chunk (i / 8) % CH:
// the 8 threads of a shared-memory phase write 8 rows of one chunk (128 contiguous bytes), a warp reads 64
// contiguous bytes of 8 rows.
template <int W, int ROWS, int THREADS>
__device__ __forceinline__ void load_rows_cm(u16* dst, const u16* src, const RowMap& mp, int64_t row0, int64_t n) {
  constexpr int CH = W / 8, PIECES = ROWS * CH;
  static_assert(ROWS % 8 == 0 && PIECES % THREADS == 0, "whole passes");
#pragma unroll
  for (int j = 0; j < PIECES / THREADS; ++j) {
    const int i = static_cast<int>(threadIdx.x) + j * THREADS;
    const int ch = (i >> 3) % CH, r = 8 * ((i >> 3) / CH) + (i & 7);
    const bool ok = row0 + r < n;
    mma::cp_async16(dst + ch * ROWS * 8 + r * 8, ok ? src + mp.row(row0 + r) + ch * 8 : src, ok);
  }
}

// CTAs a SM the forward and dq kernels are compiled for (2 or 3; POWER_ATTENTION_TILE_SM90_CTAS, read each launch).
inline int tile_sm90_ctas() {
  const char* v = std::getenv("POWER_ATTENTION_TILE_SM90_CTAS");
  return v && v[0] == '3' ? 3 : 2;
}

// ldmatrix addresses of this lane in a chunk-major tile of ROWS rows, as at_a / at_b (mma_sm80.cuh) in a row-major
// one: at_a_cm, a 16 x 16 A operand at (r0, c0); at_b_cm, the B operands of two n8 tiles of a matrix stored [n][k]
// at (n0, k0).
template <int ROWS>
__device__ __forceinline__ const u16* at_a_cm(const u16* s, int r0, int c0) {
  const int l = threadIdx.x & 31;
  return s + ((c0 >> 3) + (l >> 4)) * ROWS * 8 + (r0 + (l & 15)) * 8;
}
template <int ROWS>
__device__ __forceinline__ const u16* at_b_cm(const u16* s, int n0, int k0) {
  const int l = threadIdx.x & 31;
  return s + ((k0 >> 3) + ((l >> 3) & 1)) * ROWS * 8 + (n0 + (l & 7) + (l >> 4) * 8) * 8;
}

// The descriptors of a chunk-major tile of ROWS rows at `tile`: rows as M / N (K-major) and rows as K (MN-major).
template <int ROWS>
__device__ __forceinline__ uint64_t desc_rows_mn(const u16* tile) {
  return wgmma::desc_noswizzle(mma::smem_addr(tile), 16 * ROWS, 128);
}
template <int ROWS>
__device__ __forceinline__ uint64_t desc_rows_k(const u16* tile) {
  return wgmma::desc_noswizzle(mma::smem_addr(tile), 128, 16 * ROWS);
}
// Descriptor steps (16-byte units) of one k16 step: two chunks (K-major), 16 rows (MN-major).
template <int ROWS>
constexpr uint64_t kstep_kmajor() {
  return 2 * ROWS * 16 / 16;
}
constexpr uint64_t kstep_mnmajor() { return 16 * 16 / 16; }

#ifdef POWER_ATTENTION_SM90A
// Mma<N, BF>: m64 x N (fp32, N / 2 registers a thread, wgmma's accumulator layout) with bf16 (BF) or fp16 operands.
//   ss(d, a, b, acc):    d = (acc ? d : 0) + A B, A and B K-major in shared memory (descriptors a, b);
//   rs_mn(d, a, b, acc): d = (acc ? d : 0) + A B, A in registers (m64 x k16, mma.sync's A layout a warp), B
//                        MN-major in shared memory.
template <int N, bool BF>
struct Mma;

template <>
struct Mma<32, true> {
  static __device__ __forceinline__ void ss(float* d, uint64_t a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(acc));
  }
  static __device__ __forceinline__ void rs_mn(float* d, const u32* a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
  }
};

template <>
struct Mma<32, false> {
  static __device__ __forceinline__ void ss(float* d, uint64_t a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(acc));
  }
  static __device__ __forceinline__ void rs_mn(float* d, const u32* a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
  }
};

template <>
struct Mma<64, true> {
  static __device__ __forceinline__ void ss(float* d, uint64_t a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(acc));
  }
  static __device__ __forceinline__ void rs_mn(float* d, const u32* a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
  }
};

template <>
struct Mma<64, false> {
  static __device__ __forceinline__ void ss(float* d, uint64_t a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b), "r"(acc));
  }
  static __device__ __forceinline__ void rs_mn(float* d, const u32* a, uint64_t b, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
  }
};

// Keeps the compiler from moving accesses to an accumulator across a wgmma wait.
template <int N>
__device__ __forceinline__ void fence_acc(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
#endif  // POWER_ATTENTION_SM90A

}  // namespace sm90
}  // namespace tile
}  // namespace cuda
}  // namespace power_attention
