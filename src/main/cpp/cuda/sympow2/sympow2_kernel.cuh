// sympow2_kernel.cuh: what the degree-2 kernels of sympow2.h share: the feature layout's offsets, the scaling of
// x fragments, the row kernels' tiles and staging, the operand checks.
//
// phi is never written to memory: each tensor-core operand of phi is an x block (ldmatrix from shared memory) scaled
// by one x value per row or per column, in fp32, rounded once to bf16. fp32 accumulation. The kernels:
//   sympow2_scan_kernel    (scan.cu)    S_n = phi'(X_n)^T Y_n fused with the gated prefix over chunks (forward or
//                                       reverse): a warp owns a 16-feature tile of the running state, rows stream in
//                                       stages of 64
//   sympow2_query_kernel   (query.cu)   B = phi'(X) H        a warp owns 32 rows, H streams one (A, a) group at a time
//   sympow2_grad_kernel    (grad.cu)    dx from (Y H^T)      likewise; dphi lives in registers, 16 features at a time
#pragma once

#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace power_attention {
namespace cuda {
namespace sympow2 {

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

// The extended columns [e, e + 8) of a shared tile of y rows: 1 then zeros in rows below n, zeros past them
// (16-byte stores: every tile here keeps those columns 16-byte aligned).
template <int e, int ROWS, int S, int THREADS>
__device__ __forceinline__ void ones_column(u16* tile, int64_t n) {
  for (int i = threadIdx.x; i < ROWS; i += THREADS)
    *reinterpret_cast<uint4*>(tile + i * S + e) = make_uint4(i < n ? 0x3F80u : 0u, 0u, 0u, 0u);  // bf16 1.0
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

inline const u16* bits(const at::Tensor& t) { return static_cast<const u16*>(t.data_ptr()); }
inline const float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

inline unsigned grid_of(int64_t n) {
  TORCH_CHECK(n > 0 && n < (int64_t(1) << 31), "power_full: internal: grid of ", n, " blocks");
  return static_cast<unsigned>(n);
}

// An operand's blocks, rows a block and row map (the operand's, or the dense one of its compute layout). The compute
// layout [X, n, w] has its own dense map; a scan's operand there is [BH, N c, w], whose blocks are its N chunks a
// head.
struct Blocks {
  int64_t X, n;
  RowMap map;
};
Blocks blocks_of(const Operand& r, int64_t w, const char* what, int64_t N = 1);
/// x (16-bit, d in {16, 32, 64, 128}) and its row scale rs ([X n] fp32, or undefined).
Blocks check_x(const Operand& x, const at::Tensor& rs, int64_t N = 1);
/// A y operand of x's blocks: bf16, E columns or (the kernel then makes [y | 1 | 0]) E - 8.
Blocks check_y(const Operand& y, const Blocks& x, int64_t E, int64_t N = 1);
void check_bf16(const at::Tensor& t, int64_t X, int64_t rows, int64_t cols, const char* what);

}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
