// checks.h: the op's argument checks. One message style: "power_full: <argument> must <expected>, got <actual>",
// thrown as ArgumentError (errors.h).
#pragma once

#include "errors.h"
#include "power_attention.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace power_attention {

std::string shape_str(at::IntArrayRef s);
void check_rank(const at::Tensor& x, const char* name, const char* dims, int64_t rank);
void check_shape(const at::Tensor& x, const char* name, const char* dims, std::vector<int64_t> expected);
bool supported_dtype(at::ScalarType t);

/// The scalar options, checked; grad: autograd will need the backward.
struct Checked {
  int64_t p;
  double scale;
  int64_t chunk;  // 0: none
  bool grad;
};

/// Q [b, t, hq, d], K [b, t, h, d], V [b, t, h, e], log_G [b, t, h] or undefined, and the options (SPEC §1).
Checked check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                     const PowerFullOptions& options);

/// A state (S [b, h, D, e], s [b, h, D]) on Q's device, both or neither.
void check_state(const at::Tensor& S, const at::Tensor& s, const at::Tensor& q, int64_t b, int64_t h, int64_t D,
                 int64_t e);

/// The decode step's tokens: Q [b, hq, d], K [b, h, d], V [b, h, e], log_G [b, h] or undefined, deg >= 1.
void check_decode_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                         int64_t degree);

}  // namespace power_attention
