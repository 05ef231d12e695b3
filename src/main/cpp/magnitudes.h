// magnitudes.h: inputs brought into the floating-point range, and the gate range of returned states (SPEC §2, §6).
//
// y is invariant to the scale of each query row, to a common scale of each head's keys, and to `scale` (every weight
// of a row shares the factor). Inputs whose scores or states could leave the range (|q|, |k| of 1e-20 or 1e20, say,
// or an extreme `scale`) are brought to max-abs in [1, 2) by powers of two, which is exact; the gradients of q and k
// take the same factors.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>

#include <cstdint>
#include <optional>

namespace power_attention {

struct Scaled {
  at::Tensor q, k;    // what the path sees
  at::Tensor qf;      // [b, t, hq, 1] the power of two each query row was multiplied by (undefined: none was)
  at::Tensor kf;      // [b, 1, h, 1] likewise for each head's keys
  at::Tensor state_logscale;  // [b * h] fp64: p log(kf), the log-scale of a state in the path's units of k
  double scale = 1;   // the scale the path uses
  double gate_max = 0;         // the largest log gate, when read with the magnitudes (gate_max_read)
  bool gate_max_read = false;
  bool applied() const { return qf.defined(); }
};

/// The extremes of q and k (and the largest log gate) on their way to the host: read_magnitudes queues their
/// reductions and, on CUDA, an asynchronous copy into pinned memory, and returns at once; scale_to_safe_range waits
/// for the copy (the op's one device sync on CUDA), so that work queued between the two overlaps the read.
struct MagnitudeRead {
  at::Tensor qa, ka;                 // [b, t, hq, 1] row and [b, 1, h, 1] head max-abs, on the inputs' device
  at::Tensor host;                   // fp64 on the host: max qa, min positive qa, max ka, min positive ka[, max log_g]
  std::optional<c10::Event> copied;  // CUDA: recorded after the copy into `host`
  bool gate = false;                 // host holds the largest log gate
  bool read = false;                 // false: fp16 on CUDA, which is always brought into range and reads nothing
  /// Whether the extremes are still on their way (CUDA): the caller can queue work before deciding.
  bool pending() const { return copied.has_value(); }
};

/// Starts the read of the extremes of q, k and (when defined) log_g; no device sync.
MagnitudeRead read_magnitudes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g = at::Tensor());

/// 2^-floor(log2(a)) for a > 0, 1 for a == 0.
at::Tensor pow2_factor(const at::Tensor& amax);

/// x * f with f a power of two per row or head, in x's dtype where that is exact.
at::Tensor times_pow2(const at::Tensor& x, const at::Tensor& f);

/// q, k as the path should see them, with the factors applied where the scores or states would leave fp32's range
/// (fp16 on CUDA: always, without a device sync). Deciding reads the extremes back (a device sync on CUDA); the
/// largest of log_g (when defined) is read with them, for amplifying_gates.
Scaled scale_to_safe_range(const at::Tensor& q, const at::Tensor& k, int64_t p, double scale,
                           const at::Tensor& log_g = at::Tensor());
/// The same from a read started by read_magnitudes (it waits for that read's copy).
Scaled scale_to_safe_range(const MagnitudeRead& read, const at::Tensor& q, const at::Tensor& k, int64_t p,
                           double scale);

/// Whether every element of x is finite, as a bool scalar tensor on x's device (no read back): fp32 / 16-bit x by its
/// sum in fp64 (an inf or a NaN anywhere makes it inf or NaN, and such values cannot add up to fp64's range: one
/// pass), fp64 x element by element.
at::Tensor all_finite(const at::Tensor& x);

/// The gradient of x from that of x * f.
at::Tensor unscale_grad(const at::Tensor& grad, const at::Tensor& f);

/// Refuses (ArgumentError naming log_G), before any work, log gates whose returned state would overflow its dtype.
void check_state_gates(const at::Tensor& log_g, bool has_initial, at::ScalarType st);

/// exp(final_logscale - state_logscale) [b*h] fp64: the true state from the path's scaled one.
at::Tensor state_factor(const at::Tensor& final_logscale, const Scaled& sc, int64_t BH);

/// Whether the log gates hold a positive value (the past amplified): the paths then compute in a wider dtype
/// (the plan asks their precision rules, plan.h). From sc's read where it made one, else (on CUDA) one number read
/// back: a device sync.
bool amplifying_gates(const at::Tensor& log_g, int64_t chunk, const Scaled& sc);

}  // namespace power_attention
