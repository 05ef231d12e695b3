// path.h: the contract between the API file (power_full.cpp) and a device path (cpu/power_full_cpu.h,
// cuda/power_full_cuda.h): the problem, what the forward returns and the backward needs, states and gradients.
//
// Compute layout (made by power_full.cpp): one batch index per (batch, key/value head) pair, BH = b * h;
//   q   [BH, T, g, d]   the g = hq / h query heads that share a key/value head, token-major
//   k   [BH, T, d]      v [BH, T, e]
//   lg  [BH, T]         log gates (fp64 on the CPU, fp32 on CUDA unless the compute dtype is fp64), or undefined
// all contiguous, in the path's compute dtype. For the chunked form T is padded to a multiple of the chunk size
// with zeros (zero keys add nothing; padded query rows are cropped by the caller).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {

/// The dtypes a path computes a problem in, by its own precision rules.
struct Precision {
  at::ScalarType compute;  // q, k, v, y
  at::ScalarType gates;    // log gates
  at::ScalarType states;   // states in and out
};

// Every device path (namespace cpu, cuda) answers the API layer through these, declared in its entry header:
//   Precision precision(at::ScalarType input, int64_t p, int64_t chunk, bool amplifying)
//       the dtypes for inputs of dtype `input`, degree p, chunk (0: quadratic), amplifying: a log gate > 0
//   double state_bytes(const Problem& pr, at::ScalarType compute, bool grad)
//       the bytes the chunked form holds for its states (all chunks' when grad: kept for the backward)
//   double memory_limit_bytes(const at::Tensor& q)        what the device may plan to hold
//   bool decode_supported(int64_t g, int64_t e, int64_t p) whether its fused decode step takes the problem
//   forward, backward, decode_step                         the work itself

/// Everything about the problem that is not a tensor.
struct Problem {
  int64_t BH = 0;     // batch * key/value heads
  int64_t T = 0;      // tokens (padded to a multiple of chunk for the chunked form)
  int64_t g = 1;      // query heads per key/value head
  int64_t d = 0;      // query/key head dimension
  int64_t e = 0;      // value head dimension
  int64_t p = 2;      // degree
  double scale = 1;   // inside the power
  int64_t chunk = 0;  // 0: quadratic form; else chunk length (divides T)
  // The API shape [b, t, ...] (b * h = BH, t <= T) and whether q, k, v come in the compute dtype: then a path may
  // return y and the gradients of q, k, v in the API layout and dtype directly (Forward::y_api, Grads::api).
  int64_t b = 0, t = 0;
  bool api = false;
  // q, k, v (and the backward's dy) come in the API layout [b, t, heads, .], contiguous, not in the compute layout:
  // a path that reads them there directly (CUDA: cuda::direct_supported) makes no layout copies. Implies api.
  bool direct = false;
};

/// What the forward returns and the backward needs.
struct Forward {
  at::Tensor y;       // [BH, T, g, e] compute dtype
  at::Tensor den;     // [BH, T * g]   the rescaled normaliser of each query row
  at::Tensor rowmax;  // [BH, T * g]   m_i, the in-chunk log-weight maximum of each query row
  // Chunked form: states are kept with a log-scale so that no gate sign or size can overflow them. The state
  // entering chunk n is exp(logscale[n]) * states[n]; every stored factor is <= 1 (see docs/SPEC.md, "the
  // stabilised chunked form"). logscale is -inf where the state is empty (zero).
  at::Tensor states;    // [BH, N, D, e] H^_n, the scaled state entering chunk n (when saved)
  at::Tensor norms;     // [BH, N, D]    h^_n, likewise for the normaliser
  at::Tensor logscale;  // [BH, N]       fp64 mu_n (when saved)
  at::Tensor final_state;     // [BH, D, e]  H^ after the last token (when asked for): the state is
  at::Tensor final_norm;      // [BH, D]     exp(final_logscale) * (final_state, final_norm)
  at::Tensor final_logscale;  // [BH]        fp64
  at::Tensor y_api;        // y in the API layout [b, t, hq, e] and the input dtype, when the path made it
};

/// A state entering the sequence (SPEC §6), in the compute layout, as exp(logscale) * (S, s); undefined tensors
/// mean zero. As a gradient (Grads::initial, the backward's d_final) it is the gradient of (S, s) themselves, the
/// log-scale held constant (it is a stabiliser: the op's value does not depend on it).
struct State {
  at::Tensor S;         // [BH, D, e]
  at::Tensor s;         // [BH, D]
  at::Tensor logscale;  // [BH] fp64, or undefined: 0
};

struct Needs {
  bool q = true, k = true, v = true, g = true;
  bool state = false;  // the gradient of the initial state
};

struct Grads {
  at::Tensor q, k, v, lg;  // layouts as the inputs, any floating dtype (the caller converts); undefined where not needed
  State initial;           // gradient of the initial state (when needs.state)
  bool api = false;        // q, k, v are already in the API layout and dtype (Problem::api)
};

}  // namespace power_attention
