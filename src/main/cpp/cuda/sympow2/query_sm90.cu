// query_sm90.cu: the launch of query_sm90.cuh's kernel in the library's shapes (grid, shared memory, template
// switches).
#include "cuda/sympow2/query_sm90.h"

#include "cuda/sympow2/query_sm90.cuh"

#include <stdexcept>
#include <string>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {
namespace {

template <bool BF, int D, typename S>
void launch(const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* H, float* out, int64_t X,
            int64_t n, int cols, const Combine& cmb, cudaStream_t stream) {
  const cudaError_t err = query_launch_shape<BF, D, S>(x, xm, rs, H, out, X, n, cols, cmb, stream);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("power_full: sm_90a query kernel (d = ") + std::to_string(D) + ", " +
                             std::to_string(S::WG) + " warpgroups): " + cudaGetErrorString(err));
}

template <int D>
void launch_d(bool bf16_x, bool wide, const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* H,
              float* out, int64_t X, int64_t n, int cols, const Combine& cmb, cudaStream_t stream) {
  if (wide) {
    bf16_x ? launch<true, D, QueryWide<D>>(x, xm, rs, H, out, X, n, cols, cmb, stream)
           : launch<false, D, QueryWide<D>>(x, xm, rs, H, out, X, n, cols, cmb, stream);
  } else {
    bf16_x ? launch<true, D, QueryDefault<D>>(x, xm, rs, H, out, X, n, cols, cmb, stream)
           : launch<false, D, QueryDefault<D>>(x, xm, rs, H, out, X, n, cols, cmb, stream);
  }
}

}  // namespace

bool query_supported(int64_t d) { return d == 64 || d == 128; }

void query_launch(bool bf16_x, int64_t d, bool wide, const uint16_t* x, const RowMap& xm, const float* rs,
                  const uint16_t* H, float* out, int64_t X, int64_t n, int cols, const Combine& cmb,
                  cudaStream_t stream) {
  if (X == 0 || n == 0) return;
  if (d == 64) {
    launch_d<64>(bf16_x, wide, x, xm, rs, H, out, X, n, cols, cmb, stream);
  } else if (d == 128) {
    launch_d<128>(bf16_x, false, x, xm, rs, H, out, X, n, cols, cmb, stream);  // QueryWide<128> is the default
  } else {
    throw std::runtime_error("power_full: sm_90a query kernel: no kernel for d = " + std::to_string(d));
  }
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
