// memory_budget.h: the affordability check of the chunked form's states, before anything is allocated (SPEC §8).
#pragma once

#include "plan.h"

#include <ATen/ATen.h>

namespace power_attention {

/// Throws ArgumentError naming D, the bytes and the ways out when the chunked form's states (all of them when the
/// plan needs the backward) exceed what the device of q can hold; the bytes and the limit are the path's own.
void check_affordable(const Plan& plan, const at::Tensor& q);

}  // namespace power_attention
