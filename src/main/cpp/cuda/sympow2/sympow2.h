// sympow2.h: degree-2 state products with phi made on the fly (CUDA, bf16 tensor cores), never in memory.
//
// Internal layout of phi (CUDA, p = 2, d = 16 nb): d splits into nb blocks of 16; features come in the order
// (A, a, B, b) for blocks A <= B and a, b in [0, 16), with value c_AB x[16 A + a] x[16 B + b], c_AB = 1 on the
// diagonal blocks and sqrt(2) off them, so that phi(x) . phi(y) = (x . y)^2. That is D2 = 256 nb (nb + 1) / 2
// features (2560 for d = 64, against sympow.h's 2080): a diagonal block keeps both (a, b) and (b, a), which makes
// every 16 features one x block times one scalar: a tensor-core operand scaled per row or per column. States in
// this layout stay inside the CUDA path; sympow2_to_internal / sympow2_to_official convert at the API boundary.
//
// Each x comes with a row scale rs (phi'(x_r) = rs_r phi(x_r); undefined: 1). Shapes: x [X, n, d] in the input
// dtype (bf16 / fp16), y [X, n, E] bf16, H [X, D2, E] bf16, E = e + 8 (the extended state columns). Where a y is
// the extended values [v | 1 | 0] (the forward scan, the keys' gradient), it may come as v [X, n, e] bf16 alone:
// the kernels then make the other columns in shared memory.
#pragma once

#include "cuda/common/operand.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace power_attention {
namespace cuda {

// Every x or y below is an operand (cuda/common/operand.h): a tensor [X, n, w] in a compute layout (no map), or
// the caller's layout [b, t, h g, w] through a chunk map (X = b h N blocks of n = c g rows, those of tokens >= t
// read as zeros).

/// Whether the degree-2 kernels take these sizes (bf16 / fp16, d == e in {16, 32, 64, 128}).
bool sympow2_supported(at::ScalarType dtype, int64_t d, int64_t e);

/// D2 = 256 nb (nb + 1) / 2, nb = d / 16.
int64_t sympow2_dim(int64_t d);

/// B[x, r] = phi'(x_r) H[x]  -> [X, n, E] fp32, or its first `cols` columns (a multiple of 8) when cols >= 0.
at::Tensor sympow2_query(const Operand& x, const at::Tensor& rs, const at::Tensor& H, int64_t cols = -1);

/// The chunked form's combination fused into the query product (y never meets B in memory): with B = phi'(x) H and
/// the row factors wa, ws of state_scale.cuh, den = l wa + B[:, e] ws, y = (numA wa + B[:, :e] ws) / den (0 where
/// den is). numA, y [X, n, e], l, m, den [X * n], fp32; gc [X, c] fp32, the in-chunk gate cumsum of each block's c
/// tokens (n = c g rows: row r is token r / g), or undefined (0); mu [X] fp64, the log-scale of each block's state
/// H; e = d. y_out (when defined): y again, in x's dtype, through its row map (the caller's layout).
void sympow2_query_combine(const Operand& x, const at::Tensor& rs, const at::Tensor& H, const at::Tensor& numA,
                           const at::Tensor& l, const at::Tensor& m, const at::Tensor& gc, const at::Tensor& mu,
                           at::Tensor& y, at::Tensor& den, const Operand& y_out = {});

/// With dphi_r = H[x] y_r (never formed): dx_r = the gradient of phi'(x_r) . dphi_r in x_r -> [X, n, d] fp32, and
/// u_r = phi'(x_r) . dphi_r (its gradient in log rs_r) -> [X * n] fp32.
std::pair<at::Tensor, at::Tensor> sympow2_grad(const Operand& x, const at::Tensor& rs, const Operand& y,
                                               const at::Tensor& H);

/// The chunk states and the gated prefix in one pass. x [BH, N c, d] (or mapped), rs [BH N c] or undefined, y [BH, N c, E]
/// bf16, decay [BH N] (the chunked form's alpha: the factor of the state entering each chunk) or undefined (1), H0
/// [BH, D2, E] fp32 or undefined (0).
/// Writes Hs [BH, N, D2, E] bf16, the state entering each chunk, and (when defined) final_state [BH, D2, E] fp32.
void sympow2_scan_forward(const Operand& x, const at::Tensor& rs, const Operand& y, const at::Tensor& decay,
                          const at::Tensor& H0, int64_t N, at::Tensor& Hs, at::Tensor& final_state);

/// Its backward with the query side's direct term folded in: x, rs, y = the queries Q', their row scales and dB
/// ([BH, N R, .]); A_{N-1} = dfinal (or 0), An[n] = A_n (bf16), dL[n] += decay_n (Hs[n] . A_n) (fp32, when
/// defined), A_{n-1} = phi'(Q'_n)^T dB_n + decay_n A_n, dH0 = A_{-1} (when defined).
void sympow2_scan_backward(const Operand& x, const at::Tensor& rs, const Operand& y, const at::Tensor& decay,
                           const at::Tensor& Hs, const at::Tensor& dfinal, int64_t N, at::Tensor& An, at::Tensor& dL,
                           at::Tensor& dH0);

/// Extended states [BH, D, E] in sympow.h's layout -> [BH, D2, E] in the internal one, and back. The two maps are
/// each other's transposes, so each is also the other's backward.
at::Tensor sympow2_to_internal(const at::Tensor& ext, int64_t d);
at::Tensor sympow2_to_official(const at::Tensor& ext2, int64_t d);

}  // namespace cuda
}  // namespace power_attention
