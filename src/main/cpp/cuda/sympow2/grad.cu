// grad.cu: the degree-2 gradient through phi against a state (sympow2.h: sympow2_grad).
#include "cuda/common/launch.cuh"
#include "cuda/common/sm90_select.h"
#include "cuda/common/static_switch.h"
#include "cuda/sympow2/grad_sm90.h"
#include "cuda/sympow2/sympow2_kernel.cuh"

#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace {

// dx_r = d/dx_r [phi'(x_r) . dphi_r], dphi_r = H y_r. Per group (A, a) and block B >= A, the 16 x 16 tile
// dphi[rows, (A, a, B, .)] comes from the tensor cores (k = E), then, with w = c_AB rs x[16 A + a]:
//   dx[16 B + b] += w dphi        (the x[16 B + b] factor of each feature)
//   dx[16 A + a] += c_AB rs sum_b dphi x[16 B + b]   (the x[16 A + a] factor)
template <bool BFX, int D, int E, bool ONES = false>
__global__ void __launch_bounds__(kRowThreads, 2) sympow2_grad_kernel(const u16* __restrict__ x, RowMap xm,
                                                                   const float* __restrict__ rs,
                                                                   const u16* __restrict__ y, RowMap ym,
                                                                   const u16* __restrict__ H, float* __restrict__ dx,
                                                                   float* __restrict__ u, int64_t X, int64_t n) {
  constexpr int NB = D / 16, D2 = 256 * NB * (NB + 1) / 2, SD = D + 8, SH = row_sh<D, E>(), EK = (E + 15) / 16;
  constexpr int MT = row_tiles<D>(), ROWS = rows_per_cta<D>();
  extern __shared__ __align__(16) unsigned char smem[];
  u16* sX = reinterpret_cast<u16*>(smem);
  u16* sH = sX + ROWS * SD;
  u16* sY = sH + kGroupBufs * 16 * NB * SH;
  const int warp = threadIdx.x >> 5, tg = threadIdx.x & 3;
  const int64_t parts = (n + ROWS - 1) / ROWS;
  const int64_t bx = blockIdx.x / parts, r0 = (blockIdx.x % parts) * ROWS;
  const u16* Hb = H + bx * D2 * E;
  zero_tail<E, SH>(sH, kGroupBufs * 16 * NB);
  zero_tail<E, SH>(sY, ROWS);
  load_rows_mapped<D, ROWS, kRowThreads, SD>(sX, x + xm.base(bx), xm, r0, xm.rows(bx, n));
  constexpr int YW = ONES ? E - 8 : E;  // columns of y in memory
  load_rows_mapped<YW, ROWS, kRowThreads, SH>(sY, y + ym.base(bx), ym, r0, ym.rows(bx, n));
  if constexpr (ONES) ones_column<YW, ROWS, SH, kRowThreads>(sY, n - r0);
#pragma unroll
  for (int i = 0; i < kGroupBufs - 1; ++i) prefetch_group<D, E>(sH, Hb, i);
  const LaneRows<MT> L = lane_rows<MT>(rs, bx, r0, n);
  u32 yf[MT][EK][4];
  float g[MT][D / 8][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) zero(g[i]);
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
          for (int kk = 0; kk < EK; ++kk) ldsm4(yf[i][kk], at_a(sY, SH, warp * 16 * MT + 16 * i, kk * 16));
      }
      const u16* cH = sH + (gi % kGroupBufs) * 16 * NB * SH;
      float w[MT][2], p[MT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          w[i][h] = L.scale[i][h] * to_float<BFX>(sX[L.row[i][h] * SD + 16 * A + a]);
          p[i][h] = 0.f;
        }
#pragma unroll
      for (int B = A; B < NB; ++B) {
        const float c = B == A ? 1.f : kSqrt2;
        const int f0 = (B - A) * 16;
        float dp[MT][2][4];
#pragma unroll
        for (int i = 0; i < MT; ++i) zero(dp[i]);
#pragma unroll
        for (int kk = 0; kk < EK; ++kk) {
          u32 r[4];
          ldsm4(r, at_b(cH, SH, f0, kk * 16));
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            mma16816<true>(dp[i][0], yf[i][kk], r[0], r[1]);
            mma16816<true>(dp[i][1], yf[i][kk], r[2], r[3]);
          }
        }
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          const float ca = c * w[i][0], cb = c * w[i][1];
          const u16* xa_row = sX + L.row[i][0] * SD;
          const u16* xb_row = sX + L.row[i][1] * SD;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            g[i][2 * B + h][0] += ca * dp[i][h][0];
            g[i][2 * B + h][1] += ca * dp[i][h][1];
            g[i][2 * B + h][2] += cb * dp[i][h][2];
            g[i][2 * B + h][3] += cb * dp[i][h][3];
            const int col = 16 * B + 8 * h + 2 * tg;  // x of this lane's features, from shared memory
            const float2 xa = unpack2<BFX>(*reinterpret_cast<const u32*>(xa_row + col));
            const float2 xb = unpack2<BFX>(*reinterpret_cast<const u32*>(xb_row + col));
            p[i][0] += c * (dp[i][h][0] * xa.x + dp[i][h][1] * xa.y);
            p[i][1] += c * (dp[i][h][2] * xb.x + dp[i][h][3] * xb.y);
          }
        }
      }
      // column 16 A + a: tile 2 A + a / 8, held by lane tg = (a % 8) / 2, element a % 2
      // Register arrays take compile-time indices only, and a branch per element would be merged into one store
      // through a computed address (local memory): add zeros everywhere else instead.
      const bool mine = tg == ((a & 7) >> 1), odd = a & 1;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const float pa = quad_sum(p[i][0]) * L.scale[i][0], pb = quad_sum(p[i][1]) * L.scale[i][1];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const bool here = mine && (a >> 3) == h;
          g[i][2 * A + h][0] += here && !odd ? pa : 0.f;
          g[i][2 * A + h][1] += here && odd ? pa : 0.f;
          g[i][2 * A + h][2] += here && !odd ? pb : 0.f;
          g[i][2 * A + h][3] += here && odd ? pb : 0.f;
        }
      }
      __syncthreads();
    }
  });
  float* ob = dx + bx * n * D;
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = r0 + L.row[i][h];
      const u16* xrow = sX + L.row[i][h] * SD;
      float uu = 0.f;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        const float g0 = g[i][nt][2 * h], g1 = g[i][nt][2 * h + 1];
        if (r < n) *reinterpret_cast<float2*>(ob + r * D + nt * 8 + 2 * tg) = make_float2(g0, g1);
        const float2 xv = unpack2<BFX>(*reinterpret_cast<const u32*>(xrow + nt * 8 + 2 * tg));
        uu += xv.x * g0 + xv.y * g1;
      }
      uu = quad_sum(uu) * 0.5f;  // Euler: x . grad of a degree-2 form is twice the form
      if (u && tg == 0 && r < n) u[bx * n + r] = uu;
    }
}

}  // namespace
}  // namespace sympow2

using namespace sympow2;  // NOLINT: this file's kernels and helpers

std::pair<at::Tensor, at::Tensor> sympow2_grad(const Operand& x, const at::Tensor& rs, const Operand& y,
                                               const at::Tensor& H) {
  const Blocks ox = check_x(x, rs);
  const int64_t X = ox.X, n = ox.n, d = x.data.size(-1), D2 = sympow2_dim(d), E = H.size(-1);
  check_bf16(H, X, D2, E, "H");
  TORCH_CHECK(E == d + 8, "power_full: degree-2 kernels take E = e + 8");
  const Blocks oy = check_y(y, ox, E);
  const bool ones = y.data.size(-1) == d;  // [y | 1 | 0] made in the kernel
  at::Tensor dx = at::empty({X, n, d}, H.options().dtype(at::kFloat));
  at::Tensor u = at::empty({X * n}, H.options().dtype(at::kFloat));
  if (X == 0 || n == 0) return {dx, u};
  const c10::cuda::CUDAGuard guard(H.device());
  const KernelSet set = kernel_set(H.device().index());
  if (set != KernelSet::sm80 && sm90::grad_supported(d)) {  // wgmma (grad_sm90.cuh)
    sm90::grad_launch(x.data.scalar_type() == at::kBFloat16, d, ones, four_warpgroups(set), bits(x.data), ox.map,
                      fptr(rs), bits(y.data), oy.map, bits(H), dx.data_ptr<float>(), u.data_ptr<float>(), X, n,
                      c10::cuda::getCurrentCUDAStream());
    return {dx, u};
  }
  switch_half_dim(x.data.scalar_type() == at::kBFloat16, d, "degree-2 kernel", [&](auto bf, auto dd) {
    constexpr bool BF = decltype(bf)::value;
    constexpr int D = decltype(dd)::value, Ee = D + 8;
    auto kernel = ones ? sympow2_grad_kernel<BF, D, Ee, true> : sympow2_grad_kernel<BF, D, Ee, false>;
    const size_t smem = row_smem<D, Ee>(true);
    allow_smem(kernel, smem);
    const int64_t parts = (n + rows_per_cta<D>() - 1) / rows_per_cta<D>();
    kernel<<<grid_of(X * parts), kRowThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
        bits(x.data), ox.map, fptr(rs), bits(y.data), oy.map, bits(H), dx.data_ptr<float>(), u.data_ptr<float>(), X,
        n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, u};
}
}  // namespace cuda
}  // namespace power_attention
