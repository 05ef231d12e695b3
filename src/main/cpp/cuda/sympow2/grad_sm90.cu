// grad_sm90.cu: the launch of grad_sm90.cuh's kernel in the library's shapes (grid, shared memory, template
// switches).
#include "cuda/sympow2/grad_sm90.h"

#include "cuda/sympow2/grad_sm90.cuh"

#include <stdexcept>
#include <string>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {
namespace {

template <bool BF, int D, bool ONES, typename S>
void launch(const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* y, const RowMap& ym,
            const uint16_t* H, float* dx, float* u, int64_t X, int64_t n, cudaStream_t stream) {
  const cudaError_t err = grad_launch_shape<BF, D, ONES, S>(x, xm, rs, y, ym, H, dx, u, X, n, stream);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("power_full: sm_90a gradient kernel (d = ") + std::to_string(D) + ", " +
                             std::to_string(S::WG) + " warpgroups): " + cudaGetErrorString(err));
}

template <int D, typename S>
void launch_shape(bool bf16_x, bool ones, const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* y,
                  const RowMap& ym, const uint16_t* H, float* dx, float* u, int64_t X, int64_t n,
                  cudaStream_t stream) {
  if (bf16_x) {
    ones ? launch<true, D, true, S>(x, xm, rs, y, ym, H, dx, u, X, n, stream)
         : launch<true, D, false, S>(x, xm, rs, y, ym, H, dx, u, X, n, stream);
  } else {
    ones ? launch<false, D, true, S>(x, xm, rs, y, ym, H, dx, u, X, n, stream)
         : launch<false, D, false, S>(x, xm, rs, y, ym, H, dx, u, X, n, stream);
  }
}

}  // namespace

bool grad_supported(int64_t d) { return d == 64; }

void grad_launch(bool bf16_x, int64_t d, bool ones, bool wide, const uint16_t* x, const RowMap& xm, const float* rs,
                 const uint16_t* y, const RowMap& ym, const uint16_t* H, float* dx, float* u, int64_t X, int64_t n,
                 cudaStream_t stream) {
  if (X == 0 || n == 0) return;
  if (d != 64) throw std::runtime_error("power_full: sm_90a gradient kernel: no kernel for d = " + std::to_string(d));
  wide ? launch_shape<64, GradWide>(bf16_x, ones, x, xm, rs, y, ym, H, dx, u, X, n, stream)
       : launch_shape<64, GradNarrow>(bf16_x, ones, x, xm, rs, y, ym, H, dx, u, X, n, stream);
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
