// chunk_gates.cu: the chunked form's gate factors, stabilised, and its gate gradient (rows.h).
#include "cuda/rows/rows.h"

#include "cuda/common/device_math.cuh"
#include "cuda/common/launch.cuh"
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

// The chunked form's gate factors, stabilised (SPEC §4; path.h, Forward): per head, chunk n of c tokens, Gc the
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

}  // namespace

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
}  // namespace cuda
}  // namespace power_attention
