// memory_budget.h: the affordability check of the chunked form's states, before anything is allocated (SPEC §8).
#pragma once

#include "plan.h"

#include <ATen/ATen.h>

namespace power_attention {

/// Throws ArgumentError naming D, the bytes and the ways out when the chunked form's states (all of them when grad,
/// kept for the backward) exceed what the device can hold; the bytes are the path's own count.
void check_affordable(const Resolved& r, bool grad, const at::Tensor& q);

}  // namespace power_attention
