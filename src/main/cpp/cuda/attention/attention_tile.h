// attention_tile.h: fused (flash-style) kernels for causal power attention on tiles, CUDA, bf16 / fp16.
//
// A tile problem is X independent blocks (a chunk of one head, or one whole head for the quadratic form), each of
// R = C * g query rows against C keys: query row r belongs to token r / g (the g query heads that share a key/value
// head are interleaved, as in the caller's layout) and sees keys j <= r / g. In log space (SPEC §3, no epsilons):
//
//   z_rj = p log|scale q_r . k_j| + G[r / g] - G[j]      m_r = max_j z_rj (0 when every weight is 0)
//   P_rj = exp(z_rj - m_r) sign(q_r . k_j)^p            l_r = sum_j P_rj        num_r = sum_j P_rj v_j
//
// The forward writes num (fp32), m and l; the backward takes the upstream terms of the combination (rf_r: the row
// factor of dnum, dd_r: the normaliser's gradient, so dz_rj = (dy_r . v_j rf_r + dd_r) P_rj) and writes dq, dk, dv
// and the gate terms: sum_j dz_rj per row and sum_r dz_rj per key, both without the diagonal j = r / g (its G terms
// cancel exactly; summing it twice would leave only rounding behind). Nothing of size R x C reaches memory: every
// tile of scores lives in registers (mma.sync, fp32 accumulation).
//
// q, k, v, dy and the outputs in the input dtype are operands (cuda/common/operand.h): the caller's layout through
// its row map, or a dense [X, rows, w] tensor. num, m, l, rf, dd, rowdz, coldz, G and the fp32 addends are in the
// compute layout ([X, rows] row-major).
#pragma once

#include "cuda/common/operand.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {
namespace cuda {

struct TileProblem {
  int64_t X = 0;  // blocks
  int64_t R = 0;  // query rows a block (C g)
  int64_t C = 0;  // keys a block
  int64_t g = 1;  // query heads per key/value head
  int p = 2;      // degree
  double scale = 1;
};

/// Whether the fused kernels take this dtype and head sizes (bf16 / fp16, d == e in {16, 32, 64, 128}).
bool tile_kernels_support(at::ScalarType dtype, int64_t d, int64_t e);

/// q (X blocks of R rows), k, v (X blocks of C rows) in one dtype; G [X, C] fp32 (gate cumsum per token) or
/// undefined. Writes num [X, R, e] (fp32, when defined), m [X * R], l [X * R] (fp32, preallocated); `normalize`:
/// num / l instead of num (0 where l = 0), the quadratic form's output, which also goes to y (when defined) in the
/// input dtype.
void tile_forward(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const at::Tensor& G,
                  at::Tensor& num, at::Tensor& m, at::Tensor& l, bool normalize = false, const Operand& y = {});

/// dy like q; m, rf, dd, own [X * R] fp32: a weight's gradient is dz = t P with t = (dy . v) rf + dd, and at a
/// row's own key t = own, the row's dy . (v - y) rf made with the difference first: where one key carries a row's
/// weight (the first token; earlier keys' gates vanishing) y = v there, and the two terms of the general form leave
/// only their rounding, which the score gradient's p / s would carry into dq and dk. Writes dq (like q), dk, dv (like k, v) in the input dtype, each plus its fp32
/// addend [X, R, d] / [X, C, d] / [X, C, e] when that is defined; an undefined output is skipped (dk and dv are made
/// together). rowdz [X * R] and coldz [X * C] fp32, or undefined (no gate gradient).
void tile_backward(const TileProblem& tp, const Operand& q, const Operand& k, const Operand& v, const at::Tensor& G,
                   const Operand& dy, const at::Tensor& m, const at::Tensor& rf, const at::Tensor& dd,
                   const at::Tensor& own, const Operand& dq, const Operand& dk, const Operand& dv, const at::Tensor& dq_add,
                   const at::Tensor& dk_add, const at::Tensor& dv_add, at::Tensor& rowdz, at::Tensor& coldz);

}  // namespace cuda
}  // namespace power_attention
