// scan_sm90.cu: the launch of scan_sm90.cuh's kernel in the library's shapes (grid, shared memory, template switches).
#include "cuda/sympow2/scan_sm90.h"

#include "cuda/sympow2/scan_sm90.cuh"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace power_attention {
namespace cuda {
namespace sympow2 {
namespace sm90 {
namespace {

template <bool BF, int D, bool REV, bool ONES, int WG>
void launch(const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* y, const RowMap& ym,
            const float* decay, const float* Hin, const uint16_t* Hs, uint16_t* out, float* last, float* dL,
            int64_t BH, int64_t N, int64_t c, cudaStream_t stream) {
  const bool g1 = xm.g == 1 && ym.g == 1;  // one row stride (scan_sm90.cuh: G1)
  const cudaError_t err =
      g1 ? scan_launch_shape<BF, D, REV, ONES, WG, true>(x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c,
                                                         stream)
         : scan_launch_shape<BF, D, REV, ONES, WG, false>(x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c,
                                                          stream);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("power_full: sm_90a scan kernel (d = ") + std::to_string(D) + ", " +
                             std::to_string(WG) + " warpgroups): " + cudaGetErrorString(err));
}

// The three variants a (dimension, shape): forward with y given whole or made [y | 1 | 0], reverse.
template <bool BF, int D, int WG>
void launch_dir(bool rev, bool ones, const uint16_t* x, const RowMap& xm, const float* rs, const uint16_t* y,
                const RowMap& ym, const float* decay, const float* Hin, const uint16_t* Hs, uint16_t* out,
                float* last, float* dL, int64_t BH, int64_t N, int64_t c, cudaStream_t stream) {
  if (rev) {
    launch<BF, D, true, false, WG>(x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
  } else if (ones) {
    launch<BF, D, false, true, WG>(x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
  } else {
    launch<BF, D, false, false, WG>(x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
  }
}

template <int D, int WG>
void launch_wg(bool bf16_x, bool rev, bool ones, const uint16_t* x, const RowMap& xm, const float* rs,
               const uint16_t* y, const RowMap& ym, const float* decay, const float* Hin, const uint16_t* Hs,
               uint16_t* out, float* last, float* dL, int64_t BH, int64_t N, int64_t c, cudaStream_t stream) {
  bf16_x ? launch_dir<true, D, WG>(rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream)
         : launch_dir<false, D, WG>(rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
}

}  // namespace

bool scan_supported(int64_t d) { return d == 64 || d == 128; }

// d = 64: two warpgroups a CTA (20 CTAs a head) where that leaves every CTA a multiprocessor of its own, else four
// (256 features, 10 CTAs a head: the head's rows read once for 256 features; at b h = 8 on the H200 four warpgroups
// in 80 CTAs take both scans in 3.17 ms, two in 160 CTAs, some multiprocessors holding two, 3.48); d = 128: two
// (four do not fit the registers).
int scan_default_wg(int64_t d, int64_t BH, int sms) {
  if (d == 64) return BH * (ScanTraits<64, 2>::PARTS) <= sms ? 2 : 4;
  return 2;
}

unsigned scan_shapes(int64_t d) { return d == 64 ? 0b111u : d == 128 ? 0b011u : 0u; }

int scan_env_wg(int64_t d, bool rev) {
  const char* env = std::getenv("POWER_ATTENTION_SCAN_WG");
  if (env == nullptr || env[0] == '\0') return 0;
  const char* comma = std::strchr(env, ',');
  const int wg = std::atoi(rev && comma != nullptr ? comma + 1 : env);
  const bool built = wg > 0 && (wg & (wg - 1)) == 0 && wg <= 4 && (scan_shapes(d) & static_cast<unsigned>(wg));
  return built ? wg : 0;
}

void scan_launch(bool bf16_x, int64_t d, bool rev, bool ones, const uint16_t* x, const RowMap& xm, const float* rs,
                 const uint16_t* y, const RowMap& ym, const float* decay, const float* Hin, const uint16_t* Hs,
                 uint16_t* out, float* last, float* dL, int64_t BH, int64_t N, int64_t c, int wg,
                 cudaStream_t stream) {
  if (BH == 0 || N == 0) return;
  if (wg == 0) wg = scan_env_wg(d, rev);
  if (wg == 0) {
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    wg = scan_default_wg(d, BH, sms);
  }
  const bool built = wg > 0 && (wg & (wg - 1)) == 0 && wg <= 4 && (scan_shapes(d) & static_cast<unsigned>(wg));
  if (!built)
    throw std::runtime_error("power_full: sm_90a scan kernel: no kernel for d = " + std::to_string(d) + " with " +
                             std::to_string(wg) + " warpgroups");
  if (d == 64) {
    if (wg == 4) {
      launch_wg<64, 4>(bf16_x, rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
    } else if (wg == 2) {
      launch_wg<64, 2>(bf16_x, rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
    } else {
      launch_wg<64, 1>(bf16_x, rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
    }
  } else {
    if (wg == 2) {
      launch_wg<128, 2>(bf16_x, rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
    } else {
      launch_wg<128, 1>(bf16_x, rev, ones, x, xm, rs, y, ym, decay, Hin, Hs, out, last, dL, BH, N, c, stream);
    }
  }
}

}  // namespace sm90
}  // namespace sympow2
}  // namespace cuda
}  // namespace power_attention
