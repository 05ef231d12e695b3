// kernel_sets.cpp: the library's CUDA kernel sets (cuda/common/sm90_select.h), forced one at a time so that one
// process checks and times each on the same card.
#include "harness.h"

#include "cuda/common/sm90_select.h"

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace harness {

namespace {
constexpr const char* kVar = "POWER_ATTENTION_CUDA_KERNELS";
}  // namespace

ForceKernels::ForceKernels(const std::string& set) {
  const char* old = std::getenv(kVar);
  had_ = old != nullptr;
  if (old) old_ = old;
  setenv(kVar, set.c_str(), 1);
}

ForceKernels::~ForceKernels() {
  if (had_) {
    setenv(kVar, old_.c_str(), 1);
  } else {
    unsetenv(kVar);
  }
}

bool hopper() { return pa::cuda::sm90a_present(0); }

std::string default_kernel_set() {
  static const std::string set = pa::cuda::kernel_set_name(pa::cuda::kernel_set(0));
  return set;
}

std::vector<std::string> other_kernel_sets() {
  std::vector<std::string> sets;
  if (!hopper()) return sets;
  const std::string def = default_kernel_set();
  if (const char* list = std::getenv("POWER_ATTENTION_HARNESS_SETS")) {
    std::stringstream in(list);
    for (std::string s; std::getline(in, s, ',');)
      if (!s.empty() && s != def) sets.push_back(s);
    return sets;
  }
  for (const char* s : {"sm80", "sm90a", "sm90a-wg4", "sm90a-scan", "sm90a-tiles"})
    if (s != def) sets.push_back(s);
  return sets;
}

}  // namespace harness
