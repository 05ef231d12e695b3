// attention_tile_cpu.h: the in-chunk (or in-tile) attention of SPEC §3 on the CPU, the elementwise part fused
// per row (tile_weights_*; the products around it are the caller's), and the quadratic form of one head in fp32 with
// its products in AVX-512 or AVX2 micro-kernels (quadratic_*_f32).
//
// A tile is one head's query rows r in [0, R) (token tq0 + r / g, g rows per token) against keys j in [0, C)
// (token tk0 + j); row r sees the keys with tk0 + j <= tq0 + r / g (causal).
#pragma once

#include <cstdint>

namespace power_attention {
namespace cpu {

template <typename T>
struct TileShape {
  int64_t R = 0, C = 0, g = 1;   // rows, keys, rows per token
  int64_t tq0 = 0, tk0 = 0;      // token of row 0, token of key 0
  int64_t p = 2;                 // degree
  T scale = 1;                   // s = scale * (Q K^T)
  const double* gq = nullptr;    // [R / g] gate cumsum at each query token, or null (no gating)
  const double* gk = nullptr;    // [C] gate cumsum at each key, or null
  // Optional (fp32 at even degrees, gated), for tiles whose keys start at G's first: gk's factors of the linear form
  // (kf [C rounded up to 16] = exp(kbmin_b - gk_j), kbmin [C / 16] the minimum of each 16 keys) and its prefix
  // minimum kpmin [C]; null: computed per call.
  const float* kf = nullptr;
  const double* kbmin = nullptr;
  const double* kpmin = nullptr;

  int64_t visible(int64_t r) const {  // keys [0, visible(r)) are causal for row r
    const int64_t v = tq0 + r / g - tk0 + 1;
    return v < 0 ? 0 : (v > C ? C : v);
  }
};

/// The log-weights of a row are z_ij = p log|s_ij| + (G_i - G_j) - gref_i, taken relative to the row's gate
/// reference gref_i = G_i - min_{j visible} G_j (fp64; 0 without gates or with gates <= 0): the gate differences that
/// matter are then small numbers, exact in fp32 whatever the size of G (log gates of tens of nats a token).
/// gref [R] is written here (the chunked form's combination needs it).
template <typename T>
void tile_gate_reference(const TileShape<T>& sh, double* gref);

/// In place: S [R, C] = Q K^T (unscaled) becomes P [R, C] (P_ij = exp(z_ij - m_i) * sign(s_ij)^p, 0 where masked);
/// writes m [R] (row max of z, 0 for a row with no visible nonzero weight) and l [R] = sum_j P_ij.
template <typename T>
void tile_weights_forward(const TileShape<T>& sh, T* S, T* m, T* l);

/// Backward of tile_weights_forward with m held constant (any m: the chunked form passes its shared row scale).
/// In: S [R, C] = Q K^T (unscaled), dP [R, C] the gradient of P = exp(z - m). Out, in place: S becomes P, dP becomes
/// dS (the gradient of the unscaled Q K^T, scale folded in); when dgq/dgk are given, adds sum_j dz_ij into
/// dgq[r / g] and -sum_i dz_ij into dgk[j] (dz = dP * P).
template <typename T>
void tile_weights_backward(const TileShape<T>& sh, T* S, T* dP, const T* m, T* dgq, T* dgk);

/// One key/value head of the quadratic form in fp32 at an even degree, for quadratic_forward/backward_f32: q
/// [T, g, d] (g rows per token), k [T, d], v [T, e], each token's rows at a stride (ldq, ldk, ldv; 0: contiguous,
/// g d, d, e), the g rows of a token d apart, and with g > 1 the token stride g d; y and dy [T, g, e] likewise
/// (ldy, lddy); G [T] the gate cumsum (fp64) or null; query tiles of `tile` tokens.
struct QuadraticHead {
  int64_t T = 0, g = 1, d = 0, e = 0, p = 2, tile = 128;
  float scale = 1;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  const double* G = nullptr;
  int64_t ldq = 0, ldk = 0, ldv = 0, ldy = 0, lddy = 0;
};

/// Whether quadratic_forward/backward_f32 run on this machine for degree p: AVX-512 or AVX2 with FMA (simd_level()
/// >= 1, not switched off with POWER_ATTENTION_CPU_FUSED=0) and p even.
bool quadratic_kernels_available(int64_t p);

/// Query tokens per tile for quadratic_forward/backward_f32 on this machine: 64 with AVX-512, 32 with AVX2 (the AVX2
/// kernels read a tile's rows once per 16 key columns instead of 64, and a tile's weights [32, t] stay in a 512 KiB L2
/// at t = 2048: 32 took 7% less CPU time than 64 there, fwd+bwd).
int64_t quadratic_kernel_tile_tokens();

/// The quadratic form of one head with the tile's products in register-blocked micro-kernels (no BLAS): y (rows at
/// QuadraticHead's ldy), m and l [T g] as tile_weights_forward's (y = P V / l).
void quadratic_forward_f32(const QuadraticHead& h, float* y, float* m, float* l);

/// Where quadratic_backward_f32 writes the gradients (null: not wanted): dq's rows of token i at dq + i ldq (its g
/// rows d apart), dk's row j at dk + j ldk, dv's at dv + j ldv.
struct QuadraticGrads {
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
  int64_t ldq = 0, ldk = 0, ldv = 0;
};

/// Its backward from y, dy (rows at ldy, lddy), m, l: dq, dk, dv written (QuadraticGrads); with dG [T] given, adds
/// the gradient of G to it.
void quadratic_backward_f32(const QuadraticHead& h, const float* y, const float* dy, const float* m, const float* l,
                            const QuadraticGrads& gr, float* dG);

/// The score gradients' factor at each row's own key. A row's factor at key j is t_ij = dy_i . (v_j - y_i) / l_i; the
/// backwards make it as dP_ij = (dy_i . v_j) / l_i - (dy_i . y_i) / l_i (one product over the tile), whose two terms
/// leave rounding noise where they cancel: where one key carries a row's whole weight, y_i = v_j exactly (the first
/// token, whose only key is itself; rows whose earlier keys' gates vanish), and that noise, times the score
/// gradient's p / s_ij, would reach dq and dk unbounded as s_ij nears zero. For the row's own key, which is the one
/// key in both cases, own_key_term writes own[r] = dy . (v - y) / l (the difference taken first: exact there) over
/// dP's entry. dP [rows][ld] holds the query rows r (g a token, token-major) of a tile against the keys of the same
/// tokens (row r's own key is column r / g).
template <typename T>
inline void own_key_term(T* dP, int64_t ld, int64_t rows, int64_t g, const T* own) {
  for (int64_t r = 0; r < rows; ++r) dP[r * ld + r / g] = own[r];
}

/// C [M, N] = A B on AVX2 machines (acc: C += A B; bias [M] given: C = A B + bias[i] on row i), A(i, k) = A[i ai +
/// k ak] (a row-major matrix or its transpose), B [K, N] with row stride ldb, C with row stride ldc: the tile
/// products' micro-kernels (6 x 16 accumulators), sums over k in index order. Also the state products' on AVX2
/// machines (phi_products_cpu.cpp). Needs simd_level() >= 1.
void gemm_f32_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B,
                   int64_t ldb, float* C, int64_t ldc, bool acc, const float* bias);
/// The same product in the machine's micro-kernels: AVX-512 (6 x 64 accumulators) where simd_level() == 2, else
/// AVX2 (needs simd_level() >= 1). The chunked form's in-chunk products (chunked_cpu.cpp).
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t ai, int64_t ak, const float* B, int64_t ldb,
              float* C, int64_t ldc, bool acc, const float* bias);
/// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (8 x 8 blocks in AVX2 registers where the machine has
/// them, the edges one by one).
void transpose_f32(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd);

}  // namespace cpu
}  // namespace power_attention
