// generic.h: the kernels of the CUDA generic path (generic_path.cu): phi and its backward in sympow.h's layout,
// the in-chunk / in-tile attention weights on scores made by cuBLAS, and the gated prefix over chunks. Compute layout
// (compute_layout.h, viewed [X, rows, w], contiguous), any floating dtype T with accumulation in A = opmath(T).
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace power_attention {
namespace cuda {

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

/// The weights' tile of rows [tq0 g, ...) of the quadratic form or of a chunk (gate cumsums gq, gk with per-block
/// strides, or null).
template <typename A>
TileArgs<A> tile_args(const Problem& pr, int64_t X, int64_t R, int64_t C, int64_t tq0, const A* gq,
                      int64_t gq_stride, const A* gk, int64_t gk_stride);

/// Query tokens per tile of the quadratic form: S and dP tiles of about 256 MiB at `elem` bytes a score.
int64_t quadratic_tile(const Problem& pr, int64_t elem);

/// Forward of the weights on a tile: S [X, R, C] acc -> P [X, R, C] in T; m, l [X * R] (the row maximum and sum,
/// into the given memory).
template <typename T, typename A>
at::Tensor weights_forward(const TileArgs<A>& t, const at::Tensor& S, A* m, A* l);

/// Backward of the weights on a tile: {P, dS} [X, R, C] in T (see attention_weights_backward); dgq, dgk: fp64 gate
/// gradient sums to add to, or null; own [X R]: each row's factor at its own key (attention_tile.h, tile_backward).
template <typename T, typename A>
std::pair<at::Tensor, at::Tensor> weights_backward(const TileArgs<A>& t, const at::Tensor& S, const at::Tensor& dP,
                                                   const A* rf, const A* dden, const A* own, const A* m, double* dgq,
                                                   double* dgk);

/// phi(x) * rs per row: x [n, d] in T, rs [n] in A or undefined -> [n, D] in dtype `out`.
template <typename T, typename A>
at::Tensor phi_forward(const at::Tensor& x, const at::Tensor& rs, int64_t p, at::ScalarType out);

/// Backward of phi_forward: {dx [n, d] in A or undefined, u [n] in A (the gradient of log rs) or undefined}.
template <typename T, typename A>
std::pair<at::Tensor, at::Tensor> phi_backward(const at::Tensor& x, const at::Tensor& rs, const at::Tensor& dphi,
                                               int64_t p, bool want_dx, bool want_u);

/// The gated prefix over chunks (SPEC §4), extended layout, states of TS with sums in A: H_0 = H0 (or 0),
/// Hs[n] = H_n, H_{n+1} = decay[n] H_n + Sc[n], final = H_N. Sc [BH, N, DE], decay [BH, N] or undefined (1), H0
/// [BH, DE] or undefined, Hs [BH, N, DE], final [BH, DE] or undefined.
template <typename TS, typename A>
void state_scan_forward(const at::Tensor& Sc, const at::Tensor& decay, const at::Tensor& H0, at::Tensor& Hs,
                        at::Tensor& final_state, int64_t BH, int64_t N, int64_t DE);

/// Its backward (A_n the gradient of the state leaving chunk n, A_{N-1} = dfinal or 0): Aout[n] = A_n,
/// dL[n] += decay[n] (H_n . A_n), A_{n-1} = dHdir[n] + decay[n] A_n, dH0 = dHdir[0] + decay[0] A_0; dHdir, dfinal, dL,
/// dH0 may be undefined.
template <typename TS, typename A>
void state_scan_backward(const at::Tensor& dHdir, const at::Tensor& decay, const at::Tensor& Hs,
                         const at::Tensor& dfinal, at::Tensor& Aout, at::Tensor& dL, at::Tensor& dH0, int64_t BH,
                         int64_t N, int64_t DE);

/// Batched a @ b with the result in the accumulation dtype (fp32 accumulation on the tensor cores for bf16/fp16).
at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc);

}  // namespace cuda
}  // namespace power_attention
