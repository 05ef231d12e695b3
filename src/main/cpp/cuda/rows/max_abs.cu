// max_abs.cu: the largest |x| of each row and of each head of an operand [b, t, H, w] (power_full_cuda.h), one pass
// over x in its own strides, for the magnitudes the API layer checks before every call (magnitudes.h).
//
// A CTA of 8 warps takes kTokens tokens of one (batch, head): rows of 2-32 vectors of 16 bytes spread over its
// threads (max_abs_vec_kernel), other rows a warp a row, its lanes over the row's w elements (max_abs_kernel). |x|
// is compared as the bits of a non-negative float (unsigned order is the numeric order there, and a NaN's bits are
// above every number's), so that a NaN anywhere in a row or head comes out as NaN.
#include "cuda/power_full_cuda.h"

#include "cuda/common/launch.cuh"

#include <ATen/ATen.h>

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace power_attention {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kTokens = 64;

// |x| as the bits of a non-negative fp32 value
template <typename T>
__device__ __forceinline__ uint32_t abs_bits(T x);
template <>
__device__ __forceinline__ uint32_t abs_bits<float>(float x) {
  return __float_as_uint(x) & 0x7fffffffu;
}
template <>
__device__ __forceinline__ uint32_t abs_bits<__nv_bfloat16>(__nv_bfloat16 x) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(x) & 0x7fffu) << 16;  // a bf16 is the top half of an fp32
}
template <>
__device__ __forceinline__ uint32_t abs_bits<__half>(__half x) {
  return __float_as_uint(__half2float(x)) & 0x7fffffffu;
}

// *out = max(*out, the largest of every thread's m): the CTA's part of a head's max-abs (every thread calls it)
__device__ __forceinline__ void head_max(uint32_t m, uint32_t* out) {
  __shared__ uint32_t part[kWarps];
  m = __reduce_max_sync(0xffffffffu, m);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kWarps; ++i) m = max(m, part[i]);
    atomicMax(out, m);
  }
}

// rows_out [b, t, H] (or null), heads_out [b, H] as fp32 bits, zeroed by the caller (or null)
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    max_abs_kernel(const T* __restrict__ x, int64_t sb, int64_t st, int64_t sh, int64_t t, int64_t H, int w,
                   int64_t tiles, float* __restrict__ rows_out, uint32_t* __restrict__ heads_out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, bi = bh / H, hi = bh % H;
  const T* xh = x + bi * sb + hi * sh;
  const int64_t t0 = tile * kTokens, t1 = t0 + kTokens < t ? t0 + kTokens : t;
  uint32_t head = 0;
  for (int64_t tok = t0 + warp; tok < t1; tok += kWarps) {
    const T* row = xh + tok * st;
    uint32_t m = 0;
    for (int i = lane; i < w; i += 32) m = max(m, abs_bits<T>(row[i]));
    m = __reduce_max_sync(0xffffffffu, m);
    if (rows_out && lane == 0) rows_out[(bi * t + tok) * H + hi] = __uint_as_float(m);
    head = max(head, m);
  }
  if (heads_out) head_max(head, heads_out + bh);
}

// The same with 16-byte loads: a row is L vectors of 16 bytes (L a power of two up to 32), a CTA's rows laid
// end to end over its threads, so that a row's vectors sit in L neighbouring lanes.
template <typename T, int L>
__global__ void __launch_bounds__(kWarps * 32)
    max_abs_vec_kernel(const T* __restrict__ x, int64_t sb, int64_t st, int64_t sh, int64_t t, int64_t H,
                       int64_t tiles, float* __restrict__ rows_out, uint32_t* __restrict__ heads_out) {
  constexpr int kItems = kTokens * L, kStep = kWarps * 32, kPer = 16 / sizeof(T);
  const int64_t tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, bi = bh / H, hi = bh % H;
  const T* xh = x + bi * sb + hi * sh;
  const int64_t t0 = tile * kTokens, ntok = t0 + kTokens < t ? kTokens : t - t0;
  uint4 raw[(kItems + kStep - 1) / kStep];
#pragma unroll
  for (int i = 0; i < (kItems + kStep - 1) / kStep; ++i) {  // every load in flight before any is used
    const int item = threadIdx.x + i * kStep, tl = item / L, vec = item % L;
    raw[i] = item < kItems && tl < ntok ? *reinterpret_cast<const uint4*>(xh + (t0 + tl) * st + vec * kPer)
                                        : make_uint4(0, 0, 0, 0);
  }
  uint32_t head = 0;
#pragma unroll
  for (int i = 0; i < (kItems + kStep - 1) / kStep; ++i) {
    const int item = threadIdx.x + i * kStep, tl = item / L;
    const T* e = reinterpret_cast<const T*>(&raw[i]);
    uint32_t m = 0;
#pragma unroll
    for (int j = 0; j < kPer; ++j) m = max(m, abs_bits<T>(e[j]));
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (rows_out && item % L == 0 && item < kItems && tl < ntok) rows_out[(bi * t + t0 + tl) * H + hi] = __uint_as_float(m);
    head = max(head, m);
  }
  if (heads_out) head_max(head, heads_out + bh);
}

// Whether x's rows can be read 16 bytes at a time: aligned, every stride a multiple of 16 bytes, a row 2-32 vectors.
bool vector_rows(const at::Tensor& x, int* vectors) {
  const int64_t es = x.element_size(), bytes = x.size(3) * es;
  if (bytes % 16 != 0 || reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 != 0) return false;
  for (int i = 0; i < 3; ++i)
    if (x.size(i) > 1 && (x.stride(i) * es) % 16 != 0) return false;
  const int64_t L = bytes / 16;
  if (L < 2 || L > 32 || (L & (L - 1)) != 0) return false;
  *vectors = static_cast<int>(L);
  return true;
}

template <typename T>
void launch(const at::Tensor& x, float* rows_out, uint32_t* heads_out) {
  const int64_t b = x.size(0), t = x.size(1), H = x.size(2), w = x.size(3);
  const int64_t tiles = (t + kTokens - 1) / kTokens, blocks = tiles * b * H;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "power_full: internal: too many rows for one max-abs launch (", blocks, ")");
  const T* p = reinterpret_cast<const T*>(x.data_ptr());
  const unsigned grid = static_cast<unsigned>(blocks);
  int L = 0;
  if (vector_rows(x, &L)) {
    const auto run = [&](auto kernel) {
      kernel<<<grid, kWarps * 32, 0, stream()>>>(p, x.stride(0), x.stride(1), x.stride(2), t, H, tiles, rows_out,
                                                 heads_out);
    };
    switch (L) {
      case 2: run(max_abs_vec_kernel<T, 2>); break;
      case 4: run(max_abs_vec_kernel<T, 4>); break;
      case 8: run(max_abs_vec_kernel<T, 8>); break;
      case 16: run(max_abs_vec_kernel<T, 16>); break;
      default: run(max_abs_vec_kernel<T, 32>); break;
    }
  } else {
    max_abs_kernel<T><<<grid, kWarps * 32, 0, stream()>>>(p, x.stride(0), x.stride(1), x.stride(2), t, H,
                                                          static_cast<int>(w), tiles, rows_out, heads_out);
  }
  check_launch();
}

void max_abs(const at::Tensor& x, float* rows_out, uint32_t* heads_out) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.numel() > 0,
              "power_full: internal: max_abs takes a non-empty [b, t, H, w] with unit stride rows, got ", x.sizes(),
              " strides ", x.strides());
  switch (x.scalar_type()) {
    case at::kFloat: return launch<float>(x, rows_out, heads_out);
    case at::kBFloat16: return launch<__nv_bfloat16>(x, rows_out, heads_out);
    case at::kHalf: return launch<__half>(x, rows_out, heads_out);
    default: TORCH_CHECK(false, "power_full: internal: max_abs takes fp32 or 16-bit tensors, got ", x.scalar_type());
  }
}

}  // namespace

bool max_abs_supported(const at::Tensor& x) {
  const auto st = x.scalar_type();
  return x.dim() == 4 && x.numel() > 0 && x.stride(3) == 1 &&
         (st == at::kFloat || st == at::kBFloat16 || st == at::kHalf);
}

at::Tensor row_max_abs(const at::Tensor& x) {
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2), 1}, x.options().dtype(at::kFloat));
  max_abs(x, out.data_ptr<float>(), nullptr);
  return out;
}

at::Tensor head_max_abs(const at::Tensor& x) {
  at::Tensor bits = at::zeros({x.size(0), 1, x.size(2), 1}, x.options().dtype(at::kInt));
  max_abs(x, nullptr, reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()));
  return bits.view(at::kFloat);
}

}  // namespace cuda
}  // namespace power_attention
