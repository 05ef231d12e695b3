// query.cu: the degree-2 queries against a state, B = phi'(x) H, alone or with the chunked form's combination in
// the epilogue (sympow2.h: sympow2_query, sympow2_query_combine): the sm_80 kernel (mma.sync) and the launch, which
// takes the sm_90a kernel (query_sm90.cuh) where cuda/common/sm90_select.h says the device runs it.
#include "cuda/common/launch.cuh"
#include "cuda/common/sm90_select.h"
#include "cuda/common/static_switch.h"
#include "cuda/sympow2/query_epilogue.cuh"
#include "cuda/sympow2/query_sm90.h"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace {

template <bool BFX, int D, int E>
__global__ void __launch_bounds__(kRowThreads, 2) sympow2_query_kernel(const u16* __restrict__ x, RowMap xm,
                                                                    const float* __restrict__ rs,
                                                                    const u16* __restrict__ H,
                                                                    float* __restrict__ out, int64_t X, int64_t n,
                                                                    int cols, Combine cmb) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, NT = E / 8, SD = D + 8, SH = row_sh<D, E>();
  constexpr int MT = row_tiles<D>(), ROWS = rows_per_cta<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + ROWS * SD;
  const int warp = threadIdx.x >> 5;
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * D2 * E;
  load_rows_mapped<D, ROWS, kRowThreads, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
#pragma unroll
  for (int i = 0; i < kGroupBufs - 1; ++i) prefetch_group<D, E>(sH, Hb, i);
  const LaneRows<MT> L = lane_rows<MT>(rs, bx, r0, n);
  u32 xf[MT][NB][4];
  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) zero(acc[i]);
  static_for<NB>([&](auto A_) {
    constexpr int A = decltype(A_)::value;
    for (int a = 0; a < 16; ++a) {
      const int gi = 16 * A + a;
      prefetch_group<D, E>(sH, Hb, gi + kGroupBufs - 1);
      cp_async_wait<kGroupBufs - 1>();
      __syncthreads();
      if (A == 0 && a == 0) {
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int B = 0; B < NB; ++B) ldsm4(xf[i][B], at_a(sX, SD, warp * 16 * MT + 16 * i, 16 * B));
      }
      const u16* cH = sH + (gi % kGroupBufs) * 16 * NB * SH;
      float w[MT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) w[i][h] = L.scale[i][h] * to_float<BFX>(sX[L.row[i][h] * SD + 16 * A + a]);
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        u32 af[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const float ca = c * w[i][0], cb = c * w[i][1];
          af[i][0] = scale2<BFX>(xf[i][B][0], ca, ca);
          af[i][1] = scale2<BFX>(xf[i][B][1], cb, cb);
          af[i][2] = scale2<BFX>(xf[i][B][2], ca, ca);
          af[i][3] = scale2<BFX>(xf[i][B][3], cb, cb);
        }
        const int f0 = (B - A) * 16;
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          u32 r[4];
          ldsm4t(r, at_a(cH, SH, f0, np * 16));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma16816<true>(acc[i][2 * np], af[i], r[0], r[1]);
            mma16816<true>(acc[i][2 * np + 1], af[i], r[2], r[3]);
          }
        }
        if constexpr (NT % 2 == 1) {
          u32 r[2];
          ldsm2t(r, at_a(cH, SH, f0, (NT - 1) * 8));
#pragma unroll
          for (int i = 0; i < MT; ++i) mma16816<true>(acc[i][NT - 1], af[i], r[0], r[1]);
        }
      }
      __syncthreads();
    }
  });
  query_epilogue<BFX, E, MT>(acc, L.row, bx, r0, n, out, cols, cmb);
}

void query_launch(const Operand& x, const Blocks& ox, const at::Tensor& rs, const at::Tensor& H, at::Tensor& out,
                  int64_t cols, const Combine& cmb) {
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1);
  if (X == 0 || n == 0) return;
  const c10::cuda::CUDAGuard guard(x.data.device());
  const KernelSet set = kernel_set(x.data.device().index());
  if (set != KernelSet::sm80 && sm90::query_supported(d)) {  // wgmma (query_sm90.cuh)
    sm90::query_launch(x.data.scalar_type() == at::kBFloat16, d, four_warpgroups(set), bits(x.data), ox.map,
                       fptr(rs), bits(H), out.defined() ? out.data_ptr<float>() : nullptr, X, n,
                       static_cast<int>(cols), cmb, c10::cuda::getCurrentCUDAStream());
    return;
  }
  switch_half_dim(x.data.scalar_type() == at::kBFloat16, d, "degree-2 kernel", [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = sympow2_query_kernel<BF, D, Ee>;
    const size_t smem = row_smem<D, Ee>(false);
    allow_smem(kernel, smem);
    const int64_t parts = (n + rows_per_cta<D>() - 1) / rows_per_cta<D>();
    kernel<<<grid_of(X * parts), kRowThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(H), out.defined() ? out.data_ptr<float>() : nullptr, X, n,
        static_cast<int>(cols), cmb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace sympow2

using namespace sympow2;  // NOLINT: this file's kernels and helpers

at::Tensor sympow2_query(const Operand& x, const at::Tensor& rs, const at::Tensor& H, int64_t cols) {
  const Blocks ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  if (cols < 0) cols = E;
  TORCH_CHECK(cols > 0 && cols <= E && cols % 8 == 0, "power_full: degree-2 query: bad column count ", cols);
  at::Tensor out = at::empty({X, n, cols}, H.options().dtype(at::kFloat));
  query_launch(x, ox, rs, H, out, cols, Combine{});
  return out;
}

void sympow2_query_combine(const Operand& x, const at::Tensor& rs, const at::Tensor& H, const at::Tensor& numA,
                           const at::Tensor& l, const at::Tensor& m, const at::Tensor& gc, const at::Tensor& mu,
                           at::Tensor& y, at::Tensor& den, const Operand& y_out) {
  const Blocks ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1), e = d;
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  auto f32 = [&](const at::Tensor& t, int64_t numel, const char* what) {
    TORCH_CHECK(t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel &&
                    t.device() == H.device(),
                "power_full: degree-2 query: bad ", what);
  };
  f32(numA, X * n * e, "numA");
  f32(l, X * n, "l");
  f32(m, X * n, "m");
  f32(y, X * n * e, "y");
  f32(den, X * n, "den");
  TORCH_CHECK(mu.defined() && mu.scalar_type() == at::kDouble && mu.is_contiguous() && mu.numel() == X &&
                  mu.device() == H.device(),
              "power_full: degree-2 query: bad mu");
  const int64_t tokens = gc.defined() ? gc.numel() / std::max<int64_t>(X, 1) : 0;
  TORCH_CHECK(!gc.defined() || (gc.scalar_type() == at::kFloat && gc.is_contiguous() && gc.numel() == X * tokens &&
                                tokens > 0 && n % tokens == 0 && gc.device() == H.device()),
              "power_full: degree-2 query: bad gc");
  Combine c;
  c.gc = gc.defined() ? gc.data_ptr<float>() : nullptr;
  c.mu = mu.data_ptr<double>();
  c.g = gc.defined() ? static_cast<int>(n / tokens) : 1;
  c.numA = numA.data_ptr<float>(), c.l = l.data_ptr<float>(), c.m = m.data_ptr<float>();
  c.y = y.data_ptr<float>(), c.den = den.data_ptr<float>();
  if (y_out.defined()) {
    TORCH_CHECK(y_out.data.scalar_type() == x.data.scalar_type() && y_out.data.is_contiguous() &&
                    y_out.data.device() == H.device() && y_out.mapped() && y_out.map.w == e,
                "power_full: degree-2 query: bad y output");
    c.yo = static_cast<u16*>(y_out.data.data_ptr());
    c.map = y_out.map;
  }
  at::Tensor none;
  query_launch(x, ox, rs, H, none, E, c);
}
}  // namespace cuda
}  // namespace power_attention
