// decode.cu: the fused decode step (decode.h): the query rows brought into range, phi of q and k by the generic path's
// kernel, one kernel that updates the state and accumulates the query's products, one division; the new state and y
// checked finite on the way (one flag).
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

// qn[r, :] = q[r, :] 2^-floor(log2 max|q[r, :]|): each query row at max-abs [1, 2) (y does not depend on a row's
// scale; phi(qn) . S then stays finite for any |q|); a row of zeros or with a NaN as it is, a row with an inf times 0
// (magnitudes.h's pow2_factor). A warp a row.
template <typename A>
__global__ void decode_scale_queries(const A* __restrict__ q, A* __restrict__ qn, int64_t rows, int d) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // the whole warp: r is the same in every lane
  A m = 0;
  for (int i = lane; i < d; i += 32) {
    const A a = fabs(q[r * d + i]);
    m = (a > m || a != a) ? a : m;  // a NaN stays
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A a = __shfl_xor_sync(0xffffffffu, m, o);
    m = (a > m || a != a) ? a : m;
  }
  A f = 1;
  if (m > 0) {
    if (isinf(m)) {
      f = 0;
    } else {
      int ex = 0;
      frexp(m, &ex);  // m = fr 2^ex, fr in [0.5, 1): floor(log2 m) = ex - 1
      f = ldexp(A(1), 1 - ex);
    }
  }
  for (int i = lane; i < d; i += 32) qn[r * d + i] = q[r * d + i] * f;
}

template <typename A>
__global__ void decode_update(const A* __restrict__ phik, const A* __restrict__ phiq, const A* __restrict__ v,
                              const A* __restrict__ lg, const A* __restrict__ S, const A* __restrict__ s,
                              A* __restrict__ S1, A* __restrict__ s1, A* __restrict__ acc, int* __restrict__ bad,
                              int g, int D, int e) {
  const int64_t bh = blockIdx.y;
  const int a0 = blockIdx.x * kDecodeRows, c = threadIdx.x;
  const int a1 = a0 + kDecodeRows < D ? a0 + kDecodeRows : D;
  const A gate = lg ? dev_exp(lg[bh]) : A(1);
  const A vc = c < e ? v[bh * e + c] : A(0);
  A num[kDecodeMaxGroup], den[kDecodeMaxGroup];
#pragma unroll
  for (int j = 0; j < kDecodeMaxGroup; ++j) num[j] = den[j] = A(0);
  bool finite = true;  // of the new state's entries this thread writes
  for (int a = a0; a < a1; ++a) {
    const A ka = phik[bh * D + a];
    A sn = 0, sa = 0;
    if (c < e) {
      const int64_t at = (bh * D + a) * e + c;
      sn = gate * S[at] + ka * vc;
      S1[at] = sn;
      finite = finite && isfinite(sn);
    }
    if (c == 0) {
      sa = gate * s[bh * D + a] + ka;
      s1[bh * D + a] = sa;
      finite = finite && isfinite(sa);
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
  if (!finite) atomicOr(bad, 1);
  const int E1 = e + 1;
#pragma unroll
  for (int j = 0; j < kDecodeMaxGroup; ++j) {
    if (j < g) {
      if (c < e) atomicAdd(acc + (bh * g + j) * E1 + c, num[j]);
      if (c == 0) atomicAdd(acc + (bh * g + j) * E1 + e, den[j]);
    }
  }
}

// y[r, c] = acc[r, c] / acc[r, e] (0 where the denominator is 0); *bad = 1 where y is not finite
template <typename A>
__global__ void decode_finish(const A* __restrict__ acc, A* __restrict__ y, int* __restrict__ bad, int64_t rows,
                              int e) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * e) return;
  const int64_t r = i / e;
  const int c = static_cast<int>(i - r * e);
  const A dn = acc[r * (e + 1) + e];
  const A yi = dn != A(0) ? acc[r * (e + 1) + c] / dn : A(0);
  y[i] = yi;
  if (!isfinite(yi)) atomicOr(bad, 1);
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
  at::Tensor bad = at::zeros({}, q.options().dtype(at::kInt));
  at::Tensor qn = at::empty({BH * g, d}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "power_decode_step_cuda", [&] {
    using A = scalar_t;
    const int64_t rows = BH * g;
    decode_scale_queries<A><<<blocks_for(rows * 32, 256), 256, 0, stream()>>>(q.data_ptr<A>(), qn.data_ptr<A>(), rows,
                                                                              static_cast<int>(d));
    check_launch();
    const at::Tensor phik = phi_forward<A, A>(k, at::Tensor(), p, q.scalar_type());             // [BH, D]
    const at::Tensor phiq = phi_forward<A, A>(qn, at::Tensor(), p, q.scalar_type());            // [BH g, D]
    const dim3 grid(blocks_for(D, kDecodeRows), static_cast<unsigned>(BH));
    const int threads = static_cast<int>((e + 31) / 32 * 32);
    decode_update<A><<<grid, threads, 0, stream()>>>(phik.data_ptr<A>(), phiq.data_ptr<A>(), v.data_ptr<A>(),
                                                    ptr_or_null<A>(lg), S.data_ptr<A>(), s.data_ptr<A>(),
                                                    S1.data_ptr<A>(), s1.data_ptr<A>(), acc.data_ptr<A>(),
                                                    bad.data_ptr<int>(), static_cast<int>(g), static_cast<int>(D),
                                                    static_cast<int>(e));
    check_launch();
    decode_finish<A><<<blocks_for(rows * e, 256), 256, 0, stream()>>>(acc.data_ptr<A>(), y.data_ptr<A>(),
                                                                      bad.data_ptr<int>(), rows, static_cast<int>(e));
    check_launch();
  });
  return {y, S1, s1, bad.eq(0)};
}

}  // namespace decode
}  // namespace cuda
}  // namespace power_attention
