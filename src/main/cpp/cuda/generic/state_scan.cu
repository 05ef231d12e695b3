// state_scan.cu: the gated prefix over chunks of the generic path (generic.h), one thread per state element.
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

// ---------------------------------------------------------------------------------------------------------------
// The gated prefix over chunks (SPEC §4), extended layout, one thread per state element.
// ---------------------------------------------------------------------------------------------------------------

// torch: H_0 = H0 (or 0); Hs[n] = H_n; H_{n+1} = decay[n] H_n + Sc[n]; final = H_N.
//   Sc [BH, N, DE], decay [BH, N] or null (1), H0 [BH, DE] or null, Hs [BH, N, DE], final [BH, DE] or null
// (the chunked form passes the scaled states: decay = alpha and Sc made with the key factors kf, chunk_gates_kernel)
template <typename TS, typename A>
__global__ void state_scan_forward_kernel(const A* __restrict__ Sc, const A* __restrict__ decay, const A* __restrict__ H0,
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
__global__ void state_scan_backward_kernel(const A* __restrict__ dHdir, const A* __restrict__ decay,
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

}  // namespace

template <typename TS, typename A>
void state_scan_forward(const at::Tensor& Sc, const at::Tensor& decay, const at::Tensor& H0, at::Tensor& Hs,
                        at::Tensor& final_state, int64_t BH, int64_t N, int64_t DE) {
  state_scan_forward_kernel<TS, A><<<dim3(blocks_for(DE, 256), static_cast<unsigned>(BH)), 256, 0, stream()>>>(
      Sc.data_ptr<A>(), ptr_or_null<A>(decay), ptr_or_null<A>(H0), Hs.data_ptr<TS>(), mut_ptr_or_null<A>(final_state),
      static_cast<int>(N), DE);
  check_launch();
}

template <typename TS, typename A>
void state_scan_backward(const at::Tensor& dHdir, const at::Tensor& decay, const at::Tensor& Hs,
                         const at::Tensor& dfinal, at::Tensor& Aout, at::Tensor& dL, at::Tensor& dH0, int64_t BH,
                         int64_t N, int64_t DE) {
  state_scan_backward_kernel<TS, A><<<dim3(blocks_for(DE, 256 * kScanElems), static_cast<unsigned>(BH)), 256, 0, stream()>>>(
      ptr_or_null<A>(dHdir), ptr_or_null<A>(decay), Hs.data_ptr<TS>(), ptr_or_null<A>(dfinal), Aout.data_ptr<TS>(),
      mut_ptr_or_null<A>(dL), mut_ptr_or_null<A>(dH0), static_cast<int>(N), DE);
  check_launch();
}

#define POWER_ATTENTION_INSTANTIATE(TS, A)                                                                      \
  template void state_scan_forward<TS, A>(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,    \
                                          at::Tensor&, int64_t, int64_t, int64_t);                                 \
  template void state_scan_backward<TS, A>(const at::Tensor&, const at::Tensor&, const at::Tensor&,                \
                                           const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, int64_t,      \
                                           int64_t, int64_t);
POWER_ATTENTION_INSTANTIATE(double, double)
POWER_ATTENTION_INSTANTIATE(float, float)
POWER_ATTENTION_INSTANTIATE(at::BFloat16, float)
#undef POWER_ATTENTION_INSTANTIATE

}  // namespace cuda
}  // namespace power_attention
