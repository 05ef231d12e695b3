// phi_products_cpu.h: the chunked form's state products of degree 2 in fp32 without phi in memory and without a
// BLAS: phi of a block of 48 features for up to 128 rows is built in L1 (with sympow_forward's operations, so its
// values are the same to the bit) and consumed at once by register-blocked AVX-512 micro-kernels (6 features or rows
// x 64 columns of accumulators, the other operand's rows loaded as vectors; AVX2: 6 x 16, gemm_f32_avx2). The state is augmented, A = [H | h]
// [D, e + 1] (chunked_cpu.cpp): its first e columns run in the micro-kernels, the normaliser column h as dot products
// over the rows. Sums run in a fixed order (rows, then features, in index order), independent of threads.
#pragma once

#include <cstdint>

namespace power_attention {
namespace cpu {

/// Whether the kernels below run on this machine: AVX-512 or AVX2 with FMA (simd_level() >= 1; AVX2 runs the products
/// in gemm_f32_avx2, attention_tile_cpu.h) and not switched off with POWER_ATTENTION_CPU_FUSED=0 (which keeps the
/// materialised phi and ATen's matrix products, for comparison).
bool phi_products_available();

/// Rows of phi: phi_f(x_i) scaled by scale[i] (null: 1), x [n, d] with row stride ldx, coef the layout's
/// coefficients [D] (sympow_coefficient_tensor), degree 2.
struct PhiRows {
  const float* x;
  int64_t ldx;
  int64_t n, d;
  const float* scale;
  const float* coef;
};

/// A[f, j] = beta A[f, j] + sum_i phi_f(x_i) R[i, j] for j < e, and, with norm, the normaliser column
/// A[f, e] = beta A[f, e] + sum_i phi_f(x_i) r_i (r null: every r_i 1; else r_i = r[i * ldr_norm]).  A [D, lda],
/// R [n, ldr]. beta 0 overwrites A (whatever it held). With A0 [D, lda] given, beta scales A0 instead of A:
/// A = beta A0 + ..., A0 left as it is (A's old values unread; A0 may be A).
void phi_outer(const PhiRows& x, const float* R, int64_t ldr, const float* r, int64_t ldr_norm, int64_t e, bool norm,
               float beta, float* A, int64_t lda, const float* A0 = nullptr);

/// Out[i, j] = sum_f phi_f(x_i) A[f, j] for j < e and, with norm, Out[i, e] = sum_f phi_f(x_i) A[f, e].
/// A [D, lda], Out [n, ldo] (overwritten).
void phi_apply(const PhiRows& x, const float* A, int64_t lda, int64_t e, bool norm, float* Out, int64_t ldo);

/// The backward of phi through a product with the state: with G[i, f] = sum_{j < e} R[i, j] M[f, j] + r_i M[f, e]
/// (r null: every r_i 1; else r_i = r[i * ldr_norm]),  dx[i] = scale_i J_phi(x_i)^T G[i]  ([n, d], null: skipped)
/// and  ds[i] = G[i] . phi(x_i) without the scale  ([n], null: skipped).  M [D, ldm] (e + 1 columns), R [n, ldr].
void phi_grad(const PhiRows& x, const float* M, int64_t ldm, const float* R, int64_t ldr, const float* r,
              int64_t ldr_norm, int64_t e, float* dx, float* ds);

}  // namespace cpu
}  // namespace power_attention
