// phi.cu: phi in sympow.h's layout and its backward (generic.h), from an index table and coefficients.
#include "cuda/generic/generic.h"

#include "cuda/common/device_math.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/traits.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace power_attention {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// phi (sympow.h's layout) from an index table idx [D, p] and coefficients coef [D].
// ---------------------------------------------------------------------------------------------------------------

constexpr int kPhiRowsPerBlock = 16;

// Block-wide: copies rows [row0, row0 + kPhiRowsPerBlock) of x [n, d] (fewer at the end) into xs as A, then syncs.
// Returns the number of rows copied.
template <typename TI, typename A>
__device__ int stage_rows(const TI* __restrict__ x, A* xs, int64_t n, int d, int64_t row0) {
  const int64_t left = n - row0;
  const int rows = static_cast<int>(left < kPhiRowsPerBlock ? left : kPhiRowsPerBlock);
  for (int i = threadIdx.x; i < rows * d; i += blockDim.x) {
    const int rr = i / d;
    xs[i] = static_cast<A>(x[(row0 + rr) * d + (i - rr * d)]);
  }
  __syncthreads();
  return rows;
}

// torch: out[r] = rs[r] * phi(x[r])      x [n, d], rs [n] or null, out [n, D]
template <typename TI, typename TO, typename A>
__global__ void sympow_forward(const TI* __restrict__ x, const A* __restrict__ rs, const int16_t* __restrict__ idx,
                               const A* __restrict__ coef, TO* __restrict__ out, int64_t n, int d, int D, int p) {
  extern __shared__ unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);  // [kPhiRowsPerBlock, d]
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kPhiRowsPerBlock;
  const int rows = stage_rows(x, xs, n, d, row0);
  for (int a = threadIdx.x; a < D; a += blockDim.x) {
    const int16_t* ia = idx + static_cast<int64_t>(a) * p;
    int ix[kMaxDegree];
#pragma unroll
    for (int k = 0; k < kMaxDegree; ++k) ix[k] = k < p ? ia[k] : 0;
    const A c = coef[a];
    for (int rr = 0; rr < rows; ++rr) {
      const A* xr = xs + rr * d;
      A v = c * (rs ? rs[row0 + rr] : A(1));
#pragma unroll
      for (int k = 0; k < kMaxDegree; ++k)
        if (k < p) v *= xr[ix[k]];
      out[(row0 + rr) * D + a] = static_cast<TO>(v);
    }
  }
}

// sympow_forward for p <= 4 and D % VEC == 0, VEC = 16 / sizeof(TO): each thread makes VEC consecutive outputs of a
// row and stores them with one 16-byte store (scalar 2-byte stores ran at a third of the memory bandwidth).
template <typename TI, typename TO, typename A>
__global__ void sympow_forward_vec(const TI* __restrict__ x, const A* __restrict__ rs,
                                   const int16_t* __restrict__ idx, const A* __restrict__ coef,
                                   TO* __restrict__ out, int64_t n, int d, int D, int p) {
  constexpr int VEC = 16 / sizeof(TO);
  extern __shared__ unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);  // [kPhiRowsPerBlock, d]
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kPhiRowsPerBlock;
  const int rows = stage_rows(x, xs, n, d, row0);
  for (int a0 = threadIdx.x * VEC; a0 < D; a0 += blockDim.x * VEC) {
    int ix[VEC][4];
    A c[VEC];
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
      c[u] = coef[a0 + u];
#pragma unroll
      for (int k = 0; k < 4; ++k) ix[u][k] = k < p ? idx[static_cast<int64_t>(a0 + u) * p + k] : 0;
    }
    for (int rr = 0; rr < rows; ++rr) {
      const A* xr = xs + rr * d;
      const A r = rs ? rs[row0 + rr] : A(1);
      alignas(16) TO vals[VEC];
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        A v = c[u] * r;
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (k < p) v *= xr[ix[u][k]];
        vals[u] = static_cast<TO>(v);
      }
      *reinterpret_cast<uint4*>(out + (row0 + rr) * D + a0) = *reinterpret_cast<const uint4*>(vals);
    }
  }
}

// Backward of sympow_forward: dx[r] = rs[r] J_phi(x[r])^T dphi[r]; u[r] = rs[r] (dphi[r] . phi(x[r])), the
// gradient of log rs[r]. One block per row; dx or u may be null.
template <typename TI, typename TD, typename A>
__global__ void sympow_backward(const TI* __restrict__ x, const A* __restrict__ rs, const TD* __restrict__ dphi,
                                const int16_t* __restrict__ idx, const A* __restrict__ coef, A* __restrict__ dx,
                                A* __restrict__ u, int d, int D, int p) {
  extern __shared__ unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);  // [d]
  A* dxs = xs + d;                         // [d]
  __shared__ A red[32];
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    xs[i] = static_cast<A>(x[row * d + i]);
    dxs[i] = A(0);
  }
  __syncthreads();
  A usum = 0;
  const TD* dr = dphi + row * D;
  for (int a = threadIdx.x; a < D; a += blockDim.x) {
    const A gdc = static_cast<A>(dr[a]) * coef[a];
    if (gdc == A(0)) continue;
    const int16_t* ia = idx + static_cast<int64_t>(a) * p;
    int ix[kMaxDegree];
    A xv[kMaxDegree], pre[kMaxDegree + 1];
    pre[0] = A(1);
#pragma unroll
    for (int k = 0; k < kMaxDegree; ++k) {
      ix[k] = k < p ? ia[k] : 0;
      xv[k] = k < p ? xs[ix[k]] : A(1);
      pre[k + 1] = pre[k] * xv[k];
    }
    usum += gdc * pre[kMaxDegree];
    if (dx) {
      A suf = A(1);
#pragma unroll
      for (int k = kMaxDegree - 1; k >= 0; --k) {
        if (k < p) {
          atomicAdd(dxs + ix[k], gdc * pre[k] * suf);
          suf *= xv[k];
        }
      }
    }
  }
  const A scale = rs ? rs[row] : A(1);
  if (u) {
    const A total = block_sum(usum, red);
    if (threadIdx.x == 0) u[row] = scale * total;
  }
  __syncthreads();
  if (dx)
    for (int i = threadIdx.x; i < d; i += blockDim.x) dx[row * d + i] = scale * dxs[i];
}

// sympow_backward for p = 2 without atomics: with G_a = dphi_a coef_a staged in shared memory,
//   dx_i = rs sum_j G_{a(i,j)} x_j (1 + [i == j]),  a(i, j) = i d - i (i - 1) / 2 + (j - i) for i <= j.
// One block of 128 threads per row; shared memory D + d numbers.
// Tuning (bf16, t = 65536, h = 8, d = 64, one call): this simplest version measured 2.8 ms on an H200; j split over
// 256 threads 3.4 ms, a symmetric d x d matrix in shared memory 4.8 ms, 4 rows per block with 16-byte loads 5.8 ms
// (H100). Not understood yet; the way out is not to materialise dphi at all (NOTES-KERNELS.md).
template <typename TI, typename TD, typename A>
__global__ void sympow2_backward(const TI* __restrict__ x, const A* __restrict__ rs, const TD* __restrict__ dphi,
                                 const A* __restrict__ coef, A* __restrict__ dx, A* __restrict__ u, int d, int D) {
  extern __shared__ unsigned char smem_raw[];
  A* xs = reinterpret_cast<A*>(smem_raw);  // [d]
  A* gs = xs + d;                          // [D]
  __shared__ A red[32];
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < d; i += blockDim.x) xs[i] = static_cast<A>(x[row * d + i]);
  const TD* dr = dphi + row * D;
  for (int a = threadIdx.x; a < D; a += blockDim.x) gs[a] = static_cast<A>(dr[a]) * coef[a];
  __syncthreads();
  const A scale = rs ? rs[row] : A(1);
  if (u) {
    // sum_a G_a x_i x_j = sum_i x_i sum_{j >= i} G_{a(i,j)} x_j
    A part = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const A* gi = gs + (i * d - i * (i - 1) / 2) - i;
      A acc = 0;
      for (int j = i; j < d; ++j) acc += gi[j] * xs[j];
      part += acc * xs[i];
    }
    const A total = block_sum(part, red);
    if (threadIdx.x == 0) u[row] = scale * total;
  }
  if (dx) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      A acc = 0;
      for (int j = 0; j < d; ++j) {
        const int lo = j < i ? j : i, hi = j < i ? i : j;
        acc += gs[lo * d - lo * (lo - 1) / 2 + (hi - lo)] * xs[j];
      }
      acc += gs[i * d - i * (i - 1) / 2] * xs[i];  // the square term counts twice
      dx[row * d + i] = scale * acc;
    }
  }
}

// The index table and coefficients of phi on one device, built once per (device, d, p, dtype).
struct PhiTable {
  at::Tensor idx;   // [D, p] int16
  at::Tensor coef;  // [D] acc dtype
};

const PhiTable& phi_table(const at::Device& dev, int64_t d, int64_t p, at::ScalarType acc) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t, int>, PhiTable> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(static_cast<int>(dev.index()), d, p, static_cast<int>(acc));
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const int64_t D = sympow_dim(d, p);
  std::vector<int64_t> indices;
  const std::vector<double> coef = sympow_coefficients(d, p, &indices);  // the layout of sympow.h, one walk
  std::vector<int16_t> idx(indices.begin(), indices.end());
  PhiTable t;
  t.idx = at::from_blob(idx.data(), {D, p}, at::kShort).to(dev);
  t.coef = at::from_blob(const_cast<double*>(coef.data()), {D}, at::kDouble).to(acc).to(dev);
  return cache.emplace(key, t).first->second;
}

}  // namespace

template <typename T, typename A>
at::Tensor phi_forward(const at::Tensor& x, const at::Tensor& rs, int64_t p, at::ScalarType out) {
  const int64_t n = x.size(0), d = x.size(1);
  const PhiTable& tab = phi_table(x.device(), d, p, c10::CppTypeToScalarType<A>::value);
  const int64_t D = tab.coef.size(0);
  at::Tensor y = at::empty({n, D}, x.options().dtype(out));
  if (n == 0) return y;
  const size_t smem = sizeof(A) * kPhiRowsPerBlock * d;
  const dim3 grid(static_cast<unsigned>((n + kPhiRowsPerBlock - 1) / kPhiRowsPerBlock));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out, "phi_forward", [&] {
    constexpr int VEC = 16 / sizeof(scalar_t);
    if (p <= 4 && D % VEC == 0) {
      // one group of VEC outputs per thread where D allows (260 groups on 256 threads ran two rounds)
      const int threads = static_cast<int>(std::min<int64_t>(1024, (D / VEC + 31) / 32 * 32));
      sympow_forward_vec<T, scalar_t, A><<<grid, threads, smem, stream()>>>(
          x.data_ptr<T>(), ptr_or_null<A>(rs), tab.idx.data_ptr<int16_t>(), tab.coef.data_ptr<A>(),
          y.data_ptr<scalar_t>(), n, static_cast<int>(d), static_cast<int>(D), static_cast<int>(p));
      return;
    }
    sympow_forward<T, scalar_t, A><<<grid, 256, smem, stream()>>>(
        x.data_ptr<T>(), ptr_or_null<A>(rs), tab.idx.data_ptr<int16_t>(), tab.coef.data_ptr<A>(),
        y.data_ptr<scalar_t>(), n, static_cast<int>(d), static_cast<int>(D), static_cast<int>(p));
  });
  check_launch();
  return y;
}

template <typename T, typename A>
std::pair<at::Tensor, at::Tensor> phi_backward(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& dphi,
                                               int64_t p, bool want_dx, bool want_u) {
  const int64_t n = x.size(0), d = x.size(1);
  const PhiTable& tab = phi_table(x.device(), d, p, c10::CppTypeToScalarType<A>::value);
  const int64_t D = tab.coef.size(0);
  const auto acc = c10::CppTypeToScalarType<A>::value;
  at::Tensor dx = want_dx ? at::empty({n, d}, x.options().dtype(acc)) : at::Tensor();
  at::Tensor u = want_u ? at::empty({n}, x.options().dtype(acc)) : at::Tensor();
  if (n == 0 || (!want_dx && !want_u)) return {dx, u};
  if (p == 2 && sizeof(A) * (D + d) <= 40 * 1024) {
    const size_t smem2 = sizeof(A) * (D + d);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dphi.scalar_type(), "phi2_backward", [&] {
      sympow2_backward<T, scalar_t, A><<<static_cast<unsigned>(n), 128, smem2, stream()>>>(
          x.data_ptr<T>(), ptr_or_null<A>(rs), dphi.data_ptr<scalar_t>(), tab.coef.data_ptr<A>(),
          mut_ptr_or_null<A>(dx), mut_ptr_or_null<A>(u), static_cast<int>(d), static_cast<int>(D));
    });
    check_launch();
    return {dx, u};
  }
  const size_t smem = sizeof(A) * 2 * d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dphi.scalar_type(), "phi_backward", [&] {
    sympow_backward<T, scalar_t, A><<<static_cast<unsigned>(n), 128, smem, stream()>>>(
        x.data_ptr<T>(), ptr_or_null<A>(rs), dphi.data_ptr<scalar_t>(), tab.idx.data_ptr<int16_t>(),
        tab.coef.data_ptr<A>(), mut_ptr_or_null<A>(dx), mut_ptr_or_null<A>(u), static_cast<int>(d),
        static_cast<int>(D), static_cast<int>(p));
  });
  check_launch();
  return {dx, u};
}

#define POWER_ATTENTION_INSTANTIATE(T, A) template at::Tensor phi_forward<T, A>(const at::Tensor&, const at::Tensor&, int64_t, at::ScalarType); \
  template std::pair<at::Tensor, at::Tensor> phi_backward<T, A>(const at::Tensor&, const at::Tensor&,          \
                                                                const at::Tensor&, int64_t, bool, bool);
POWER_ATTENTION_FOR_EACH_COMPUTE_TYPE(POWER_ATTENTION_INSTANTIATE)
#undef POWER_ATTENTION_INSTANTIATE

}  // namespace cuda
}  // namespace power_attention
