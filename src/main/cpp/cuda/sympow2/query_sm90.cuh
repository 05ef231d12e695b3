// query_sm90.cuh: the degree-2 query product B = phi'(x) H on Hopper (sm_90a): the kernel and its launch for one
// CTA shape (query_sm90.cu launches the library's shapes; the standalone check in src/test/cpp/gpu/sm90 includes this
// file too, for the other shapes).
//
// The same product as the sm_80 kernel (query.cu, sympow2_query_kernel), with wgmma in place of mma.sync: a CTA is
// WG warpgroups of MT m64 tiles (QueryShape) over ROWS = 64 MT WG rows of one block x; H [D2, E] streams through
// shared memory one feature group (A, a) at a time (16 (nb - A) features), PIPE buffers deep, shared by every
// warpgroup. Per group and block B >= A each warp builds the A operand of its 16 rows in registers (its x block
// scaled by c_AB rs x[16 A + a], rounded once to bf16, exactly the sm_80 kernel's operand) and the warpgroup issues
// one m64 n E k16 wgmma per m64 tile with the group's 16 features of block B as the B operand, read by the tensor
// cores from shared memory (no ldmatrix, no per-warp copies of H fragments). The wgmma of group g run while the
// warps build group g + 1's operands (two register sets) and the copies of groups g + 1 .. g + PIPE - 1 are in
// flight.
//
// Shared memory (d = 64, two warpgroups of one tile: 18 KiB + 4 x 9 KiB; four: 36 KiB + 4 x 9 KiB): sX [ROWS][D + 8]
// bf16/fp16 (the x rows, ldmatrix-friendly stride), sH [PIPE][E / 8][16 nb][8] bf16 (a group's features as
// no-swizzle core matrices, MN-major: for each 8-column chunk the group's feature rows are consecutive 16-byte
// rows, so LBO = 128 bytes (next 8 features) and SBO = 16 R bytes (next 8 columns) for a group of R features).
#pragma once

#include "cuda/common/bulk_sm90.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/operand.h"
#include "cuda/common/wgmma_sm90.cuh"
#include "cuda/sympow2/query_epilogue.cuh"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {

// The shape of a CTA: WG warpgroups of MT m64 tiles each (ROWS = 64 MT WG rows of one block, every H group in
// shared memory feeds them all); PACKED: the A operands scaled in bf16x2 (one HMUL2 a register, the scale rounded
// to bf16 first: two roundings) instead of fp32 (unpack, two FMUL, one pack: one rounding, the sm_80 kernel's).
// SYNC, how the warpgroups share the H buffers:
//   0  one CTA barrier a group: every warpgroup in step, each group's wgmma done before the next is issued;
//   1  mbarriers: a buffer is full when every thread's copies into it have landed and empty when every warp's
//      wgmma on it is done, so a warpgroup runs up to PIPE - DIST - 1 groups ahead of the slowest;
//   2  as 1, and two groups' wgmma in flight a warpgroup (the next issued before the last is waited on; the
//      tensor cores drain once every four groups).
// XREG: a lane's x blocks (its A operand fragments of every block, 4 NB registers a tile) read from shared memory
// once and kept in registers, instead of one ldmatrix a block and group.
template <int WG_, int MT_, bool PACKED_, int SYNC_ = 0, bool XREG_ = false>
struct QueryShape {
  static constexpr int WG = WG_, MT = MT_, SYNC = SYNC_;
  static constexpr bool PACKED = PACKED_, XREG = XREG_;
};

// The shapes the library runs for head dimension D (measured: NOTES-KERNELS.md, v24, v31): QueryDefault (d = 64:
// two warpgroups of one tile; d = 128: one, 249 registers a thread), and QueryWide at d = 64: two warpgroups of two
// tiles with the x blocks in registers (256 rows a CTA: half the H traffic a row; 242 registers, one CTA a SM; the
// kernel sets sm90a-wg4 and sm90a-scan of cuda/common/sm90_select.h).
template <int D>
using QueryDefault = std::conditional_t<(D >= 128), QueryShape<1, 1, false>, QueryShape<2, 1, false>>;
template <int D>
using QueryWide = std::conditional_t<(D >= 128), QueryShape<1, 1, false>, QueryShape<2, 2, false, 0, true>>;

// Compile-time constants of the kernel for head dimension D (d == e, E = e + 8 state columns) and shape S.
template <int D, typename S = QueryDefault<D>>
struct QueryTraits {
  static constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, E = D + 8, NT = E / 8;
  static constexpr int WG = S::WG, MT = S::MT, THREADS = 128 * WG;
  static constexpr bool PACKED = S::PACKED, XREG = S::XREG;
  static constexpr int ROWS = 64 * MT * WG;      // rows a CTA
  static constexpr int MIN_CTAS = MT * WG * (D >= 128 ? 2 : 1) >= 4 ? 1 : 2;  // __launch_bounds__: registers
  static constexpr int SYNC = S::SYNC;
  // group buffers: with SYNC 0 one in the tensor cores, PIPE - 1 loads in flight; with mbarriers DIST groups are
  // loaded ahead of the one a warpgroup consumes, and the other buffers are the slack between warpgroups
  static constexpr int PIPE = SYNC == 0 ? (D >= 128 ? 3 : 4) : (D >= 128 ? 4 : 8);
  static constexpr int DIST = PIPE / 2;
  static constexpr int SD = D + 8;               // x tile row stride (elements)
  static constexpr int GROUP = 16 * NB * E;      // elements of the largest group buffer (group A = 0)
  static constexpr size_t smem = sizeof(uint16_t) * (static_cast<size_t>(ROWS) * SD + static_cast<size_t>(PIPE) * GROUP) +
                                 (SYNC == 0 ? 0 : 2 * PIPE * sizeof(uint64_t));  // full and empty mbarriers
  static_assert((ROWS * SD + PIPE * GROUP) % 4 == 0, "the mbarriers 8-byte aligned");
  static_assert(E == 72 || E == 136, "wgmma shapes instantiated for E = 72, 136 (wgmma_sm90.cuh)");
};

#ifdef POWER_ATTENTION_SM90A
// Group (A, a) of H (rows [off, off + R) of [D2, E]) into a buffer as core matrices: piece (f, chunk) at
// chunk R 8 + f 8 elements. Thread i takes f = i % 8 + 8 (i / (8 NC)), chunk (i / 8) % NC: each 8-thread phase
// writes 8 consecutive 16-byte rows (no bank conflicts) and a warp reads four 16-byte pieces of eight rows.
template <int D, int THREADS>
__device__ __forceinline__ void query_load_group(mma::u16* dst, const mma::u16* H, int A, int a) {
  constexpr int NB = D / 16, E = D + 8, NC = E / 8;
  const int R = 16 * (NB - A);
  const mma::u16* src = H + static_cast<int64_t>(group_offset(NB, A, a)) * E;
  for (int i = threadIdx.x; i < R * NC; i += THREADS) {
    const int f = (i & 7) + 8 * (i / (8 * NC)), ch = (i >> 3) % NC;
    mma::cp_async16(dst + ch * R * 8 + f * 8, src + f * E + ch * 8, true);
  }
}
#endif

// B[x, r] = phi'(x_r) H[x] for the rows of block bx = blockIdx.x / parts; the epilogue (query_epilogue.cuh) writes
// out or the combination. Same arguments as the sm_80 kernel.
template <bool BFX, int D, typename S>
__global__ void __launch_bounds__(QueryTraits<D, S>::THREADS, QueryTraits<D, S>::MIN_CTAS)
    sympow2_query_sm90_kernel(const mma::u16* __restrict__ x, RowMap xm, const float* __restrict__ rs,
                              const mma::u16* __restrict__ H, float* __restrict__ out, int64_t X, int64_t n,
                              int cols, Combine cmb) {
#ifdef POWER_ATTENTION_SM90A
  using namespace mma;
  using T = QueryTraits<D, S>;
  constexpr int NB = T::NB, E = T::E, NT = T::NT, MT = T::MT, ROWS = T::ROWS, PIPE = T::PIPE, SD = T::SD;
  constexpr int THREADS = T::THREADS;
  extern __shared__ __align__(128) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + ROWS * SD;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2;
  const int wg = warp >> 2, wl = warp & 3;  // warpgroup, warp in it
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * T::D2 * E;

  // rows of this lane: m64 tile i of warpgroup wg, half h -> 64 (MT wg + i) + 16 wl + gr + 8 h; their row scales
  // (0 past n)
  int row[MT][2];
  float scale[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row[i][h] = 64 * (MT * wg + i) + 16 * wl + gr + 8 * h;
      const int64_t r = r0 + row[i][h];
      scale[i][h] = r < n ? (rs ? rs[bx * n + r] : 1.f) : 0.f;
    }

  constexpr int NG = 16 * NB;  // groups (A, a)
  // SYNC >= 1: mbarriers full[b], empty[b] of buffer b after the buffers
  const u32 full0 = smem_addr(sH + PIPE * T::GROUP), empty0 = full0 + 8 * PIPE;
  if constexpr (T::SYNC != 0) {
    if (threadIdx.x == 0) {
#pragma unroll
      for (int b = 0; b < PIPE; ++b) {
        bulk::mbar_init(full0 + 8 * b, THREADS);  // every thread's copies
        bulk::mbar_init(empty0 + 8 * b, THREADS / 32);  // every warp's wgmma
      }
      bulk::fence_init();
    }
    __syncthreads();
  }
  // copies: the x rows, then groups 0 .. PIPE - 2, one commit group each (the x rows go with group 0); with
  // mbarriers groups 0 .. DIST - 1 (group 0's arrivals cover the x rows)
  load_rows_mapped<D, ROWS, THREADS, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
  auto prefetch = [&](int gi) {
    if (gi < NG) query_load_group<D, THREADS>(sH + (gi % PIPE) * T::GROUP, Hb, gi / 16, gi % 16);
    cp_async_commit();
  };
  // group p into its buffer once every warp is done with the group before it there (p - PIPE)
  auto produce = [&](int p) {
    if (p >= NG) return;
    const int b = p % PIPE;
    if (p >= PIPE) bulk::mbar_wait(empty0 + 8 * b, (p / PIPE - 1) & 1);
    query_load_group<D, THREADS>(sH + b * T::GROUP, Hb, p / 16, p % 16);
    bulk::cp_async_arrive(full0 + 8 * b);
  };
  if constexpr (T::SYNC == 0) {
#pragma unroll
    for (int i = 0; i < PIPE - 1; ++i) prefetch(i);
  } else {
#pragma unroll
    for (int i = 0; i < T::DIST; ++i) produce(i);
  }

  u32 af[2][MT][NB][4];  // the A operands of two groups: one read by the running wgmma, one being built
  u32 xr[T::XREG ? MT : 1][T::XREG ? NB : 1][4];  // XREG: the x blocks
  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[i][nt][0] = acc[i][nt][1] = acc[i][nt][2] = acc[i][nt][3] = 0.f;

  // the A operands of group (A, a) into register set P: for blocks B >= A, the x block scaled by c_AB rs x[16 A + a]
  auto build = [&](auto A_, auto P_, int a) {
    constexpr int A = decltype(A_)::value, P = decltype(P_)::value;
    float w[MT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) w[i][h] = scale[i][h] * to_float<BFX>(sX[row[i][h] * SD + 16 * A + a]);
#pragma unroll
    for (int B = A; B < NB; ++B) {
      const float c = B == A ? 1.f : kSqrt2;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const float ca = c * w[i][0], cb = c * w[i][1];
        u32 xf[4];  // the x block (without XREG ldmatrix again each group: registers are the kernel's limit)
        if constexpr (T::XREG) {
#pragma unroll
          for (int k = 0; k < 4; ++k) xf[k] = xr[i][B][k];
        } else {
          ldsm4(xf, at_a(sX, SD, 64 * (MT * wg + i) + 16 * wl, 16 * B));
        }
        if constexpr (T::PACKED && BFX) {
          const __nv_bfloat162 sa = __float2bfloat162_rn(ca), sb = __float2bfloat162_rn(cb);
          auto mul = [](u32 v, __nv_bfloat162 f) {
            const __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&v), f);
            return *reinterpret_cast<const u32*>(&r);
          };
          af[P][i][B][0] = mul(xf[0], sa);
          af[P][i][B][1] = mul(xf[1], sb);
          af[P][i][B][2] = mul(xf[2], sa);
          af[P][i][B][3] = mul(xf[3], sb);
        } else {
          const float2 x0 = unpack2<BFX>(xf[0]), x1 = unpack2<BFX>(xf[1]);
          const float2 x2 = unpack2<BFX>(xf[2]), x3 = unpack2<BFX>(xf[3]);
          af[P][i][B][0] = pack2<true>(x0.x * ca, x0.y * ca);
          af[P][i][B][1] = pack2<true>(x1.x * cb, x1.y * cb);
          af[P][i][B][2] = pack2<true>(x2.x * ca, x2.y * ca);
          af[P][i][B][3] = pack2<true>(x3.x * cb, x3.y * cb);
        }
      }
    }
  };
  // group gi = 16 A + a (operands in set P) through the tensor cores, while the next group's operands are built
  // into the other set: wgmma of one group at a time, so that no register a running wgmma reads is written
  auto step = [&](auto A_, auto P_, int a) {
    constexpr int A = decltype(A_)::value, P = decltype(P_)::value;
    const int gi = 16 * A + a;
    cp_async_wait<PIPE - 2>();  // this thread's copies of group gi have landed
    wgmma::fence_proxy_async();
    __syncthreads();            // everyone's copies of gi visible; everyone past the wait for group gi - 1
    prefetch(gi + PIPE - 1);    // into the buffer of group gi - 1
    const u32 base = smem_addr(sH + (gi % PIPE) * T::GROUP);
    constexpr u32 R = 16 * (NB - A);
    wgmma::fence();
#pragma unroll
    for (int B = A; B < NB; ++B)
#pragma unroll
      for (int i = 0; i < MT; ++i)
        wgmma::Wgmma<E>::rs(&acc[i][0][0], af[P][i][B], wgmma::desc_noswizzle(base + 256 * (B - A), 128, 16 * R));
    wgmma::commit();
    constexpr auto Q = std::integral_constant<int, 1 - P>{};
    if (a + 1 < 16) {
      build(A_, Q, a + 1);
    } else if constexpr (A + 1 < NB) {
      build(std::integral_constant<int, A + 1>{}, Q, 0);
    }
    wgmma::wait<0>();
  };
  // SYNC >= 1: group gi's buffer full (the copies visible to the tensor cores), its wgmma into register set P issued,
  // the buffer released by this warp once its wgmma are done
  auto consume = [&](int gi) {
    bulk::mbar_wait(full0 + 8 * (gi % PIPE), (gi / PIPE) & 1);
    wgmma::fence_proxy_async();
  };
  auto release = [&](int gi) {
    if (lane == 0) bulk::mbar_arrive(empty0 + 8 * (gi % PIPE));
  };
  auto issue = [&](auto A_, auto P_, int gi) {
    constexpr int A = decltype(A_)::value, P = decltype(P_)::value;
    const u32 base = smem_addr(sH + (gi % PIPE) * T::GROUP);
    constexpr u32 R = 16 * (NB - A);
    wgmma::fence();
#pragma unroll
    for (int B = A; B < NB; ++B)
#pragma unroll
      for (int i = 0; i < MT; ++i)
        wgmma::Wgmma<E>::rs(&acc[i][0][0], af[P][i][B], wgmma::desc_noswizzle(base + 256 * (B - A), 128, 16 * R));
    wgmma::commit();
  };
  // the operands of the group after (A, a) into set Q
  auto build_next = [&](auto A_, auto Q_, int a) {
    constexpr int A = decltype(A_)::value;
    if (a + 1 < 16) {
      build(A_, Q_, a + 1);
    } else if constexpr (A + 1 < NB) {
      build(std::integral_constant<int, A + 1>{}, Q_, 0);
    }
  };
  if constexpr (T::SYNC == 0) {
    cp_async_wait<PIPE - 2>();  // the x rows (with group 0)
    __syncthreads();
  } else {
    consume(0);  // the x rows (with group 0)
  }
  if constexpr (T::XREG) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int B = 0; B < NB; ++B) ldsm4(xr[i][B], at_a(sX, SD, 64 * (MT * wg + i) + 16 * wl, 16 * B));
  }
  build(std::integral_constant<int, 0>{}, std::integral_constant<int, 0>{}, 0);
  if constexpr (T::SYNC == 0) {
    static_for<NB>([&](auto A_) {
      for (int a = 0; a < 16; a += 2) {
        step(A_, std::integral_constant<int, 0>{}, a);
        step(A_, std::integral_constant<int, 1>{}, a + 1);
      }
    });
  } else if constexpr (T::SYNC == 1) {
    static_for<NB>([&](auto A_) {
      for (int a = 0; a < 16; a += 2) {
        static_for<2>([&](auto J_) {
          constexpr int J = decltype(J_)::value;
          const int gi = 16 * decltype(A_)::value + a + J;
          produce(gi + T::DIST);
          consume(gi);
          issue(A_, std::integral_constant<int, J>{}, gi);
          build_next(A_, std::integral_constant<int, 1 - J>{}, a + J);
          wgmma::wait<0>();
          release(gi);
        });
      }
    });
  } else {
    // four groups a loop body, the next group's wgmma issued before the last one's are waited on: set J % 2 is
    // issued, then the wait for group gi - 1 frees set 1 - J % 2 for the build; nothing in flight at the back edge
    static_for<NB>([&](auto A_) {
      for (int a = 0; a < 16; a += 4) {
        static_for<4>([&](auto J_) {
          constexpr int J = decltype(J_)::value;
          const int gi = 16 * decltype(A_)::value + a + J;
          produce(gi + T::DIST);
          consume(gi);
          issue(A_, std::integral_constant<int, J % 2>{}, gi);
          if constexpr (J > 0) {
            wgmma::wait<1>();
            release(gi - 1);
          }
          build_next(A_, std::integral_constant<int, 1 - J % 2>{}, a + J);
        });
        wgmma::wait<0>();
        release(16 * decltype(A_)::value + a + 3);
      }
    });
  }
  wgmma::wait<0>();
#pragma unroll
  for (int i = 0; i < MT; ++i) wgmma::Wgmma<E>::fence_operand(&acc[i][0][0]);
  query_epilogue<BFX, E, MT>(acc, row, bx, r0, n, out, cols, cmb);
#endif
}

// Grid and shared memory of the kernel for shape S (the library's: QueryDefault<D>, QueryWide<D>); the launch's
// error (cudaSuccess where it was queued; cudaErrorInvalidConfiguration for a grid over 2^31 - 1 CTAs).
template <bool BF, int D, typename S = QueryDefault<D>>
cudaError_t query_launch_shape(const mma::u16* x, const RowMap& xm, const float* rs, const mma::u16* H, float* out,
                               int64_t X, int64_t n, int cols, const Combine& cmb, cudaStream_t stream) {
  using T = QueryTraits<D, S>;
  auto kernel = sympow2_query_sm90_kernel<BF, D, S>;
  const int64_t blocks = X * ((n + T::ROWS - 1) / T::ROWS);
  if (blocks <= 0) return cudaSuccess;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  const cudaError_t attr =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(T::smem));
  if (attr != cudaSuccess) return attr;
  kernel<<<static_cast<unsigned>(blocks), T::THREADS, T::smem, stream>>>(x, xm, rs, H, out, X, n, cols, cmb);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
