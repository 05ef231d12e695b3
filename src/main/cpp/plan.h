// plan.h: the plan of one call, made once and saved for the backward: the problem's sizes, the resolved chunk, the
// dtypes the device path computes in (asked of it, path.h), and how the call runs.
#pragma once

#include "path.h"

#include <ATen/ATen.h>

#include <cstdint>

namespace power_attention {

struct Plan {
  Problem problem;
  bool stateful = false;    // states in or out: the chunked form (one chunk of t without a chunk size)
  bool amplifying = false;  // the log gates hold a positive value (amplifying_gates; amplify, in the forward)
  bool grad = false;        // autograd will need the backward: the forward keeps what it needs
};

/// The plan for q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e] on their device: chunk 0 (none) or t <= chunk gives
/// the quadratic form, unless stateful.
Plan make_plan(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t p, double scale, int64_t chunk,
               bool stateful, bool grad);

/// The plan for log gates that hold a positive value (amplifying_gates): the path's dtypes for them.
void amplify(Plan& plan, const at::Tensor& q);

}  // namespace power_attention
