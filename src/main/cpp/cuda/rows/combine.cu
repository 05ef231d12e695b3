// combine.cu: the combination of the in-chunk attention and the state term, forward and backward (rows.h).
#include "cuda/rows/rows.h"

#include "cuda/common/device_math.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/state_scale.cuh"
#include "cuda/common/traits.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace power_attention {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Combination of the in-chunk attention and the state term (SPEC §4), with the row factors wa, ws of
// state_scale.cuh.
// ---------------------------------------------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ void chunk_row_weights(const StateRows& st, A m, int64_t row, A& wa, A& ws) {
  const A* gc = static_cast<const A*>(st.gc);
  state_row_weights<A>(m, gc ? gc[row / st.g] : A(0), st.mu[row / st.R], wa, ws);
}

// With B (chunked form): den = l wa + B[:, e] ws, y = (numA wa + B[:, :e] ws) / den.
// Without B (quadratic form): den = l, y = numA / l. y = 0 where den = 0.
template <typename A>
__global__ void combine_forward(const A* __restrict__ numA, const A* __restrict__ l, const A* __restrict__ m,
                                const A* __restrict__ B, StateRows st, A* __restrict__ y, A* __restrict__ den,
                                int64_t rows, int e, int E) {
  const int64_t total = rows * e;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / e;
    const int col = static_cast<int>(i - row * e);
    A dn, num;
    if (B) {
      A wa, ws;
      chunk_row_weights<A>(st, m[row], row, wa, ws);
      dn = l[row] * wa + B[row * E + e] * ws;
      num = numA[i] * wa + B[row * E + col] * ws;
    } else {
      dn = l[row];
      num = numA[i];
    }
    y[i] = dn != A(0) ? num / dn : A(0);
    if (col == 0) den[row] = dn;
  }
}

// Backward of combine_forward. dnum = dy / den, dden = -(dy . y) / den (y kept in fp32: dnum . v_j + dden cancels
// where one weight dominates). Writes dnumA = dnum wa (when given), its row factor rf = wa / den (the in-chunk weights take
// dy V^T rf, with dy exact, rather than a rounded dnumA), ddenA = dden wa (wa = 1 without state) and, with dB,
// dB[:, :e] = dnum ws, dB[:, e] = dden ws, zero beyond. One warp per row. Row r of block x (R rows a block) of dy
// lives through its map (the compute layout: RowMap::dense); rows the map does not hold (past t) read as zeros.
constexpr int kCombineRows = 64;  // rows a block of combine_backward: 8 warps of 8

template <typename T, typename TS, typename A>
__global__ void __launch_bounds__(256) combine_backward(const T* __restrict__ dy, RowMap dym, int64_t R,
                                                        const A* __restrict__ y, const A* __restrict__ den,
                                                        const A* __restrict__ m, bool state, StateRows st,
                                                        TS* __restrict__ dB,
                                                        T* __restrict__ dnumA, A* __restrict__ rf,
                                                        A* __restrict__ ddenA, int e, int E,
                                                        const T* __restrict__ v, RowMap vm, int g,
                                                        A* __restrict__ own) {
  // a block covers kCombineRows rows of one block x of dy: the map's arithmetic (64-bit divisions) once a thread
  const int64_t parts = (R + kCombineRows - 1) / kCombineRows;
  const int64_t x = blockIdx.x / parts, r0 = (blockIdx.x - x * parts) * kCombineRows;
  const int64_t have = dym.rows(x, R);
  const T* dx = dy + dym.base(x);
  const int lane = threadIdx.x & 31;
  for (int i = threadIdx.x >> 5; i < kCombineRows; i += blockDim.x >> 5) {
    const int64_t r = r0 + i, row = x * R + r;
    if (r >= R) break;
    const T* dr = r < have ? dx + dym.row(r) : nullptr;
    const A* yr = y + row * e;
    const A dn = den[row];
    const A inv = dn != A(0) ? A(1) / dn : A(0);
    A dot = 0, dvy = 0;
    const T* vr = own && dr ? v + vm.base(x) + vm.row(r / g) : nullptr;
    if (dr)
      for (int c = lane; c < e; c += 32) {
        dot += static_cast<A>(dr[c]) * yr[c];
        if (vr) dvy += static_cast<A>(dr[c]) * (static_cast<A>(vr[c]) - yr[c]);
      }
    dot = warp_sum(dot);
    if (own) dvy = warp_sum(dvy);
    const A dden = -dot * inv;
    A wa = 1, ws = 1;
    if (state) chunk_row_weights<A>(st, m[row], row, wa, ws);
    for (int c = lane; c < e; c += 32) {
      const A dnum = dr ? static_cast<A>(dr[c]) * inv : A(0);
      if (dnumA) dnumA[row * e + c] = static_cast<T>(dnum * wa);
      if (dB) dB[row * E + c] = static_cast<TS>(dnum * ws);
    }
    if (dB)
      for (int c = e + lane; c < E; c += 32) dB[row * E + c] = static_cast<TS>(c == e ? dden * ws : A(0));
    if (lane == 0) {
      ddenA[row] = dden * wa;
      rf[row] = inv * wa;
      if (own) own[row] = dvy * inv * wa;
    }
  }
}

// combine_backward for 16-bit dy, fp32 y and bf16 dB of E = e + 8 columns, e in {16, 32, 64, 128}, no dnumA (the
// tile kernels' path): L = e / 8 lanes a row, each with 16 bytes of dy and 32 of y, so a warp covers 32 / L rows
// at once (one row a warp left the scalar kernel at a third of the memory bandwidth).
template <bool BF>
__global__ void __launch_bounds__(256) combine_backward16(const mma::u16* __restrict__ dy, RowMap dym, int64_t R,
                                                          const float* __restrict__ y, const float* __restrict__ den,
                                                          const float* __restrict__ m, bool state,
                                                          StateRows st, mma::u16* __restrict__ dB,
                                                          float* __restrict__ rf,
                                                          float* __restrict__ ddenA, int e,
                                                          const mma::u16* __restrict__ v, RowMap vm, int g,
                                                          float* __restrict__ own) {
  using mma::u32;
  const int L = e >> 3, per = 32 / L, E = e + 8;  // lanes a row, rows a warp at once
  const int64_t parts = (R + kCombineRows - 1) / kCombineRows;
  const int64_t x = blockIdx.x / parts, r0 = (blockIdx.x - x * parts) * kCombineRows;
  const int64_t have = dym.rows(x, R);
  const mma::u16* dx = dy + dym.base(x);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane % L, slot = lane / L;
  const int steps = (kCombineRows + 8 * per - 1) / (8 * per);  // the same for every lane: shuffles stay whole
  for (int step = 0; step < steps; ++step) {
    const int i = step * 8 * per + warp * per + slot;
    const int64_t r = r0 + i, row = x * R + r;
    const bool live = i < kCombineRows && r < R;
    float d[8] = {0, 0, 0, 0, 0, 0, 0, 0}, yv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (live && r < have) {
      const uint4 w = *reinterpret_cast<const uint4*>(dx + dym.row(r) + 8 * sub);
      const u32 ws4[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = mma::unpack2<BF>(ws4[j]);
        d[2 * j] = f.x, d[2 * j + 1] = f.y;
      }
    }
    if (live) {
      const float4 a = *reinterpret_cast<const float4*>(y + row * e + 8 * sub);
      const float4 b = *reinterpret_cast<const float4*>(y + row * e + 8 * sub + 4);
      yv[0] = a.x, yv[1] = a.y, yv[2] = a.z, yv[3] = a.w, yv[4] = b.x, yv[5] = b.y, yv[6] = b.z, yv[7] = b.w;
    }
    float vv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (own && live && r < have) {
      const uint4 w = *reinterpret_cast<const uint4*>(v + vm.base(x) + vm.row(r / g) + 8 * sub);
      const u32 ws4[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = mma::unpack2<BF>(ws4[j]);
        vv[2 * j] = f.x, vv[2 * j + 1] = f.y;
      }
    }
    float dot = 0.f, dvy = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      dot += d[j] * yv[j];
      dvy += d[j] * (vv[j] - yv[j]);
    }
    for (int o = L >> 1; o > 0; o >>= 1) {
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
      dvy += __shfl_xor_sync(0xffffffffu, dvy, o);
    }
    if (!live) continue;
    const float dn = den[row], inv = dn != 0.f ? 1.f / dn : 0.f, dden = -dot * inv;
    float wa = 1.f, ws = 1.f;
    if (state) chunk_row_weights<float>(st, m[row], row, wa, ws);
    if (dB) {
      const float f = inv * ws;
      *reinterpret_cast<uint4*>(dB + row * E + 8 * sub) =
          make_uint4(mma::pack2<true>(d[0] * f, d[1] * f), mma::pack2<true>(d[2] * f, d[3] * f),
                     mma::pack2<true>(d[4] * f, d[5] * f), mma::pack2<true>(d[6] * f, d[7] * f));
      if (sub == 0)
        *reinterpret_cast<uint4*>(dB + row * E + e) = make_uint4(mma::pack2<true>(dden * ws, 0.f), 0u, 0u, 0u);
    }
    if (sub == 0) {
      ddenA[row] = dden * wa;
      rf[row] = inv * wa;
      if (own) own[row] = dvy * inv * wa;
    }
  }
}

}  // namespace

// The chunked form's row factors for the combination kernels (StateRows).
StateRows state_rows(const Problem& pr, const ChunkGates& gt) {
  StateRows st;
  st.gc = gt.Gc.defined() ? gt.Gc.data_ptr() : nullptr;
  st.mu = gt.mu.data_ptr<double>();
  st.R = pr.chunk * pr.g;
  st.g = static_cast<int>(pr.g);
  return st;
}


template <typename A>
void combine_fwd(const at::Tensor& numA, const A* l, const A* m, const at::Tensor& B, const StateRows& st,
                 at::Tensor y, A* den) {
  const int64_t rows = numA.numel() / numA.size(-1), e = numA.size(-1);
  const int64_t E = B.defined() ? B.size(-1) : 0;
  const unsigned grid = std::min<unsigned>(blocks_for(rows * e, 256), 65535u * 8);
  combine_forward<A><<<grid, 256, 0, stream()>>>(numA.data_ptr<A>(), l, m, ptr_or_null<A>(B), st, y.data_ptr<A>(),
                                                    den, rows, static_cast<int>(e), static_cast<int>(E));
  check_launch();
}

template <typename T, typename A>
void combine_bwd(const Operand& dy, const at::Tensor& y, const A* den, const A* m, bool state, const StateRows& st,
                 at::Tensor dB, at::Tensor dnumA, A* rf, A* ddenA, int64_t rows, int64_t e, int64_t E, int64_t R,
                 const Operand& v, int64_t g, A* own) {
  using TS = typename PhiType<T>::type;
  const RowMap map = dy.mapped() ? dy.map : RowMap::dense(rows, e);
  if (R == 0) R = dy.mapped() ? dy.map.c * dy.map.g : rows;
  TORCH_CHECK(!own || (v.defined() && v.data.scalar_type() == dy.data.scalar_type() && g >= 1 && R % g == 0),
              "power_full: internal: the own-key terms need v in dy's dtype");
  const RowMap vm = own ? v.rows_map(R / g, e) : RowMap();
  const T* vp = own ? static_cast<const T*>(v.data.data_ptr()) : nullptr;
  if (rows == 0) return;
  TORCH_CHECK(R > 0 && rows % R == 0, "power_full: internal: combination rows");
  const unsigned grid = blocks_for(rows / R * ((R + kCombineRows - 1) / kCombineRows), 1);
  constexpr bool k16 = sizeof(T) == 2 && std::is_same<TS, at::BFloat16>::value && std::is_same<A, float>::value;
  if constexpr (k16) {
    const bool fits = (e == 16 || e == 32 || e == 64 || e == 128) && (!dB.defined() || E == e + 8) &&
                      !dnumA.defined() && reinterpret_cast<uintptr_t>(dy.data.data_ptr()) % 16 == 0 &&
                      (!own || reinterpret_cast<uintptr_t>(vp) % 16 == 0);
    if (fits) {
      auto kernel = combine_backward16<std::is_same<T, at::BFloat16>::value>;
      kernel<<<grid, 256, 0, stream()>>>(static_cast<const mma::u16*>(dy.data.data_ptr()), map, R, y.data_ptr<A>(),
                                         den, m, state, st,
                                         static_cast<mma::u16*>(dB.defined() ? dB.data_ptr() : nullptr),
                                         rf, ddenA, static_cast<int>(e), reinterpret_cast<const mma::u16*>(vp), vm,
                                         static_cast<int>(g), own);
      check_launch();
      return;
    }
  }
  combine_backward<T, TS, A><<<grid, 256, 0, stream()>>>(
      dy.data.data_ptr<T>(), map, R, y.data_ptr<A>(), den, m, state, st, mut_ptr_or_null<TS>(dB),
      mut_ptr_or_null<T>(dnumA), rf, ddenA, static_cast<int>(e), static_cast<int>(E), vp, vm, static_cast<int>(g), own);
  check_launch();
}

template void combine_fwd<float>(const at::Tensor&, const float*, const float*, const at::Tensor&, const StateRows&,
                                 at::Tensor, float*);
template void combine_fwd<double>(const at::Tensor&, const double*, const double*, const at::Tensor&,
                                  const StateRows&, at::Tensor, double*);
#define POWER_ATTENTION_INSTANTIATE(T, A)                                                                      \
  template void combine_bwd<T, A>(const Operand&, const at::Tensor&, const A*, const A*, bool, const StateRows&, \
                                  at::Tensor, at::Tensor, A*, A*, int64_t, int64_t, int64_t, int64_t, const Operand&, \
                                  int64_t, A*);
POWER_ATTENTION_FOR_EACH_COMPUTE_TYPE(POWER_ATTENTION_INSTANTIATE)
#undef POWER_ATTENTION_INSTANTIATE

}  // namespace cuda
}  // namespace power_attention
