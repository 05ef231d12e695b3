// static_switch.h: run-time sizes to the compile-time ones of the kernels' templates.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>

namespace power_attention {
namespace cuda {

/// f(BF, D) for the 16-bit kernels: BF a std::bool_constant (bf16, else fp16), D a std::integral_constant<int, d> for
/// d in {16, 32, 64, 128} (traits.h: fast_sizes); `what` names the kernels in the error for any other d.
template <typename F>
void switch_half_dim(bool bf, int64_t d, const char* what, F&& f) {
  using std::integral_constant;
  switch (d) {
    case 16: bf ? f(std::true_type{}, integral_constant<int, 16>{}) : f(std::false_type{}, integral_constant<int, 16>{}); break;
    case 32: bf ? f(std::true_type{}, integral_constant<int, 32>{}) : f(std::false_type{}, integral_constant<int, 32>{}); break;
    case 64: bf ? f(std::true_type{}, integral_constant<int, 64>{}) : f(std::false_type{}, integral_constant<int, 64>{}); break;
    case 128: bf ? f(std::true_type{}, integral_constant<int, 128>{}) : f(std::false_type{}, integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "power_full: internal: no ", what, " for d = ", d);
  }
}

}  // namespace cuda
}  // namespace power_attention
