// max_abs_cpu.h: the largest magnitude over rows on the CPU, in vector lanes (max_abs_cpu.cpp also holds the CPU
// path's extremes of power_full_cpu.h).
#pragma once

#include <cstdint>

namespace power_attention {
namespace cpu {

/// The largest |x| over rows [0, n) of w floats, ld apart (0 for n = 0 or w = 0; NaN if any element is NaN).
float rows_max_abs(const float* x, int64_t n, int64_t w, int64_t ld);

}  // namespace cpu
}  // namespace power_attention
