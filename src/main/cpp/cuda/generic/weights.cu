// weights.cu: the in-chunk / in-tile attention weights of the generic path (generic.h), forward and backward, on
// scores made by cuBLAS.
#include "cuda/generic/generic.h"

#include "cuda/common/device_math.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/traits.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace power_attention {
namespace cuda {
namespace {

// log-weight of one score (SPEC §3 without epsilons): p log|scale s| + gi - gj; -inf for s == 0.
template <typename A>
__device__ __forceinline__ A log_weight(A s, A scale, int p, A gi, A gj) {
  const A a = fabs(scale * s);
  return a > A(0) ? A(p) * dev_log(a) + gi - gj : -std::numeric_limits<A>::infinity();
}

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
                                           const A* __restrict__ own, const A* __restrict__ m, T* __restrict__ P,
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
    const A mr = m[row], dd = dden[row], f = rf[row], ow = own[row];
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
        const A dz = (j == vis - 1 ? ow : dP[at] * f + dd) * w;  // the own key: own_key_term (attention_tile.h)
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

}  // namespace

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

template <typename T, typename A>
at::Tensor weights_forward(const TileArgs<A>& t, const at::Tensor& S, A* m, A* l) {
  at::Tensor P = at::empty(S.sizes(), S.options().dtype(c10::CppTypeToScalarType<T>::value));
  const int64_t rows = t.X * t.R;
  attention_weights_forward<T, A><<<blocks_for(rows, 8), 256, 0, stream()>>>(t, S.data_ptr<A>(), P.data_ptr<T>(), m, l);
  check_launch();
  return P;
}

template <typename T, typename A>
std::pair<at::Tensor, at::Tensor> weights_backward(const TileArgs<A>& t, const at::Tensor& S, const at::Tensor& dP,
                                                   const A* rf, const A* dden, const A* own, const A* m, double* dgq,
                                                   double* dgk) {
  const auto dt = S.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor P = at::empty(S.sizes(), dt), dS = at::empty(S.sizes(), dt);
  const dim3 grid(blocks_for(t.C, kBwdCols), blocks_for(t.R, kBwdRows), static_cast<unsigned>(t.X));
  attention_weights_backward<T, A><<<grid, 128, 0, stream()>>>(t, S.data_ptr<A>(), dP.data_ptr<A>(), rf, dden, own, m,
                                                                P.data_ptr<T>(), dS.data_ptr<T>(), dgq, dgk);
  check_launch();
  return {P, dS};
}

at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  return a.scalar_type() == acc ? at::bmm(a, b) : at::bmm(a, b, acc);
}

template TileArgs<float> tile_args<float>(const Problem&, int64_t, int64_t, int64_t, int64_t, const float*, int64_t,
                                          const float*, int64_t);
template TileArgs<double> tile_args<double>(const Problem&, int64_t, int64_t, int64_t, int64_t, const double*, int64_t,
                                            const double*, int64_t);
#define POWER_ATTENTION_INSTANTIATE(T, A)                                                                       \
  template at::Tensor weights_forward<T, A>(const TileArgs<A>&, const at::Tensor&, A*, A*);                   \
  template std::pair<at::Tensor, at::Tensor> weights_backward<T, A>(const TileArgs<A>&, const at::Tensor&,    \
                                                                    const at::Tensor&, const A*, const A*,    \
                                                                    const A*, const A*, double*, double*);
POWER_ATTENTION_FOR_EACH_COMPUTE_TYPE(POWER_ATTENTION_INSTANTIATE)
#undef POWER_ATTENTION_INSTANTIATE

}  // namespace cuda
}  // namespace power_attention
