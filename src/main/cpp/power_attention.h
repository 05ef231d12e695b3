// power_attention.h: the C++ API of symmetric power attention (SPEC.md §1-5).
//
// Plain LibTorch C++, no JNI: the same header serves the JavaCPP bindings (the JARs) and the CMake harness.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

// Bindings name the tensor type torch::Tensor (Bytedeco's TensorVector is std::vector<torch::Tensor>), as LibTorch's
// torch/types.h does with `using namespace at;`. A using-declaration is enough, and lighter than that header.
namespace torch {
using at::Tensor;
}  // namespace torch

namespace power_attention {

/// Options of power_full, every field optional but `degree` (SPEC §1).
struct PowerFullOptions {
  /// The power p (>= 1). Even powers give positive weights; 2 is the workhorse, 4 the paper's best.
  int64_t degree = 2;
  /// Applied inside the power: s_ij = scale * <q_i, k_j>. Default 1/sqrt(d). Finite and nonzero; Y is the
  /// same for scale and -scale (every weight of a row carries scale^p).
  std::optional<double> scale;
  /// Unset: the quadratic (attention) form. Set: the chunked linear-cost form with chunks of this many tokens.
  std::optional<int64_t> chunk_size;
};

/// Symmetric power attention:
///   Y_i = sum_{j<=i} w_ij V_j / sum_{j<=i} w_ij,  w_ij = (scale <q_i, k_j>)^p * exp(G_i - G_j),  G = cumsum_t(log_G)
///
///   q      [b, t, hq, d]   queries (sequence-major, like flash-attention)
///   k      [b, t, h, d]    keys, hq % h == 0 (query head i uses key/value head i / (hq / h))
///   v      [b, t, h, e]    values
///   log_g  [b, t, h]       optional (undefined tensor = no gating); computed in fp32 (fp64 for fp64 inputs)
///   returns [b, t, hq, e]  same dtype and device as q
///
/// Differentiable in q, k, v and log_g (create_graph gives second derivatives, through the plain-ATen reference).
/// Any finite input gives a finite output: log gates of either sign and any size, any |q|, |k|, any scale.
/// Throws ArgumentError (a c10::ValueError, message "power_full: ...") on bad input, c10::Error otherwise.
at::Tensor power_full(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& log_g, const PowerFullOptions& options);

/// Binding-friendly form of power_full: plain arguments only.
///   log_g undefined: no gating; has_scale false: default scale; has_chunk_size false: quadratic form.
/// Argument errors pass unchanged (ArgumentError); every other failure is rethrown as std::runtime_error whose
/// message starts with "power_full internal error: " (errors.h), so a binding can tell the two apart.
at::Tensor power_full_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                           int64_t degree, bool has_scale, double scale, bool has_chunk_size,
                           int64_t chunk_size);

/// SPEC §6: power_full starting from a state and returning the state after the last token.
///   S0 [b, h, D, e], s0 [b, h, D]: the state entering the sequence (both undefined: zero; any floating dtype)
///   returns {Y [b, t, hq, e] in q's dtype, S [b, h, D, e], s [b, h, D]}, the state in fp32 (fp64 for fp64 inputs)
/// Differentiable in q, k, v, log_g, S0 and s0. Runs the chunked algorithm (a single chunk without chunk_size).
/// Processing a sequence in pieces, carrying the state, equals processing it whole.
std::vector<at::Tensor> power_full_with_state(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& log_g, const PowerFullOptions& options,
                                              const at::Tensor& S0, const at::Tensor& s0);

/// Binding-friendly form of power_full_with_state (see power_full_flat).
std::vector<at::Tensor> power_full_with_state_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& log_g, int64_t degree, bool has_scale,
                                                   double scale, bool has_chunk_size, int64_t chunk_size,
                                                   const at::Tensor& S0, const at::Tensor& s0);

/// One recurrent step (SPEC §6) for one new token per sequence, O(D e) per head, no cache:
///   S' = g S + phi(k) v^T,  s' = g s + phi(k),  y = phi(q) . S' / phi(q) . s'      (g = exp(log_g); scale cancels)
///   q [b, hq, d], k [b, h, d], v [b, h, e], log_g [b, h] or undefined, S [b, h, D, e], s [b, h, D]
///   returns {y [b, hq, e] in q's dtype, S', s'} (state in fp32, fp64 for fp64 inputs). Differentiable (autograd).
std::vector<at::Tensor> power_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                          int64_t degree);

/// Binding-friendly form of power_decode_step (see power_full_flat: argument errors pass, others are marked internal).
std::vector<at::Tensor> power_decode_step_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                               int64_t degree);

/// Dimension D of the symmetric power embedding phi: C(d + p - 1, p) (2080 for d = 64, p = 2).
int64_t state_dim(int64_t head_dim, int64_t degree);

/// Binding-friendly form of state_dim.
int64_t state_dim_flat(int64_t head_dim, int64_t degree);

namespace reference {

/// SPEC §3 quadratic form in plain ATen ops (log space, explicit causal mask), differentiable by autograd.
/// Materialises [b, hq, t, t]: an oracle and a fallback, not a fast path.
at::Tensor power_full_quadratic(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& log_g, int64_t degree, double scale);

/// SPEC §4 chunked form in plain ATen ops through the explicit embedding phi, differentiable by autograd.
/// Materialises phi of every token: an oracle, not a fast path.
at::Tensor power_full_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& log_g, int64_t degree, double scale, int64_t chunk_size);

/// power_full_chunked starting from the state (S0 [b, h, D, e], s0 [b, h, D]; undefined: zero) and returning
/// {Y, S, s}, the state after the last token (fp32, fp64 for fp64 inputs). States are carried with a log-scale
/// inside (docs/SPEC.md, the stabilised chunked form), so log gates of any sign and size are served; the returned
/// state itself is a plain tensor and overflows where exp(G_t - G_j) does.
std::vector<at::Tensor> power_full_chunked_with_state(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& log_g, int64_t degree, double scale,
                                                      int64_t chunk_size, const at::Tensor& S0,
                                                      const at::Tensor& s0);

/// The symmetric power embedding phi of the last dimension: [..., d] -> [..., D], with
/// phi(x) . phi(y) == (x . y)^p. Layout: see sympow.h.
at::Tensor symmetric_power_embedding(const at::Tensor& x, int64_t degree);

}  // namespace reference

}  // namespace power_attention
