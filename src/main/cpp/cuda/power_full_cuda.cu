// power_full_cuda.cu: the CUDA path of power_full, forward and backward of both forms (SPEC §3-5).
//
// Every chunk of every head is processed at once, one kernel (or product) per stage:
//
//   stage                          fast path (bf16 / fp16, d == e in 16..128)        otherwise
//   in-chunk / quadratic attention attention_tile_cuda.h (scores in registers)       cuBLAS products + the weights
//                                                                                     kernels of this file
//   chunk states + gated prefix    degree 2: sympow2_scan_* (phi made on the fly)     phi_forward + cuBLAS + the
//   queries against the states     degree 2: sympow2_query / sympow2_grad             state_scan kernels here
//   in-chunk + state combination   combine_forward / combine_backward (here)
//
// States travel in an extended layout [D, E]: columns [0, e) are S, column e is the normaliser s, the rest zero
// (E = e + 1 rounded up to 8), so one product updates or reads both; the normaliser rides with the values as a
// column of ones: S_ext = phi(K')^T [V | 1 | 0]. The degree-2 fast path keeps them in its own feature layout
// (sympow2_cuda.h) and converts at the API boundary.
//
// Precision: scores, weights' row sums, states and every reduction in fp32 (fp64 for fp64 compute); phi, the
// weights P and the state-side matrix operands in the input dtype (bf16 for fp16 inputs, whose range the states can
// exceed).
#include "cuda/power_full_cuda.h"

#include "cuda/attention/attention_tile.h"
#include "cuda/common/mma_sm80.cuh"
#include "cuda/common/state_scale.cuh"
#include "sympow.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

namespace power_attention {
namespace cuda {
namespace {

constexpr int kMaxDegree = 8;

// The dtype of phi and of the state-side matrix operands: the input dtype, but bf16 for fp16 inputs.
template <typename T>
struct PhiType {
  using type = T;
};
template <>
struct PhiType<at::Half> {
  using type = at::BFloat16;
};

__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_min(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total. red: 32 slots.
template <typename A>
__device__ A block_sum(A v, A* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A t = lane < warps ? red[lane] : A(0);
  return warp_sum(t);
}

// log-weight of one score (SPEC §3 without epsilons): p log|scale s| + gi - gj; -inf for s == 0.
template <typename A>
__device__ __forceinline__ A log_weight(A s, A scale, int p, A gi, A gj) {
  const A a = fabs(scale * s);
  return a > A(0) ? A(p) * dev_log(a) + gi - gj : -std::numeric_limits<A>::infinity();
}

// ---------------------------------------------------------------------------------------------------------------
// In-chunk (or in-tile) attention weights. A tile is X independent blocks of R query rows (token tq0 + r / g)
// against C keys (token j); row r sees keys j <= tq0 + r / g. gq/gk: gate cumsums at the rows' tokens / keys,
// with per-block strides, or null.
// ---------------------------------------------------------------------------------------------------------------

template <typename A>
struct TileArgs {
  int64_t X;
  int R, C, g;
  int64_t tq0;
  int p;
  A scale;
  const A* gq;
  int64_t gq_stride;
  const A* gk;
  int64_t gk_stride;
};

template <typename A>
__device__ __forceinline__ int visible_keys(const TileArgs<A>& t, int r) {
  const int64_t v = t.tq0 + r / t.g + 1;
  return v < 0 ? 0 : (v > t.C ? t.C : static_cast<int>(v));
}

// torch: z = p log|scale S| + gq - gk (causal, -inf masked); m = max_j z (0 if all -inf); P = exp(z - m) sign^p;
// l = P.sum(-1). One warp per row.
template <typename T, typename A>
__global__ void attention_weights_forward(TileArgs<A> t, const A* __restrict__ S, T* __restrict__ P,
                                          A* __restrict__ m, A* __restrict__ l) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= t.X * t.R) return;
  const int64_t x = row / t.R;
  const int r = static_cast<int>(row % t.R);
  const int vis = visible_keys(t, r);
  const A gi = t.gq ? t.gq[x * t.gq_stride + r / t.g] : A(0);
  const A* gk = t.gk ? t.gk + x * t.gk_stride : nullptr;
  const A* s = S + row * t.C;
  A mx = -std::numeric_limits<A>::infinity();
  for (int j = lane; j < vis; j += 32) mx = max(mx, log_weight(s[j], t.scale, t.p, gi, gk ? gk[j] : A(0)));
  mx = warp_max(mx);
  if (mx == -std::numeric_limits<A>::infinity()) mx = A(0);
  A sum = 0;
  T* pr = P + row * t.C;
  for (int j = lane; j < t.C; j += 32) {
    A w = 0;
    if (j < vis) {
      const A sj = s[j];
      w = dev_exp(log_weight(sj, t.scale, t.p, gi, gk ? gk[j] : A(0)) - mx);
      if ((t.p & 1) && sj < A(0)) w = -w;
    }
    pr[j] = static_cast<T>(w);
    sum += w;
  }
  sum = warp_sum(sum);
  if (lane == 0) {
    m[row] = mx;
    l[row] = sum;
  }
}

// Backward of attention_weights_forward with m constant. The gradient of P_ij is dP_ij rf_i + dden_i: dP = dy V^T
// (unscaled), rf the row factor, dden the normaliser's row term. Writes P (for dV = P^T dnum) and dS = dz p / S,
// the gradient of the unscaled scores (dz = (dP + dden) P); adds sum_j dz into dgq[token of row] and -sum_i dz into
// dgk[key]. Tiles of 16 rows x 128 keys, 4 warps of 4 rows, each lane 4 keys.
constexpr int kBwdRows = 16, kBwdCols = 128;

template <typename T, typename A>
__global__ void attention_weights_backward(TileArgs<A> t, const A* __restrict__ S, const A* __restrict__ dP,
                                           const A* __restrict__ rf, const A* __restrict__ dden,
                                           const A* __restrict__ m, T* __restrict__ P,
                                           T* __restrict__ dS, double* __restrict__ dgq, double* __restrict__ dgk) {
  // Gate gradients accumulate in fp64: sum_j dz_ij and sum_i dz_ij cancel almost exactly in the reverse cumsum
  // (the diagonal terms enter both), and fp32 partial sums would leave their rounding behind.
  __shared__ double colsum_smem[4][kBwdCols];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t x = blockIdx.z;
  const int r0 = blockIdx.y * kBwdRows, c0 = blockIdx.x * kBwdCols;
  const A* gk = t.gk ? t.gk + x * t.gk_stride : nullptr;
  double colsum[4] = {0, 0, 0, 0};
  for (int rr = 0; rr < 4; ++rr) {
    const int r = r0 + warp * 4 + rr;
    if (r >= t.R) break;
    const int64_t row = x * t.R + r;
    const int vis = visible_keys(t, r);
    const A gi = t.gq ? t.gq[x * t.gq_stride + r / t.g] : A(0);
    const A mr = m[row], dd = dden[row], f = rf[row];
    double rowsum = 0;
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      const int j = c0 + lane + 32 * cc;
      if (j >= t.C) continue;
      const int64_t at = row * t.C + j;
      A w = 0, ds = 0;
      const A sj = S[at];
      if (j < vis && sj != A(0)) {
        w = dev_exp(log_weight(sj, t.scale, t.p, gi, gk ? gk[j] : A(0)) - mr);
        if ((t.p & 1) && sj < A(0)) w = -w;
        const A dz = (dP[at] * f + dd) * w;
        ds = dz * A(t.p) / sj;
        rowsum += dz;
        colsum[cc] += dz;
      }
      P[at] = static_cast<T>(w);
      dS[at] = static_cast<T>(ds);
    }
    if (dgq) {
      rowsum = warp_sum(rowsum);
      if (lane == 0 && rowsum != 0.0) atomicAdd(dgq + x * t.gq_stride + r / t.g, rowsum);
    }
  }
  if (!dgk) return;
#pragma unroll
  for (int cc = 0; cc < 4; ++cc) colsum_smem[warp][lane + 32 * cc] = colsum[cc];
  __syncthreads();
  const int j = c0 + threadIdx.x;
  if (threadIdx.x < kBwdCols && j < t.C) {
    const double total = colsum_smem[0][threadIdx.x] + colsum_smem[1][threadIdx.x] + colsum_smem[2][threadIdx.x] +
                         colsum_smem[3][threadIdx.x];
    if (total != 0.0) atomicAdd(dgk + x * t.gk_stride + j, -total);
  }
}

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

// ---------------------------------------------------------------------------------------------------------------
// The gated prefix over chunks (SPEC §4.4), extended layout, one thread per state element.
// ---------------------------------------------------------------------------------------------------------------

// torch: H_0 = H0 (or 0); Hs[n] = H_n; H_{n+1} = decay[n] H_n + Sc[n]; final = H_N.
//   Sc [BH, N, DE], decay [BH, N] or null (1), H0 [BH, DE] or null, Hs [BH, N, DE], final [BH, DE] or null
// (the chunked form passes the scaled states: decay = alpha and Sc made with the key factors kf, chunk_gates_kernel)
template <typename TS, typename A>
__global__ void state_scan_forward(const A* __restrict__ Sc, const A* __restrict__ decay, const A* __restrict__ H0,
                                   TS* __restrict__ Hs, A* __restrict__ final_state, int N, int64_t DE) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t bh = blockIdx.y;
  if (e >= DE) return;
  A H = H0 ? H0[bh * DE + e] : A(0);
  for (int n = 0; n < N; ++n) {
    const int64_t at = (bh * N + n) * DE + e;
    Hs[at] = static_cast<TS>(H);
    H = H * (decay ? decay[bh * N + n] : A(1)) + Sc[at];
  }
  if (final_state) final_state[bh * DE + e] = H;
}

constexpr int kScanElems = 4;

// Backward of state_scan_forward. With A_n the gradient of the state leaving chunk n (A_{N-1} = dfinal or 0):
//   Aout[n] = A_n;  dL[n] += decay[n] (H_n . A_n);  A_{n-1} = dHdir[n] + decay[n] A_n;  dH0 = dHdir[0] + decay[0] A_0
// dHdir [BH, N, DE]: the direct gradient of H_n (chunk n's queries), or null. dL: the gradient of log decay.
template <typename TS, typename A>
__global__ void state_scan_backward(const A* __restrict__ dHdir, const A* __restrict__ decay,
                                    const TS* __restrict__ Hs, const A* __restrict__ dfinal, TS* __restrict__ Aout,
                                    A* __restrict__ dL, A* __restrict__ dH0, int N, int64_t DE) {
  __shared__ A red[32];
  const int64_t bh = blockIdx.y;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kScanElems + threadIdx.x;
  A a[kScanElems];
#pragma unroll
  for (int i = 0; i < kScanElems; ++i) {
    const int64_t e = base + i * blockDim.x;
    a[i] = (dfinal && e < DE) ? dfinal[bh * DE + e] : A(0);
  }
  for (int n = N - 1; n >= 0; --n) {
    const A dec = decay ? decay[bh * N + n] : A(1);
    const int64_t row = (bh * N + n) * DE;
    A dot = 0;
#pragma unroll
    for (int i = 0; i < kScanElems; ++i) {
      const int64_t e = base + i * blockDim.x;
      if (e < DE) {
        Aout[row + e] = static_cast<TS>(a[i]);
        if (dL) dot += static_cast<A>(Hs[row + e]) * a[i];
        a[i] = (dHdir ? dHdir[row + e] : A(0)) + dec * a[i];
      }
    }
    if (dL) {
      dot = block_sum(dot, red);
      if (threadIdx.x == 0 && dot != A(0)) atomicAdd(dL + bh * N + n, dec * dot);
    }
  }
  if (dH0) {
#pragma unroll
    for (int i = 0; i < kScanElems; ++i) {
      const int64_t e = base + i * blockDim.x;
      if (e < DE) dH0[bh * DE + e] = a[i];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Combination of the in-chunk attention and the state term (SPEC §4.6), with the row factors wa, ws of
// state_scale.cuh.
// ---------------------------------------------------------------------------------------------------------------

// The chunked form's row factors of query row `row` of the compute layout [X, R, .] (R = c g rows a chunk: chunk
// row / R, token row / g): gc [X c] the in-chunk gate cumsum (null: 0), mu [X] the log-scale of the state entering
// each chunk.
struct StateRows {
  const void* gc = nullptr;  // A
  const double* mu = nullptr;
  int64_t R = 0;
  int g = 1;
};
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
                                                        A* __restrict__ ddenA, int e, int E) {
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
    A dot = 0;
    if (dr)
      for (int c = lane; c < e; c += 32) dot += static_cast<A>(dr[c]) * yr[c];
    dot = warp_sum(dot);
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
                                                          float* __restrict__ ddenA, int e) {
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
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) dot += d[j] * yv[j];
    for (int o = L >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
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
    }
  }
}

// The chunked form's gate gradient in one launch: a block a chunk x of c tokens. With Gc_j the in-chunk cumsum of the
// log gates and L = Gc_{c-1}, the terms of d loss / d Gc_j are sum_m uq[j, m] + rowdz[j, m] (the g query rows of
// token j: uq is the gradient of the state term's log-factor Gc_j + mu, through ws), - uk[j] - coldz[j]
// (kf = exp(L - Gc_j - mu')), dG0[j] (the unfused tile path's, fp64), and dL = sum_j uk[j] + dLs (kf and
// alpha = exp(mu + L - mu') hold L; the log-scales mu, mu' are constants) on j = c - 1; the log gates' gradient is
// their reverse cumsum. fp64 sums; every input may be null (zero).
template <typename A>
__global__ void __launch_bounds__(256) chunk_gate_grad_kernel(const A* __restrict__ uq, const A* __restrict__ uk,
                                                              const A* __restrict__ rowdz,
                                                              const A* __restrict__ coldz,
                                                              const double* __restrict__ dG0,
                                                              const A* __restrict__ dLs, int64_t c, int g,
                                                              A* __restrict__ out) {
  __shared__ double part[8];
  const int64_t x = blockIdx.x, base = x * c;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  auto block_scan = [&](double v, double& total) {  // inclusive prefix over threadIdx.x, and the block's total
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    if (lane == 31) part[warp] = v;
    __syncthreads();
    double before = 0;
    total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) before += part[w];
      total += part[w];
    }
    __syncthreads();
    return before + v;
  };
  double dl = 0;  // dL: every key's kf and the decay hold L
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dl += uk ? static_cast<double>(uk[base + j]) : 0.0;
  double carry;
  block_scan(dl, carry);
  carry += dLs ? static_cast<double>(dLs[x]) : 0.0;
  // reverse cumsum: thread t of step k takes position p = c - 1 - (k blockDim + t)
  for (int64_t i0 = 0; i0 < c; i0 += blockDim.x) {
    const int64_t p = c - 1 - (i0 + threadIdx.x);
    double v = 0;
    if (p >= 0) {
      for (int m = 0; m < g; ++m) {
        if (uq) v += uq[(base + p) * g + m];
        if (rowdz) v += rowdz[(base + p) * g + m];
      }
      if (uk) v -= uk[base + p];
      if (coldz) v -= coldz[base + p];
      if (dG0) v += dG0[base + p];
    }
    double total;
    const double suffix = block_scan(v, total);
    if (p >= 0) out[base + p] = static_cast<A>(carry + suffix);
    carry += total;
  }
}

// The chunked form's gate factors, stabilised (SPEC §4; power_full_path.h): per head, chunk n of c tokens, Gc the
// in-chunk inclusive cumsum of the log gates and L_n = Gc at the chunk's last token, the state entering chunk n is
// exp(mu_n) H^_n with
//   sigma_n = max_j (L_n - Gc_j) >= 0,  mu_{n+1} = max(mu_n + L_n, sigma_n)  (mu_0: the initial state's, or -inf),
//   alpha_n = exp(mu_n + L_n - mu_{n+1}) <= 1 (0 for an empty state),  kf_j = exp(L_n - Gc_j - mu_{n+1}) <= 1,
//   H^_{n+1} = alpha_n H^_n + sum_j kf_j phi(k_j) [v_j | 1]^T;
// the queries take qf = scale^p and the state's log-factor Gc_i + mu_n in the combination (state_scale.cuh). Three
// small launches: chunk_gates_kernel (per chunk: Gc, L, sigma, qf), chunk_logscale_kernel (per head: mu, alpha),
// chunk_key_factors_kernel (per chunk: kf). mu is fp64 (it grows like the gates' sum); every exp argument is formed
// from chunk-local quantities or in fp64.

// A block a chunk x of c tokens: lg [X, c] (null: no gates, all zero) -> Gc = the inclusive cumsum (when lg is given),
// L[x] = Gc[c - 1], sigma[x] = L - min_j Gc_j, and qf = sp for each of the chunk's g query rows a token. Each thread
// reads back only the Gc it wrote.
template <typename A>
__global__ void __launch_bounds__(256) chunk_gates_kernel(const A* __restrict__ lg, int64_t c, int g, A sp,
                                                          A* __restrict__ Gc, A* __restrict__ L,
                                                          A* __restrict__ sigma, A* __restrict__ qf) {
  __shared__ A part[8];
  const int64_t x = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t i = threadIdx.x; i < c * g; i += blockDim.x) qf[x * c * g + i] = sp;
  if (!lg) {
    if (threadIdx.x == 0) L[x] = sigma[x] = A(0);
    return;
  }
  const A* in = lg + x * c;
  A* G = Gc + x * c;
  A carry = 0, lo = std::numeric_limits<A>::infinity();
  for (int64_t j0 = 0; j0 < c; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    A v = j < c ? in[j] : A(0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const A u = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += u;
    }
    if (lane == 31) part[warp] = v;
    __syncthreads();
    A before = carry, total = carry;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) before += part[w];
      total += part[w];
    }
    if (j < c) {
      G[j] = before + v;
      lo = min(lo, before + v);
    }
    carry = total;
    __syncthreads();
  }
  lo = warp_min(lo);
  if (lane == 0) part[warp] = lo;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < warps; ++w) lo = min(lo, part[w]);
    L[x] = carry;
    sigma[x] = max(A(0), carry - lo);
  }
}

// A warp a head: the log-scales mu[bh, n] (the state entering chunk n; mu_final[bh] = mu_N) and alpha [X], from
// L, sigma [X] and mu_0 = mu0[bh * mu0_stride] (null: mu0_default). The recurrence mu -> max(mu + L_n, sigma_n) is
// a max-plus affine map f_n(mu) = max(mu + a, b); 32 chunks at a time, the lanes compose their maps by a warp scan
// ((a1, b1) then (a2, b2) = (a1 + a2, max(b1 + a2, b2))) and apply the prefix to the running mu. fp64 throughout.
template <typename A>
__global__ void chunk_logscale_kernel(const A* __restrict__ L, const A* __restrict__ sigma, int64_t BH, int64_t N,
                                      const double* __restrict__ mu0, int64_t mu0_stride, double mu0_default,
                                      double* __restrict__ mu, double* __restrict__ mu_final, A* __restrict__ alpha) {
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (bh >= BH) return;  // a whole warp
  const double ninf = -std::numeric_limits<double>::infinity();
  double carry = mu0 ? mu0[bh * mu0_stride] : mu0_default;
  for (int64_t n0 = 0; n0 < N; n0 += 32) {
    const int64_t n = n0 + lane, x = bh * N + n;
    const bool live = n < N;
    const double Ln = live ? static_cast<double>(L[x]) : 0.0;
    double a = Ln, b = live ? static_cast<double>(sigma[x]) : ninf;  // dead lanes: the identity map
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double ap = __shfl_up_sync(0xffffffffu, a, o), bp = __shfl_up_sync(0xffffffffu, b, o);
      if (lane >= o) {
        b = fmax(bp + a, b);
        a += ap;
      }
    }
    const double after = fmax(carry + a, b);
    double before = __shfl_up_sync(0xffffffffu, after, 1);
    if (lane == 0) before = carry;
    if (live) {
      mu[x] = before;
      alpha[x] = before == ninf ? A(0) : dev_exp(static_cast<A>(before + Ln - after));
    }
    carry = __shfl_sync(0xffffffffu, after, 31);
  }
  if (lane == 0) mu_final[bh] = carry;
}

// A block a chunk x = bh N + n: kf[x c + j] = exp(L_n - Gc_j - mu_{n+1}) (Gc null: no gates, 0).
template <typename A>
__global__ void __launch_bounds__(256) chunk_key_factors_kernel(const A* __restrict__ Gc, const A* __restrict__ L,
                                                                const double* __restrict__ mu,
                                                                const double* __restrict__ mu_final, int64_t N,
                                                                int64_t c, A* __restrict__ kf) {
  const int64_t x = blockIdx.x, n = x % N;
  const double next = n + 1 < N ? mu[x + 1] : mu_final[x / N];
  const A Lx = L[x];
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const A local = Gc ? Lx - Gc[x * c + j] : A(0);  // in [0, sigma_n]
    kf[x * c + j] = dev_exp(static_cast<A>(static_cast<double>(local) - next));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decode step (SPEC §6) without autograd: S' = g S + phi(k) v^T, s' = g s + phi(k), y = phi(q) S' / phi(q) s'.
// Blocks of kDecodeRows rows of one head's state; thread c owns column c. Partial numerators and denominators go
// to acc [BH, g, e + 1] with one atomic per block and column; decode_finish divides.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kDecodeRows = 64, kDecodeMaxGroup = 8;

template <typename A>
__global__ void decode_update(const A* __restrict__ phik, const A* __restrict__ phiq, const A* __restrict__ v,
                              const A* __restrict__ lg, const A* __restrict__ S, const A* __restrict__ s,
                              A* __restrict__ S1, A* __restrict__ s1, A* __restrict__ acc, int g, int D, int e) {
  const int64_t bh = blockIdx.y;
  const int a0 = blockIdx.x * kDecodeRows, c = threadIdx.x;
  const int a1 = a0 + kDecodeRows < D ? a0 + kDecodeRows : D;
  const A gate = lg ? dev_exp(lg[bh]) : A(1);
  const A vc = c < e ? v[bh * e + c] : A(0);
  A num[kDecodeMaxGroup], den[kDecodeMaxGroup];
#pragma unroll
  for (int j = 0; j < kDecodeMaxGroup; ++j) num[j] = den[j] = A(0);
  for (int a = a0; a < a1; ++a) {
    const A ka = phik[bh * D + a];
    A sn = 0, sa = 0;
    if (c < e) {
      const int64_t at = (bh * D + a) * e + c;
      sn = gate * S[at] + ka * vc;
      S1[at] = sn;
    }
    if (c == 0) {
      sa = gate * s[bh * D + a] + ka;
      s1[bh * D + a] = sa;
    }
#pragma unroll
    for (int j = 0; j < kDecodeMaxGroup; ++j) {
      if (j < g) {
        const A w = phiq[(bh * g + j) * D + a];
        num[j] += w * sn;
        den[j] += w * sa;
      }
    }
  }
  const int E1 = e + 1;
#pragma unroll
  for (int j = 0; j < kDecodeMaxGroup; ++j) {
    if (j < g) {
      if (c < e) atomicAdd(acc + (bh * g + j) * E1 + c, num[j]);
      if (c == 0) atomicAdd(acc + (bh * g + j) * E1 + e, den[j]);
    }
  }
}

// y[r, c] = acc[r, c] / acc[r, e] (0 where the denominator is 0)
template <typename A>
__global__ void decode_finish(const A* __restrict__ acc, A* __restrict__ y, int64_t rows, int e) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * e) return;
  const int64_t r = i / e;
  const int c = static_cast<int>(i - r * e);
  const A dn = acc[r * (e + 1) + e];
  y[i] = dn != A(0) ? acc[r * (e + 1) + c] / dn : A(0);
}

// ---------------------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------------------

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

// ATen/cuda/CUDAContext.h would need cuBLAS/cuSPARSE headers, which a bare nvcc install lacks: c10 suffices.
cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

unsigned blocks_for(int64_t work, int per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, (work + per_block - 1) / per_block));
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

// phi(x) * rs per row: x [n, d] -> [n, D] in dtype `out`.
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

// Backward of phi_forward: {dx [n, d] acc or undefined, u [n] acc or undefined}.
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

// Batched a @ b with the result in the accumulation dtype (fp32 accumulation on the tensor cores for bf16/fp16).
at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  return a.scalar_type() == acc ? at::bmm(a, b) : at::bmm(a, b, acc);
}

int64_t ext_cols(int64_t e) { return (e + 1 + 7) / 8 * 8; }

// [X, c, e] -> [X, c, E] = [v | 1 | 0]
at::Tensor values_ext(const at::Tensor& v, at::ScalarType dt) {
  const int64_t E = ext_cols(v.size(2));
  at::Tensor out = at::zeros({v.size(0), v.size(1), E}, v.options().dtype(dt));
  out.narrow(2, 0, v.size(2)).copy_(v);
  out.select(2, v.size(2)).fill_(1);
  return out;
}

// State (S [BH, D, e], s [BH, D]) <-> extended [BH, D, E], in dtype dt.
at::Tensor state_ext(const State& st, int64_t E, at::ScalarType dt) {
  if (!st.S.defined()) return at::Tensor();
  const int64_t e = st.S.size(2);
  at::Tensor out = at::zeros({st.S.size(0), st.S.size(1), E}, st.S.options().dtype(dt));
  out.narrow(2, 0, e).copy_(st.S);
  out.select(2, e).copy_(st.s);
  return out;
}
State state_split(const at::Tensor& ext, int64_t e) {
  return {ext.narrow(2, 0, e).contiguous(), ext.select(2, e).contiguous()};
}

// Gate factors of the stabilised chunked form on [X = BH * N, c] (see chunk_gates_kernel): Gc [X, c] (undefined
// without gating), alpha [X], kf [X * c], qf = scale^p per query row [X * c * g], mu [BH, N] fp64 (the log-scale of
// the state entering each chunk: Forward::logscale) and mu_final [BH] fp64.
struct ChunkGates {
  at::Tensor Gc, alpha, kf, qf, mu, mu_final;
};

// The log-scale of the state entering the sequence: mu0[bh * stride], or `fallback` for every head where mu0 is null
// (0 for a state without a log-scale, -inf for none).
struct InitialScale {
  const double* mu0 = nullptr;
  int64_t stride = 1;
  double fallback = -std::numeric_limits<double>::infinity();
  at::Tensor owner;  // what mu0 points into, when made here
};

InitialScale initial_scale(const State& st, int64_t BH) {
  InitialScale s;
  if (!st.S.defined()) return s;
  s.fallback = 0;
  if (st.logscale.defined()) {
    TORCH_CHECK(st.logscale.numel() == BH, "power_full: internal: the initial state's log-scale must be [BH], got ",
                st.logscale.sizes());
    s.owner = st.logscale.to(st.S.device(), at::kDouble).contiguous();
    s.mu0 = s.owner.data_ptr<double>();
  }
  return s;
}

ChunkGates chunk_gates(const Problem& pr, const at::Tensor& lg, const at::TensorOptions& acc_opts,
                       const InitialScale& init) {
  const int64_t N = pr.T / pr.chunk, X = pr.BH * N, c = pr.chunk, g = pr.g;
  const double sp = std::pow(pr.scale, static_cast<double>(pr.p));
  ChunkGates cg;
  const auto f64 = acc_opts.dtype(at::kDouble);
  if (lg.defined()) cg.Gc = at::empty({X, c}, acc_opts);
  cg.alpha = at::empty({X}, acc_opts);
  cg.kf = at::empty({X * c}, acc_opts);
  cg.qf = at::empty({X * c * g}, acc_opts);
  cg.mu = at::empty({pr.BH, N}, f64);
  cg.mu_final = at::empty({pr.BH}, f64);
  if (pr.BH == 0) return cg;
  at::Tensor Ls = at::empty({2, std::max<int64_t>(X, 1)}, acc_opts);  // L, sigma
  AT_DISPATCH_FLOATING_TYPES(acc_opts.dtype().toScalarType(), "power_full_chunk_gates", [&] {
    TORCH_CHECK(!lg.defined() || (acc_opts.dtype() == lg.dtype() && lg.is_contiguous()),
                "power_full: internal: chunk gates");
    scalar_t* L = Ls.data_ptr<scalar_t>();
    scalar_t* sigma = L + Ls.size(1);
    if (X > 0) {
      chunk_gates_kernel<scalar_t><<<blocks_for(X, 1), 256, 0, stream()>>>(
          ptr_or_null<scalar_t>(lg), c, static_cast<int>(g), static_cast<scalar_t>(sp),
          mut_ptr_or_null<scalar_t>(cg.Gc), L, sigma, cg.qf.data_ptr<scalar_t>());
      check_launch();
    }
    constexpr int kWarps = 4;
    chunk_logscale_kernel<scalar_t><<<blocks_for(pr.BH, kWarps), 32 * kWarps, 0, stream()>>>(
        L, sigma, pr.BH, N, init.mu0, init.stride, init.fallback, cg.mu.data_ptr<double>(),
        cg.mu_final.data_ptr<double>(), cg.alpha.data_ptr<scalar_t>());
    check_launch();
    if (X > 0) {
      chunk_key_factors_kernel<scalar_t><<<blocks_for(X, 1), 256, 0, stream()>>>(
          ptr_or_null<scalar_t>(cg.Gc), L, cg.mu.data_ptr<double>(), cg.mu_final.data_ptr<double>(), N, c,
          cg.kf.data_ptr<scalar_t>());
      check_launch();
    }
  });
  return cg;
}

// The chunked form's row factors for the combination kernels (StateRows).
StateRows state_rows(const Problem& pr, const ChunkGates& gt) {
  StateRows st;
  st.gc = gt.Gc.defined() ? gt.Gc.data_ptr() : nullptr;
  st.mu = gt.mu.data_ptr<double>();
  st.R = pr.chunk * pr.g;
  st.g = static_cast<int>(pr.g);
  return st;
}

// The log gates' gradient [BH, T] of the chunked form from its parts (chunk_gate_grad_kernel; undefined parts are 0).
at::Tensor chunk_gate_grad(const Problem& pr, const at::Tensor& uq, const at::Tensor& uk, const at::Tensor& rowdz,
                           const at::Tensor& coldz, const at::Tensor& dG0, const at::Tensor& dLs,
                           const at::TensorOptions& acc_opts) {
  const int64_t c = pr.chunk, X = pr.BH * (pr.T / c);
  at::Tensor out = at::empty({pr.BH, pr.T}, acc_opts);
  if (X == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "power_full_chunk_gate_grad", [&] {
    auto part = [&](const at::Tensor& t, int64_t n) {
      TORCH_CHECK(!t.defined() || (t.scalar_type() == out.scalar_type() && t.is_contiguous() && t.numel() == n),
                  "power_full: internal: chunk gate gradient part");
      return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
    };
    const scalar_t* q = part(uq, X * c * pr.g);
    const scalar_t* k = part(uk, X * c);
    const scalar_t* r = part(rowdz, X * c * pr.g);
    const scalar_t* cz = part(coldz, X * c);
    const scalar_t* ls = part(dLs, X);
    TORCH_CHECK(!dG0.defined() || (dG0.scalar_type() == at::kDouble && dG0.is_contiguous() && dG0.numel() == X * c),
                "power_full: internal: chunk gate gradient part");
    chunk_gate_grad_kernel<scalar_t><<<blocks_for(X, 1), 256, 0, stream()>>>(
        q, k, r, cz, dG0.defined() ? dG0.data_ptr<double>() : nullptr, ls, c, static_cast<int>(pr.g),
        out.data_ptr<scalar_t>());
  });
  check_launch();
  return out;
}

// Query tokens per tile of the quadratic form: S and dP tiles of about 256 MiB.
int64_t quadratic_tile(const Problem& pr, int64_t elem) {
  const int64_t budget = int64_t(256) << 20;
  const int64_t per_token = std::max<int64_t>(1, pr.BH * pr.g * pr.T * elem);
  int64_t tile = std::max<int64_t>(16, budget / per_token);
  tile = (tile + 15) / 16 * 16;
  return std::min<int64_t>(tile, pr.T);
}

template <typename A>
TileArgs<A> tile_args(const Problem& pr, int64_t X, int64_t R, int64_t C, int64_t tq0, const A* gq,
                      int64_t gq_stride, const A* gk, int64_t gk_stride) {
  TileArgs<A> t;
  t.X = X, t.R = static_cast<int>(R), t.C = static_cast<int>(C), t.g = static_cast<int>(pr.g), t.tq0 = tq0;
  t.p = static_cast<int>(pr.p), t.scale = static_cast<A>(pr.scale);
  t.gq = gq, t.gq_stride = gq_stride, t.gk = gk, t.gk_stride = gk_stride;
  return t;
}

TileProblem tile_problem(const Problem& pr, int64_t X, int64_t C) {
  TileProblem tp;
  tp.X = X, tp.R = C * pr.g, tp.C = C, tp.g = pr.g, tp.p = static_cast<int>(pr.p), tp.scale = pr.scale;
  return tp;
}

// Forward of the weights on a tile: S [X, R, C] acc -> {P [X, R, C] T, m [X * R], l [X * R]} (m, l into the
// given views).
template <typename T, typename A>
at::Tensor weights_forward(const TileArgs<A>& t, const at::Tensor& S, A* m, A* l) {
  at::Tensor P = at::empty(S.sizes(), S.options().dtype(c10::CppTypeToScalarType<T>::value));
  const int64_t rows = t.X * t.R;
  attention_weights_forward<T, A><<<blocks_for(rows, 8), 256, 0, stream()>>>(t, S.data_ptr<A>(), P.data_ptr<T>(), m, l);
  check_launch();
  return P;
}

// Backward of the weights on a tile: {P, dS} [X, R, C] in T.
template <typename T, typename A>
std::pair<at::Tensor, at::Tensor> weights_backward(const TileArgs<A>& t, const at::Tensor& S, const at::Tensor& dP,
                                                   const A* rf, const A* dden, const A* m, double* dgq, double* dgk) {
  const auto dt = S.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor P = at::empty(S.sizes(), dt), dS = at::empty(S.sizes(), dt);
  const dim3 grid(blocks_for(t.C, kBwdCols), blocks_for(t.R, kBwdRows), static_cast<unsigned>(t.X));
  attention_weights_backward<T, A><<<grid, 128, 0, stream()>>>(t, S.data_ptr<A>(), dP.data_ptr<A>(), rf, dden, m,
                                                                P.data_ptr<T>(), dS.data_ptr<T>(), dgq, dgk);
  check_launch();
  return {P, dS};
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

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
void quadratic_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& lg, Forward& f) {
  using A = at::opmath_type<T>;
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  const at::Tensor qr = q.view({BH, T_ * g, d});
  const at::Tensor yr = f.y.view({BH, T_ * g, e});
  if (tile_kernels_support(q.scalar_type(), d, e)) {  // fused: no t x t in memory, y = num / l in the kernel
    at::Tensor y = f.y.view({BH, T_ * g, e});
    tile_forward(tile_problem(pr, BH, T_), qr, k, v, G, y, f.rowmax, f.den, true);
    return;
  }
  const int64_t tile = quadratic_tile(pr, sizeof(A));
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor qt = qr.narrow(1, i0 * g, R), kt = k.narrow(1, 0, i1), vt = v.narrow(1, 0, i1);
    const at::Tensor S = mm_acc(qt, kt.transpose(1, 2), acc);  // [BH, R, i1]
    const A* gp = ptr_or_null<A>(G);
    const auto t = tile_args<A>(pr, BH, R, i1, i0, gp ? gp + i0 : nullptr, T_, gp, T_);
    at::Tensor m = at::empty({BH, R}, S.options()), l = at::empty({BH, R}, S.options());
    const at::Tensor P = weights_forward<T, A>(t, S, m.data_ptr<A>(), l.data_ptr<A>());
    const at::Tensor numA = mm_acc(P, vt, acc);  // [BH, R, e]
    at::Tensor yt = at::empty({BH, R, e}, S.options()), den = at::empty({BH, R}, S.options());
    combine_fwd<A>(numA, l.data_ptr<A>(), m.data_ptr<A>(), at::Tensor(), StateRows{}, yt, den.data_ptr<A>());
    yr.narrow(1, i0 * g, R).copy_(yt);
    f.den.narrow(1, i0 * g, R).copy_(den);
    f.rowmax.narrow(1, i0 * g, R).copy_(m);
  }
}

// The state side of the chunked form: phi products in one of two layouts. Degree 2 with bf16 / fp16 and
// d == e in {16, 32, 64, 128} uses the fused kernels of sympow2_cuda.h (phi made on the fly, internal layout);
// everything else writes phi in sympow.h's layout (phi_forward) and multiplies with cuBLAS.
template <typename T>
struct StateSide {
  using A = at::opmath_type<T>;
  const Problem& pr;
  bool fused;
  int64_t D;
  at::ScalarType acc, phi_dt;

  StateSide(const Problem& p, at::ScalarType dt)
      : pr(p),
        fused(p.p == 2 && sympow2_supported(dt, p.d, p.e)),
        D(fused ? sympow2_dim(p.d) : sympow_dim(p.d, p.p)),
        acc(c10::CppTypeToScalarType<A>::value),
        phi_dt(c10::CppTypeToScalarType<typename PhiType<T>::type>::value) {}

  at::Tensor phi(const at::Tensor& x3, const at::Tensor& rs) const {
    const int64_t X = x3.size(0), n = x3.size(1), d = x3.size(2);
    return phi_forward<T, A>(x3.view({X * n, d}), rs, pr.p, phi_dt).view({X, n, D});
  }
  // S = phi'(x)^T y: x3 [X, n, d], y [X, n, E] -> [X, D, E] acc (the fused side folds it into its scan kernels)
  at::Tensor states(const at::Tensor& x3, const at::Tensor& rs, const at::Tensor& y) const {
    TORCH_CHECK(!fused, "power_full: internal: the fused state side has no separate state product");
    return mm_acc(phi(x3, rs).transpose(1, 2), y, acc);
  }
  // phi'(x) H: H [X, D, E] -> [X, n, E] acc, or its first cols columns (contiguous) when cols >= 0
  at::Tensor query(const Rows& x, const at::Tensor& rs, const at::Tensor& H, int64_t cols = -1) const {
    if (fused) return sympow2_query(x, rs, H, cols);
    const at::Tensor B = mm_acc(phi(dense(x), rs), H, acc);
    return cols >= 0 ? B.narrow(2, 0, cols).contiguous() : B;
  }
  // {dx [X, n, d], u [X * n]} of phi'(x) . (y H^T)
  std::pair<at::Tensor, at::Tensor> grad(const Rows& x, const at::Tensor& rs, const Rows& y, const at::Tensor& H,
                                         bool want_dx, bool want_u) const {
    if (fused) return sympow2_grad(x, rs, y, H);
    const at::Tensor& x3 = dense(x);
    const int64_t X = x3.size(0), n = x3.size(1), d = x3.size(2);
    const at::Tensor dphi = at::bmm(dense(y), H.transpose(1, 2));  // [X, n, D]
    auto [dx, u] = phi_backward<T, A>(x3.view({X * n, d}), rs, dphi.view({X * n, D}), pr.p, want_dx, want_u);
    return {dx.defined() ? dx.view({X, n, d}) : dx, u};
  }
  // extended states [BH, D, E] between sympow.h's layout (the API's) and this side's
  at::Tensor to_internal(const at::Tensor& ext) const {
    return fused && ext.defined() ? sympow2_to_internal(ext, pr.d).contiguous() : ext;
  }
  at::Tensor to_official(const at::Tensor& ext) const {
    return fused && ext.defined() ? sympow2_to_official(ext, pr.d) : ext;
  }
  // the extended values [v | 1 | 0] for the states' products: v itself where the fused kernels make the other
  // columns (bf16 values), else built here in the compute layout
  Rows values(const Rows& v) const {
    if (fused && v.data.scalar_type() == at::kBFloat16) return v;
    if (!v.mapped()) return values_ext(v.data, phi_dt);
    const int64_t h = pr.BH / pr.b, E = ext_cols(pr.e);  // [b, t, h, e] -> [b h, T, E], rows past t zero
    at::Tensor out = at::zeros({pr.b, h, pr.T, E}, v.data.options().dtype(phi_dt));
    out.narrow(2, 0, pr.t).narrow(3, 0, pr.e).copy_(v.data.permute({0, 2, 1, 3}));
    out.select(3, pr.e).fill_(1);
    return out.view({pr.BH * (pr.T / pr.chunk), pr.chunk, E});
  }
  // the compute layout's tensor of an operand (the unfused products take no maps)
  static const at::Tensor& dense(const Rows& x) {
    TORCH_CHECK(!x.mapped(), "power_full: internal: the unfused state side takes the compute layout");
    return x.data;
  }
};

// The chunked form's row operands: the compute layout (q [X, R, d], k [X, c, d], v [X, c, e], dy like q), or with
// pr.direct the API layout [b, t, heads, .] through chunk maps (no layout copies; the last chunk's rows past t read
// as zeros).
struct ChunkRows {
  Rows q, k, v;
};
ChunkRows chunk_rows(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t c = pr.chunk, N = pr.T / c, X = pr.BH * N;
  if (!pr.direct) return {q.view({X, c * pr.g, pr.d}), k.view({X, c, pr.d}), v.view({X, c, pr.e})};
  const int64_t h = pr.BH / pr.b;
  return {{q, RowMap::api(pr.t, h, pr.g, pr.d, N, c)}, {k, RowMap::api(pr.t, h, 1, pr.d, N, c)},
          {v, RowMap::api(pr.t, h, 1, pr.e, N, c)}};
}
Rows chunk_dy(const Problem& pr, const at::Tensor& dy) {
  const int64_t c = pr.chunk, N = pr.T / c;
  if (!pr.direct) return dy.view({pr.BH * N, c * pr.g, pr.e});
  return {dy, RowMap::api(pr.t, pr.BH / pr.b, pr.g, pr.e, N, c)};
}
// A scan's operand: the compute layout one head a block ([BH, N rows, w]); a mapped one as it is.
Rows per_head(const Rows& x, int64_t BH) { return x.mapped() ? x : Rows(x.data.view({BH, -1, x.data.size(-1)})); }

// The tile kernels' problem for chunks: the API layout's sizes with pr.direct (TileProblem::chunks).
TileProblem chunk_tiles(const Problem& pr) {
  const int64_t N = pr.T / pr.chunk;
  TileProblem tp = tile_problem(pr, pr.BH * N, pr.chunk);
  if (pr.direct) tp.b = pr.b, tp.chunks = N, tp.t = pr.t;
  return tp;
}

template <typename T>
void chunked_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& lg, Forward& f, bool save, const State& initial, bool want_final) {
  using A = at::opmath_type<T>;
  using TS = typename PhiType<T>::type;
  const StateSide<T> side(pr, q.scalar_type());
  const auto acc = side.acc;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = side.D, E = ext_cols(e);
  const auto ao = q.options().dtype(acc);
  const ChunkGates gt = chunk_gates(pr, lg, ao, initial_scale(initial, BH));
  const ChunkRows io = chunk_rows(pr, q, k, v);

  // in-chunk attention
  at::Tensor l = at::empty({X * R}, ao), numA;  // numA [X, R, e]
  if (tile_kernels_support(q.scalar_type(), d, e)) {
    numA = at::empty({X, R, e}, ao);
    tile_forward(chunk_tiles(pr), q, k, v, gt.Gc, numA, f.rowmax, l);
  } else {
    const at::Tensor &q3 = side.dense(io.q), &k3 = side.dense(io.k), &v3 = side.dense(io.v);
    const at::Tensor S = mm_acc(q3, k3.transpose(1, 2), acc);  // [X, R, c]
    const A* Gc = ptr_or_null<A>(gt.Gc);
    const auto t = tile_args<A>(pr, X, R, c, 0, Gc, c, Gc, c);
    const at::Tensor P = weights_forward<T, A>(t, S, f.rowmax.data_ptr<A>(), l.data_ptr<A>());
    numA = mm_acc(P, v3, acc);
  }

  // chunk states and the gated prefix
  at::Tensor Hs = at::empty({BH, N, D, E}, q.options().dtype(side.phi_dt));
  const at::Tensor H0 = side.to_internal(state_ext(initial, E, acc));
  at::Tensor fin = want_final ? at::empty({BH, D, E}, ao) : at::Tensor();
  if (side.fused) {  // one pass, no per-chunk fp32 states
    sympow2_scan_forward(per_head(io.k, BH), gt.kf, per_head(side.values(io.v), BH), gt.alpha, H0, N, Hs, fin);
  } else {
    const at::Tensor Sc = side.states(side.dense(io.k), gt.kf, values_ext(side.dense(io.v), side.phi_dt));  // [X, D, E]
    state_scan_forward<TS, A><<<dim3(blocks_for(D * E, 256), static_cast<unsigned>(BH)), 256, 0, stream()>>>(
        Sc.data_ptr<A>(), gt.alpha.data_ptr<A>(), ptr_or_null<A>(H0), Hs.data_ptr<TS>(), mut_ptr_or_null<A>(fin),
        static_cast<int>(N), D * E);
    check_launch();
  }

  // queries against the state entering their chunk, then the combination
  if (side.fused) {  // the combination in the query kernel's epilogue (and y in the API layout, when it can)
    at::Tensor y3 = f.y.view({X, R, e});
    RowMap map;
    if (pr.api) {
      const int64_t h = BH / pr.b;
      f.y_api = at::empty({pr.b, pr.t, h * g, e}, q.options());
      map = RowMap::api(pr.t, h, g, e, N, c);
    }
    sympow2_query_combine(io.q, gt.qf, Hs.view({X, D, E}), numA, l, f.rowmax, gt.Gc, gt.mu, y3, f.den, f.y_api,
                          map);
  } else {
    const at::Tensor B = side.query(io.q, gt.qf, Hs.view({X, D, E}));  // [X, R, E]
    combine_fwd<A>(numA, l.data_ptr<A>(), f.rowmax.data_ptr<A>(), B, state_rows(pr, gt), f.y.view({X, R, e}),
                   f.den.data_ptr<A>());
  }

  if (save) {
    f.states = Hs;
    f.logscale = gt.mu;
  }
  if (want_final) {
    const State st = state_split(side.to_official(fin), e);
    f.final_state = st.S;
    f.final_norm = st.s;
    f.final_logscale = gt.mu_final;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------------

// dy: [rows, e] in the compute layout, or through its map in blocks of R rows (rows = blocks x R; R = 0: the chunk
// map's c g)
template <typename T, typename A>
void combine_bwd(const Rows& dy, const at::Tensor& y, const A* den, const A* m, bool state, const StateRows& st,
                 at::Tensor dB, at::Tensor dnumA, A* rf, A* ddenA, int64_t rows, int64_t e, int64_t E, int64_t R = 0) {
  using TS = typename PhiType<T>::type;
  const RowMap map = dy.mapped() ? dy.map : RowMap::dense(rows, e);
  if (R == 0) R = dy.mapped() ? dy.map.c * dy.map.g : rows;
  if (rows == 0) return;
  TORCH_CHECK(R > 0 && rows % R == 0, "power_full: internal: combination rows");
  const unsigned grid = blocks_for(rows / R * ((R + kCombineRows - 1) / kCombineRows), 1);
  constexpr bool k16 = sizeof(T) == 2 && std::is_same<TS, at::BFloat16>::value && std::is_same<A, float>::value;
  if constexpr (k16) {
    const bool fits = (e == 16 || e == 32 || e == 64 || e == 128) && (!dB.defined() || E == e + 8) &&
                      !dnumA.defined() && reinterpret_cast<uintptr_t>(dy.data.data_ptr()) % 16 == 0;
    if (fits) {
      auto kernel = combine_backward16<std::is_same<T, at::BFloat16>::value>;
      kernel<<<grid, 256, 0, stream()>>>(static_cast<const mma::u16*>(dy.data.data_ptr()), map, R, y.data_ptr<A>(),
                                         den, m, state, st,
                                         static_cast<mma::u16*>(dB.defined() ? dB.data_ptr() : nullptr),
                                         rf, ddenA, static_cast<int>(e));
      check_launch();
      return;
    }
  }
  combine_backward<T, TS, A><<<grid, 256, 0, stream()>>>(
      dy.data.data_ptr<T>(), map, R, y.data_ptr<A>(), den, m, state, st, mut_ptr_or_null<TS>(dB),
      mut_ptr_or_null<T>(dnumA), rf, ddenA, static_cast<int>(e), static_cast<int>(E));
  check_launch();
}

template <typename T>
void quadratic_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                        Grads& gr) {
  using A = at::opmath_type<T>;
  const auto acc = c10::CppTypeToScalarType<A>::value;
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, d = pr.d, e = pr.e;
  const bool gates = lg.defined() && needs.g;
  const auto ao = q.options().dtype(acc);
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  const at::Tensor qr = q.view({BH, T_ * g, d}), yr = f.y.view({BH, T_ * g, e}), dyr = dy.view({BH, T_ * g, e});
  if (tile_kernels_support(q.scalar_type(), d, e)) {  // fused: no t x t in memory
    const int64_t R = T_ * g;
    at::Tensor ddenA = at::empty({BH * R}, ao), rf = at::empty({BH * R}, ao);  // (the tile kernels take dy and rf)
    combine_bwd<T, A>(dyr, yr, f.den.data_ptr<A>(), f.rowmax.data_ptr<A>(), false, StateRows{}, at::Tensor(),
                      at::Tensor(),
                      rf.data_ptr<A>(), ddenA.data_ptr<A>(), BH * R, e, 0);
    at::Tensor dqf = needs.q ? at::empty({BH, R, d}, ao) : at::Tensor();
    at::Tensor dkf = needs.k || needs.v ? at::empty({BH, T_, d}, ao) : at::Tensor();
    at::Tensor dvf = needs.k || needs.v ? at::empty({BH, T_, e}, ao) : at::Tensor();
    at::Tensor rowdz = gates ? at::empty({BH * R}, ao) : at::Tensor();
    at::Tensor coldz = gates ? at::empty({BH * T_}, ao) : at::Tensor();
    tile_backward(tile_problem(pr, BH, T_), qr, k, v, G, dyr, f.rowmax, rf, ddenA, dqf, dkf, dvf, rowdz, coldz,
                  false);
    // fp32: the caller's layout copy converts (power_full_path.h)
    if (needs.q) gr.q = dqf.view({BH, T_, g, d});
    if (needs.k) gr.k = dkf;
    if (needs.v) gr.v = dvf;
    if (gates) {
      const at::Tensor dGt = rowdz.view({BH, T_, g}).sum(2).to(at::kDouble) - coldz.view({BH, T_}).to(at::kDouble);
      gr.lg = dGt.flip({1}).cumsum(1).flip({1}).to(lg.scalar_type());
    }
    return;
  }
  at::Tensor dG = gates ? at::zeros({BH, T_}, ao.dtype(at::kDouble)) : at::Tensor();
  at::Tensor dq = needs.q ? at::empty({BH, T_ * g, d}, ao) : at::Tensor();
  at::Tensor dk = needs.k ? at::zeros({BH, T_, d}, ao) : at::Tensor();
  at::Tensor dv = needs.v ? at::zeros({BH, T_, e}, ao) : at::Tensor();
  const int64_t tile = quadratic_tile(pr, 2 * sizeof(A));
  for (int64_t i0 = 0; i0 < T_; i0 += tile) {
    const int64_t i1 = std::min(T_, i0 + tile), R = (i1 - i0) * g;
    const at::Tensor qt = qr.narrow(1, i0 * g, R), kt = k.narrow(1, 0, i1), vt = v.narrow(1, 0, i1);
    const at::Tensor den = f.den.narrow(1, i0 * g, R).contiguous(), m = f.rowmax.narrow(1, i0 * g, R).contiguous();
    at::Tensor dnumA = at::empty({BH, R, e}, q.options()), ddenA = at::empty({BH, R}, ao), rf = at::empty({BH, R}, ao);
    const at::Tensor dyt = dyr.narrow(1, i0 * g, R).contiguous();
    combine_bwd<T, A>(dyt, yr.narrow(1, i0 * g, R).contiguous(), den.data_ptr<A>(), m.data_ptr<A>(), false, StateRows{},
                      at::Tensor(), dnumA, rf.data_ptr<A>(), ddenA.data_ptr<A>(), BH * R, e, 0);
    const at::Tensor S = mm_acc(qt, kt.transpose(1, 2), acc);
    const at::Tensor dP = mm_acc(dyt, vt.transpose(1, 2), acc);
    double* gp = mut_ptr_or_null<double>(dG);
    const A* Gp = ptr_or_null<A>(G);
    const auto t = tile_args<A>(pr, BH, R, i1, i0, Gp ? Gp + i0 : nullptr, T_, Gp, T_);
    auto [P, dS] = weights_backward<T, A>(t, S, dP, rf.data_ptr<A>(), ddenA.data_ptr<A>(), m.data_ptr<A>(),
                                          gp ? gp + i0 : nullptr, gp);
    if (needs.v) dv.narrow(1, 0, i1).add_(mm_acc(P.transpose(1, 2), dnumA, acc));
    if (needs.q) dq.narrow(1, i0 * g, R).copy_(mm_acc(dS, kt, acc));
    if (needs.k) dk.narrow(1, 0, i1).add_(mm_acc(dS.transpose(1, 2), qt, acc));
  }
  if (needs.q) gr.q = dq.view({BH, T_, g, d}).to(q.scalar_type());
  if (needs.k) gr.k = dk.to(k.scalar_type());
  if (needs.v) gr.v = dv.to(v.scalar_type());
  if (gates) gr.lg = dG.flip({1}).cumsum(1).flip({1}).to(lg.scalar_type());
}

template <typename T>
void chunked_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& lg, const Forward& f, const at::Tensor& dy, const Needs& needs,
                      const State& d_final, Grads& gr) {
  using A = at::opmath_type<T>;
  using TS = typename PhiType<T>::type;
  const StateSide<T> side(pr, q.scalar_type());
  const auto acc = side.acc;
  const int64_t BH = pr.BH, c = pr.chunk, N = pr.T / c, X = BH * N, g = pr.g, R = c * g, d = pr.d, e = pr.e;
  const int64_t D = side.D, E = ext_cols(e);
  const auto ao = q.options().dtype(acc);
  const bool gates = lg.defined() && needs.g;
  const bool key_side = needs.k || needs.v || gates;
  const bool carry = key_side || needs.state;
  // the forward's log-scales again, from its mu_0 (the same kernels: the same values)
  TORCH_CHECK(f.logscale.defined() && f.logscale.scalar_type() == at::kDouble && f.logscale.is_contiguous() &&
                  f.logscale.numel() == BH * N,
              "power_full: internal: the chunked backward needs the forward's logscale [BH, N] fp64");
  InitialScale init;
  init.mu0 = f.logscale.data_ptr<double>();
  init.stride = N;
  const ChunkGates gt = chunk_gates(pr, lg, ao, init);
  const ChunkRows io = chunk_rows(pr, q, k, v);
  const Rows dyr = chunk_dy(pr, dy);
  const at::Tensor Hs = f.states.view({X, D, E});

  // y = num / den
  at::Tensor dB = at::empty({X, R, E}, q.options().dtype(side.phi_dt));
  const bool tiles = tile_kernels_support(q.scalar_type(), d, e);  // the tile kernels take dy and rf, not dnumA
  at::Tensor dnumA = tiles ? at::Tensor() : at::empty({X, R, e}, q.options());
  at::Tensor ddenA = at::empty({X * R}, ao), rf = at::empty({X * R}, ao);
  combine_bwd<T, A>(dyr, f.y, f.den.data_ptr<A>(), f.rowmax.data_ptr<A>(), true, state_rows(pr, gt), dB, dnumA,
                    rf.data_ptr<A>(), ddenA.data_ptr<A>(), X * R, e, E);
  // the gate gradient's parts (chunk_gate_grad): the state side's uq, uk, dLs; the tiles' rowdz, coldz (or dGc)
  at::Tensor dLs = gates ? at::zeros({X}, ao) : at::Tensor();
  at::Tensor uq_g, uk_g, rowdz, coldz, dGc;
  at::Tensor dq, dk, dv;

  // queries against the state: B = phi(Q') H_n
  if (needs.q || gates) {
    auto [dxq, uq] = side.grad(io.q, gt.qf, dB, Hs, needs.q, gates);
    if (needs.q) dq = dxq;
    if (gates) uq_g = uq;
  }

  // the gated prefix, backwards: A_n = d loss / d (state leaving chunk n)
  at::Tensor dH0;
  if (carry) {
    at::Tensor An = at::empty({BH, N, D, E}, q.options().dtype(side.phi_dt));
    const at::Tensor dfin = side.to_internal(state_ext(d_final, E, acc));
    if (needs.state) dH0 = at::empty({BH, D, E}, ao);
    if (side.fused) {  // the queries' direct term phi(Q')^T dB folded into the reverse pass
      sympow2_scan_backward(per_head(io.q, BH), gt.qf, dB.view({BH, N * R, E}), gt.alpha, f.states, dfin, N, An,
                            dLs, dH0);
    } else {
      const at::Tensor dHdir = side.states(side.dense(io.q), gt.qf, dB);  // [X, D, E]
      state_scan_backward<TS, A>
          <<<dim3(blocks_for(D * E, 256 * kScanElems), static_cast<unsigned>(BH)), 256, 0, stream()>>>(
              dHdir.data_ptr<A>(), gt.alpha.data_ptr<A>(), f.states.data_ptr<TS>(), ptr_or_null<A>(dfin),
              An.data_ptr<TS>(), mut_ptr_or_null<A>(dLs), mut_ptr_or_null<A>(dH0), static_cast<int>(N), D * E);
      check_launch();
    }

    // the states' inputs: S_ext = phi(K')^T [V | 1 | 0]
    if (key_side) {
      const at::Tensor A3 = An.view({X, D, E});
      if (needs.v) dv = side.query(io.k, gt.kf, A3, e);  // [X, c, e]
      if (needs.k || gates) {
        auto [dxk, uk] = side.grad(io.k, gt.kf, side.values(io.v), A3, needs.k, gates);
        if (needs.k) dk = dxk;
        if (gates) uk_g = uk;
      }
    }
  }

  // in-chunk attention
  if (tiles) {
    // the state side has made every gradient that is needed (fp32, [X, rows, width]); the tile kernels add theirs,
    // and with pr.direct write the sums in the API layout and the input dtype (no conversion copies)
    if (gates) rowdz = at::empty({X * R}, ao), coldz = at::empty({X * c}, ao);
    if (pr.direct) {
      const int64_t h = BH / pr.b;
      const auto o = q.options();
      at::Tensor oq = needs.q ? at::empty({pr.b, pr.t, h * g, d}, o) : at::Tensor();
      at::Tensor ok = needs.k || needs.v ? at::empty({pr.b, pr.t, h, d}, o) : at::Tensor();
      at::Tensor ov = needs.k || needs.v ? at::empty({pr.b, pr.t, h, e}, o) : at::Tensor();
      tile_backward(chunk_tiles(pr), q, k, v, gt.Gc, dy, f.rowmax, rf, ddenA, dq, dk, dv, rowdz, coldz, true, oq, ok,
                    ov);
      dq = oq, dk = needs.k ? ok : at::Tensor(), dv = needs.v ? ov : at::Tensor();
      gr.api = true;
    } else {
      if (key_side) {
        if (!dk.defined()) dk = at::zeros({X, c, d}, ao);
        if (!dv.defined()) dv = at::zeros({X, c, e}, ao);
      }
      if (needs.q && !dq.defined()) dq = at::zeros({X, R, d}, ao);
      tile_backward(chunk_tiles(pr), q, k, v, gt.Gc, dy, f.rowmax, rf, ddenA, dq, dk, dv, rowdz, coldz, true);
    }
  } else {
    if (gates) dGc = at::zeros({X, c}, ao.dtype(at::kDouble));  // gate gradients in fp64 (attention_weights_backward)
    const at::Tensor &q3 = side.dense(io.q), &k3 = side.dense(io.k), &v3 = side.dense(io.v);
    const at::Tensor S = mm_acc(q3, k3.transpose(1, 2), acc);
    const at::Tensor dP = mm_acc(side.dense(dyr), v3.transpose(1, 2), acc);
    const A* Gc = ptr_or_null<A>(gt.Gc);
    double* dg = mut_ptr_or_null<double>(dGc);
    const auto t = tile_args<A>(pr, X, R, c, 0, Gc, c, Gc, c);
    auto [P, dS] = weights_backward<T, A>(t, S, dP, rf.data_ptr<A>(), ddenA.data_ptr<A>(), f.rowmax.data_ptr<A>(), dg,
                                          dg);
    if (needs.v) {
      const at::Tensor part = mm_acc(P.transpose(1, 2), dnumA, acc);
      dv = dv.defined() ? dv + part : part;
    }
    if (needs.q) dq = dq.defined() ? dq + mm_acc(dS, k3, acc) : mm_acc(dS, k3, acc);
    if (needs.k) {
      const at::Tensor part = mm_acc(dS.transpose(1, 2), q3, acc);
      dk = dk.defined() ? dk + part : part;
    }
  }

  if (gr.api) {  // already in the API layout and dtype
    gr.q = dq, gr.k = dk, gr.v = dv;
  } else {  // fp32: the caller's layout copy converts (power_full_path.h)
    if (needs.q) gr.q = dq.reshape({BH, pr.T, g, d});
    if (needs.k) gr.k = dk.reshape({BH, pr.T, d});
    if (needs.v) gr.v = dv.reshape({BH, pr.T, e});
  }
  if (gates) gr.lg = chunk_gate_grad(pr, uq_g, uk_g, rowdz, coldz, dGc, dLs, ao).to(lg.scalar_type());
  if (needs.state) {
    const State st = state_split(side.to_official(dH0), e);
    gr.initial.S = st.S;
    gr.initial.s = st.s;
  }
}

// The quadratic form straight from the API layout (Problem::direct): y in the input dtype there (Forward::y_api)
// and, when `save`, in fp32 in the compute layout for the backward's row terms (see combine_backward).
Forward quadratic_forward_direct(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& lg, bool save) {
  const auto ao = q.options().dtype(at::kFloat);
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, e = pr.e;
  Forward f;
  f.den = at::empty({BH, T_ * g}, ao);
  f.rowmax = at::empty({BH, T_ * g}, ao);
  if (save) f.y = at::empty({BH, T_, g, e}, ao);
  f.y_api = at::empty({pr.b, pr.t, BH / pr.b * g, e}, q.options());
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  TileProblem tp = tile_problem(pr, BH, T_);
  tp.b = pr.b;
  tile_forward(tp, q, k, v, G, f.y, f.rowmax, f.den, true, f.y_api);
  return f;
}

Grads quadratic_backward_direct(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs) {
  TORCH_CHECK(saved.y.defined(), "power_full: internal: the direct quadratic backward needs the saved y");
  const auto ao = q.options().dtype(at::kFloat);
  const int64_t BH = pr.BH, T_ = pr.T, g = pr.g, R = T_ * g;
  const bool gates = lg.defined() && needs.g;
  const at::Tensor G = lg.defined() ? at::cumsum(lg, 1).contiguous() : at::Tensor();
  TileProblem tp = tile_problem(pr, BH, T_);
  tp.b = pr.b;
  // the row terms: the combination's backward without states (rf = 1 / l, dd = -(dy . y) / l), dy through the
  // quadratic form's map (blocks are heads of R rows)
  at::Tensor rf = at::empty({BH * R}, ao), dd = at::empty({BH * R}, ao);
  const Rows dyr{dy, RowMap::api(T_, BH / pr.b, g, pr.e)};
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "power_full_row_terms", [&] {
    combine_bwd<scalar_t, float>(dyr, saved.y, saved.den.data_ptr<float>(), nullptr, false, StateRows{}, at::Tensor(),
                                 at::Tensor(), rf.data_ptr<float>(), dd.data_ptr<float>(), BH * R, pr.e, 0, R);
  });
  at::Tensor dq = needs.q ? at::empty_like(q) : at::Tensor();
  at::Tensor dk = needs.k || needs.v ? at::empty_like(k) : at::Tensor();  // (made together)
  at::Tensor dv = needs.k || needs.v ? at::empty_like(v) : at::Tensor();
  at::Tensor rowdz = gates ? at::empty({BH * R}, ao) : at::Tensor();
  at::Tensor coldz = gates ? at::empty({BH * T_}, ao) : at::Tensor();
  tile_backward(tp, q, k, v, G, dy, saved.rowmax, rf, dd, dq, dk, dv, rowdz, coldz, false);
  Grads gr;
  gr.api = true;
  if (needs.q) gr.q = dq;
  if (needs.k) gr.k = dk;
  if (needs.v) gr.v = dv;
  if (gates) {
    const at::Tensor dGt = rowdz.view({BH, T_, g}).sum(2).to(at::kDouble) - coldz.view({BH, T_}).to(at::kDouble);
    gr.lg = dGt.flip({1}).cumsum(1).flip({1}).to(lg.scalar_type());
  }
  return gr;
}

}  // namespace

bool direct_supported(const Problem& pr, at::ScalarType dtype) {
  return tile_kernels_support(dtype, pr.d, pr.e) &&
         (pr.chunk == 0 || (pr.p == 2 && sympow2_supported(dtype, pr.d, pr.e)));
}

std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t BH = k.size(0), g = q.size(1), d = q.size(2), e = v.size(1), D = S.size(1);
  TORCH_CHECK(g <= kDecodeMaxGroup && e <= 1024 && p <= kMaxDegree, "power_full: decode_step on CUDA takes g <= ",
              kDecodeMaxGroup, ", e <= 1024, deg <= ", kMaxDegree);
  at::Tensor S1 = at::empty_like(S), s1 = at::empty_like(s), y = at::empty({BH, g, e}, q.options());
  at::Tensor acc = at::zeros({BH, g, e + 1}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_decode_step_cuda", [&] {
    using A = scalar_t;
    const at::Tensor phik = phi_forward<A, A>(k, at::Tensor(), p, q.scalar_type());                  // [BH, D]
    const at::Tensor phiq = phi_forward<A, A>(q.reshape({BH * g, d}), at::Tensor(), p, q.scalar_type());  // [BH g, D]
    const dim3 grid(blocks_for(D, kDecodeRows), static_cast<unsigned>(BH));
    const int threads = static_cast<int>((e + 31) / 32 * 32);
    decode_update<A><<<grid, threads, 0, stream()>>>(phik.data_ptr<A>(), phiq.data_ptr<A>(), v.data_ptr<A>(),
                                                    ptr_or_null<A>(lg), S.data_ptr<A>(), s.data_ptr<A>(),
                                                    S1.data_ptr<A>(), s1.data_ptr<A>(), acc.data_ptr<A>(),
                                                    static_cast<int>(g), static_cast<int>(D), static_cast<int>(e));
    check_launch();
    decode_finish<A><<<blocks_for(BH * g * e, 256), 256, 0, stream()>>>(acc.data_ptr<A>(), y.data_ptr<A>(), BH * g, static_cast<int>(e));
    check_launch();
  });
  return {y, S1, s1};
}

Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& lg, bool save_for_backward, const State& initial, bool want_final) {
  TORCH_CHECK(pr.chunk > 0 || (!initial.S.defined() && !want_final), "power_full: states need the chunked path");
  TORCH_CHECK(pr.p <= kMaxDegree, "power_full: the CUDA path supports deg <= ", kMaxDegree, ", got ", pr.p);
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(!pr.direct || direct_supported(pr, q.scalar_type()), "power_full: internal: no direct path here");
  if (pr.direct && pr.chunk == 0) return quadratic_forward_direct(pr, q, k, v, lg, save_for_backward);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Forward f;
  f.y = at::empty({pr.BH, pr.T, pr.g, pr.e}, q.options().dtype(acc));  // fp32 (see combine_backward)
  f.den = at::empty({pr.BH, pr.T * pr.g}, q.options().dtype(acc));
  f.rowmax = at::empty({pr.BH, pr.T * pr.g}, q.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "power_full_cuda_forward", [&] {
    if (pr.chunk > 0) {
      chunked_forward<scalar_t>(pr, q, k, v, lg, f, save_for_backward, initial, want_final);
    } else {
      quadratic_forward<scalar_t>(pr, q, k, v, lg, f);
    }
  });
  return f;
}

Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final) {
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(!pr.direct || direct_supported(pr, q.scalar_type()), "power_full: internal: no direct path here");
  if (pr.direct && pr.chunk == 0) return quadratic_backward_direct(pr, q, k, v, lg, saved, dy.contiguous(), needs);
  Grads gr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "power_full_cuda_backward", [&] {
    if (pr.chunk > 0) {
      chunked_backward<scalar_t>(pr, q, k, v, lg, saved, dy.contiguous(), needs, d_final, gr);
    } else {
      quadratic_backward<scalar_t>(pr, q, k, v, lg, saved, dy.contiguous(), needs, gr);
    }
  });
  return gr;
}

double device_memory_limit_bytes(const at::Tensor& q) {
  const c10::cuda::CUDAGuard guard(q.device());
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(q.device().index());
  const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const double cached = static_cast<double>(stats.reserved_bytes[agg].current - stats.allocated_bytes[agg].current);
  return static_cast<double>(free_bytes) + std::max(0.0, cached);
}

bool decode_supported(int64_t g, int64_t e, int64_t p) { return g <= kDecodeMaxGroup && e <= 1024 && p <= kMaxDegree; }

Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying) {
  // amplifying (a log gate > 0): the weight then sits on a few distant keys, whose phi products do not average their
  // rounding out (H200 harness, log gates +5 a token: bf16 states gave y errors of order 1; fp32 compute still left
  // the gate gradients of 16-bit inputs at 0.1-0.27): fp64, both forms
  const bool fp64 = input == at::kDouble || p % 2 == 1 || amplifying;
  const bool small_chunk = chunk > 0 && chunk < 16;
  const bool wide = p >= 3 || small_chunk || input == at::kFloat;
  const at::ScalarType compute = fp64 ? at::kDouble : (wide ? at::kFloat : input);
  return {compute, fp64 ? at::kDouble : at::kFloat, fp64 ? at::kDouble : at::kFloat};
}

double state_bytes(const Problem& pr, at::ScalarType compute, bool grad) {
  const double X = static_cast<double>(pr.BH) * (pr.T / pr.chunk), E = static_cast<double>(pr.e + 8);
  if (pr.p == 2 && sympow2_supported(compute, pr.d, pr.e)) {
    // the fused degree-2 path: bf16 states entering each chunk in the internal layout, in backward their gradients;
    // no fp32 per-chunk states, no phi in memory
    return X * static_cast<double>(sympow2_dim(pr.d)) * E * 2 * (grad ? 2 : 1);
  }
  // all chunks at once: the states entering each chunk (compute dtype) and their fp32 sums, phi of every key and
  // query row, twice over in backward
  const double D = static_cast<double>(sympow_dim(pr.d, pr.p));
  const double elem = compute == at::kDouble ? 8 : 2, acc = compute == at::kDouble ? 8 : 4;
  return X * D * E * (elem + 2 * acc) + X * D * pr.chunk * (2.0 * pr.g + 1) * elem * (grad ? 2 : 1);
}

}  // namespace cuda
}  // namespace power_attention
