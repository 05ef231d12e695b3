// power_full_cuda.cu: placeholder while the kernels are written (build plumbing only).
#include "power_full_cuda.h"

namespace power_attention {
namespace cuda {

Forward forward(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                const State&, bool) {
  TORCH_CHECK(false, "power_full: CUDA kernels not built yet");
}

Grads backward(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
               const Forward&, const at::Tensor&, const Needs&, const State&) {
  TORCH_CHECK(false, "power_full: CUDA kernels not built yet");
}

double device_memory_limit_bytes(const at::Tensor&) { return 1e12; }

}  // namespace cuda
}  // namespace power_attention
