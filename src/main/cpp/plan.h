// plan.h: the plan of one call: sizes, the resolved chunk, the dtypes each path computes in (asked of the path),
// the compute layout of power_full_path.h and the conversions to and from the caller's layout.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {

// The compute layout (power_full_path.h) and its dtypes.
struct Layout {
  int64_t b, t, hq, h, g, d, e, T;
  at::ScalarType ct;  // compute dtype of q, k, v, y
  at::ScalarType gt;  // log gates
  at::ScalarType st;  // states in and out
};

struct Resolved {
  Layout layout;
  Problem problem;
};

/// The plan for q, k, v (already brought into range, magnitudes.h): stateful calls always run the chunked form
/// (one chunk of t without a chunk size); amplifying: the log gates hold a positive value (amplifying_gates).
Resolved resolve(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t p, double scale,
                 int64_t chunk, bool stateful = false, bool amplifying = false);

at::Tensor query_layout(const at::Tensor& x, const Layout& L);   // [b, t, hq, w] -> [b*h, T, g, w]
at::Tensor kv_layout(const at::Tensor& x, const Layout& L);      // [b, t, h, w]  -> [b*h, T, w]
at::Tensor gate_layout(const at::Tensor& x, const Layout& L);    // [b, t, h]     -> [b*h, T], gate dtype
at::Tensor query_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype);
at::Tensor kv_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype);
at::Tensor gate_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype);

/// y in the caller's layout and dtype (the path's own when it made it there, Forward::y_api).
at::Tensor api_output(const Forward& f, const Layout& L, at::ScalarType dtype);

struct InputGrads {
  at::Tensor q, k, v;
};
/// The gradients of q, k, v in the caller's layout and the inputs' dtypes.
InputGrads api_grads(const Grads& gr, const Layout& L, const Needs& needs, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v);

struct LaidOut {
  at::Tensor q, k, v, g;
};
/// The inputs as the path takes them: the caller's layout itself (Problem::direct) or the compute layout.
LaidOut path_inputs(const Resolved& r, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& log_g);

/// dy [b, t, hq, e] as the path takes it (like q), or zeros where autograd gave none.
at::Tensor path_dy(const Resolved& r, const at::Tensor& dy, const at::Tensor& q);

/// [b, h, D, e] / [b, h, D] -> [b*h, D, e] / [b*h, D] in the state dtype.
State state_layout(const at::Tensor& S, const at::Tensor& s, const Layout& L);

}  // namespace power_attention
