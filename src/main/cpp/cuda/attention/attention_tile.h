// attention_tile_cuda.h: fused (flash-style) kernels for causal power attention on tiles, CUDA, bf16 / fp16.
//
// A tile problem is X independent blocks (a chunk of one head, or one whole head for the quadratic form), each of
// R = C * g query rows against C keys: query row r belongs to token r / g (the g query heads that share a key/value
// head are interleaved, as in the compute layout) and sees keys j <= r / g. In log space (SPEC §3, no epsilons):
//
//   z_rj = p log|scale q_r . k_j| + G[r / g] - G[j]      m_r = max_j z_rj (0 when every weight is 0)
//   P_rj = exp(z_rj - m_r) sign(q_r . k_j)^p            l_r = sum_j P_rj        num_r = sum_j P_rj v_j
//
// The forward writes num (fp32), m and l; the backward takes the upstream terms of the combination (rf_r: the row
// factor of dnum, dd_r: the normaliser's gradient, so dz_rj = (dy_r . v_j rf_r + dd_r) P_rj) and writes dq, dk, dv
// (fp32) and the gate terms: sum_j dz_rj per row and sum_r dz_rj per key, both without the diagonal j = r / g
// (its G terms cancel exactly; summing it twice would leave only rounding behind). Nothing of size R x C reaches memory:
// every tile of scores lives in registers (mma.sync, fp32 accumulation).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {
namespace cuda {

struct TileProblem {
  int64_t X = 0, R = 0, C = 0, g = 1;
  int p = 2;
  double scale = 1;
  // 0: q, k, v, dy and the gradients are in the compute layout ([X, R, .] / [X, C, .]). b > 0: they are in the API
  // layout of the quadratic form, q / dy / dq [b, t, h g, .] and k / v / dk / dv [b, t, h, .] with X = b h, C = t
  // (no layout copies); num, m, l, rf, dd, rowdz, coldz stay in the compute layout.
  int64_t b = 0;
  // chunks > 0 (with b): the blocks are chunks (X = b h chunks, C = the chunk length) of t real tokens, q, k, v, dy
  // are in the API layout [b, t, ., .] (the last chunk's rows past t read as zeros), and the backward's gradients go
  // to separate outputs there (see tile_backward); num, m, l, rf, dd, rowdz, coldz stay in the compute layout.
  int64_t chunks = 0, t = 0;
};

/// Whether the fused kernels take this dtype and head sizes (bf16 / fp16, d == e in {16, 32, 64, 128}).
bool tile_kernels_support(at::ScalarType dtype, int64_t d, int64_t e);

/// q [X, R, d], k [X, C, d], v [X, C, e] contiguous in one dtype (or the API layout, see TileProblem); G [X, C]
/// fp32 (gate cumsum per token) or undefined. Writes num [X, R, e] (fp32, when defined), m [X * R], l [X * R] (fp32,
/// preallocated); `normalize`: num / l instead of num (0 where l = 0), the quadratic form's output, which also goes
/// to y (when defined) in the input dtype and q's layout.
void tile_forward(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& G, at::Tensor& num, at::Tensor& m, at::Tensor& l, bool normalize = false,
                  at::Tensor y = {});

/// dy [X, R, e] in the input dtype (q's layout); m, rf, dd [X * R] fp32. dq [X, R, d], dk [X, C, d], dv [X, C, e]
/// fp32: written, or added to when `accumulate`; or, without `accumulate`, in the input dtype and the layout of
/// q, k, v; an undefined one is skipped (dk and dv are made together). rowdz [X * R] and
/// coldz [X * C] fp32, or undefined (no gate gradient).
///
/// With tp.chunks > 0: dq_out [b, t, h g, d], dk_out [b, t, h, d], dv_out [b, t, h, e] in the input dtype receive
/// the tile's gradients plus dq / dk / dv (fp32, compute layout, read only; each undefined one: nothing to add).
void tile_backward(const TileProblem& tp, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& G, const at::Tensor& dy, const at::Tensor& m, const at::Tensor& rf,
                   const at::Tensor& dd, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& rowdz,
                   at::Tensor& coldz, bool accumulate, at::Tensor dq_out = {}, at::Tensor dk_out = {},
                   at::Tensor dv_out = {});

}  // namespace cuda
}  // namespace power_attention
