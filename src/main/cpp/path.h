// path.h: the device paths of power_full as the API layer sees them: the problem, what a forward returns and its
// backward takes back, states and gradients, and the interface the API layer asks (path.cpp sends each question to
// the CPU path, cpu/power_full_cpu.h, or the CUDA path, cuda/power_full_cuda.h).
//
// Tensors cross this interface in the caller's layout (docs/SPEC.md §1, §6):
//   q   [b, t, hq, d]   k [b, t, h, d]   v [b, t, h, e]   log_g [b, t, h] or undefined   dy like y [b, t, hq, e]
// q, k, v in one dtype, any strides; log_g in any floating dtype. A path returns y and the gradients there, in the
// dtypes of the tensors they belong to. How it computes (its own compute layout, padding, copies) is its own
// business: what it keeps for the backward travels inside Forward, which the API layer saves and hands back whole.
// States are [b h, D, e] / [b h, D] (the caller's [b, h, D, e] / [b, h, D] viewed per head) in Precision::states.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace power_attention {

/// The dtypes a path computes a problem in, by its own precision rules.
struct Precision {
  at::ScalarType compute = at::kFloat;  // q, k, v, y inside the path
  at::ScalarType gates = at::kFloat;    // log gates inside the path
  at::ScalarType states = at::kFloat;   // states in and out
};

/// Everything about the problem that is not a tensor (plan.h makes it once per call).
struct Problem {
  int64_t b = 0, t = 0;  // batch, tokens
  int64_t h = 1;         // key/value heads
  int64_t g = 1;         // query heads per key/value head (hq = h g)
  int64_t d = 0;         // query/key head dimension
  int64_t e = 0;         // value head dimension
  int64_t p = 2;         // degree
  double scale = 1;      // inside the power, as the path sees the inputs (magnitudes.h)
  int64_t chunk = 0;     // 0: the quadratic form; else the chunked form's chunk length (< t, or t when stateful)
  int64_t BH = 0;        // b h
  int64_t T = 0;         // t rounded up to whole chunks (the chunked form's padded length); t for the quadratic form
  Precision precision;   // the path's dtypes for this problem
};

/// What the forward returns, and what its backward takes back. The API layer reads `out` and the final state; the
/// rest is the path's own (saved and handed back unread).
struct Forward {
  at::Tensor out;  // y [b, t, hq, e] in q's dtype: the op's output
  // Kept for the backward, in the path's own layout and dtypes:
  at::Tensor y;       // the output rows as the backward's row terms read them
  at::Tensor den;     // the rescaled normaliser of each query row
  at::Tensor rowmax;  // m_i, the in-chunk log-weight maximum of each query row
  // Chunked form: states are kept with a log-scale so that no gate sign or size can overflow them. The state
  // entering chunk n is exp(logscale[n]) * states[n]; every stored factor is <= 1 (docs/SPEC.md §4).
  at::Tensor states;    // H^_n, the scaled state entering chunk n (when saved)
  at::Tensor norms;     // h^_n, likewise for the normaliser
  at::Tensor logscale;  // [b h, N] fp64 mu_n (when saved); -inf where the state is empty
  at::Tensor q, k, v, lg;  // the inputs in the path's layout when it keeps them (undefined: it reads the caller's)
  // After the last token (when asked for): the state is exp(final_logscale) * (final_state, final_norm).
  at::Tensor final_state;     // [b h, D, e]
  at::Tensor final_norm;      // [b h, D]
  at::Tensor final_logscale;  // [b h] fp64
};

/// A state entering the sequence (SPEC §6) as exp(logscale) * (S, s); undefined tensors mean zero. As a gradient
/// (Grads::initial, the backward's d_final) it is the gradient of (S, s) themselves, the log-scale held constant (it
/// is a stabiliser: the op's value does not depend on it).
struct State {
  at::Tensor S;         // [b h, D, e]
  at::Tensor s;         // [b h, D]
  at::Tensor logscale;  // [b h] fp64, or undefined: 0
};

/// The gradients autograd asks for.
struct Needs {
  bool q = true, k = true, v = true, g = true;
  bool state = false;  // the gradient of the initial state
};

/// The gradients, each in the caller's layout and the dtype of its input; undefined where not needed.
struct Grads {
  at::Tensor q, k, v, lg;
  State initial;  // gradient of the initial state (when needs.state), in Precision::states
};

/// What a device may plan to hold, for the memory budget.
struct MemoryLimit {
  double bytes = 0;
  std::string where;  // what the limit is, for the message
};

namespace path {

/// Whether a device path serves tensors on this device in this build (CPU always; CUDA when built with it).
bool supports(const at::Device& device);

/// The dtypes for inputs of dtype `input` at degree p and chunk (0: quadratic); amplifying: a log gate > 0.
Precision precision(const at::Device& device, at::ScalarType input, int64_t p, int64_t chunk, bool amplifying);

/// The bytes the chunked form holds for its states (all chunks' when grad: kept for the backward).
double state_bytes(const at::Device& device, const Problem& pr, bool grad);

/// What the device of q may plan to hold.
MemoryLimit memory_limit(const at::Tensor& q);

/// Whether the device's fused decode step takes the problem (g query heads per key/value head, value width e, degree
/// p); otherwise the decode step runs on ATen ops.
bool decode_supported(const at::Device& device, int64_t g, int64_t e, int64_t p);

/// The forward. initial: the state entering the sequence (chunked form only); want_final: fill the final state;
/// save: keep what the backward needs.
Forward forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& log_g, bool save, const State& initial = {}, bool want_final = false);

/// The backward from the saved forward. dy: undefined for zero; d_final: the gradient of the final state
/// (undefined: zero).
Grads backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
               const at::Tensor& log_g, const Forward& saved, const at::Tensor& dy, const Needs& needs,
               const State& d_final = {});

/// The largest |x| of each row of x [b, t, H, w] ([b, t, H, 1]) and of each head's rows ([b, 1, H, 1]), in fp32
/// (fp64 for fp64 x), NaN where the row or head holds one; without autograd.
at::Tensor row_max_abs(const at::Tensor& x);
at::Tensor head_max_abs(const at::Tensor& x);

/// row_max_abs(q), head_max_abs(k) and, where the device gathers them in the same passes (CUDA), `stats` [4, or 5
/// with log_g] fp64 on the device: the largest and the smallest positive of qa, the same of ka (inf where none is
/// positive; NaN propagates to the largest), and the largest log gate. Undefined stats: the caller reduces qa, ka and
/// log_g itself.
struct Extremes {
  at::Tensor qa, ka, stats;
};
Extremes extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g);

/// One recurrent step without autograd (SPEC §6): q [BH, g, d] of any magnitude (each query row is brought to
/// max-abs [1, 2) by a power of two: y does not depend on a row's scale), k [BH, d], v [BH, e], lg [BH] or
/// undefined, S [BH, D, e], s [BH, D], contiguous, one dtype (fp32 or fp64) -> {y [BH, g, e], S', s', finite}
/// (finite: a bool scalar tensor, whether y, S' and s' are all finite).
std::vector<at::Tensor> decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& lg, const at::Tensor& S, const at::Tensor& s, int64_t p);

}  // namespace path
}  // namespace power_attention
