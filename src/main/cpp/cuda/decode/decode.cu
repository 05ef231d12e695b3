// decode.cu: the fused decode step (decode.h): phi of q and k by the generic path's kernel, one kernel that updates
// the state and accumulates the query's products, one division.
#include "cuda/decode/decode.h"

#include "cuda/common/device_math.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/generic/generic.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <vector>

namespace power_attention {
namespace cuda {
namespace decode {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Decode step (SPEC §6) without autograd: S' = g S + phi(k) v^T, s' = g s + phi(k), y = phi(q) S' / phi(q) s'.
// Blocks of kDecodeRows rows of one head's state; thread c owns column c. Partial numerators and denominators go
// to acc [BH, g, e + 1] with one atomic per block and column; decode_finish divides.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kDecodeRows = 64;

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

}  // namespace

std::vector<at::Tensor> step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lg,
                             const at::Tensor& S, const at::Tensor& s, int64_t p) {
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t BH = k.size(0), g = q.size(1), d = q.size(2), e = v.size(1), D = S.size(1);
  TORCH_CHECK(supported(g, e, p), "power_full: internal: decode_step on CUDA takes g <= ", kDecodeMaxGroup,
              ", e <= ", kDecodeMaxWidth, ", deg <= ", kMaxDegree);
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

}  // namespace decode
}  // namespace cuda
}  // namespace power_attention
