// max_abs.cu: the largest |x| of each row and of each head of an operand [b, t, H, w] (power_full_cuda.h), one pass
// over x in its own strides, for the magnitudes the API layer checks before every call (magnitudes.h); and the
// extremes read back from them (extremes): the rows' and heads' largest and smallest positive max-abs and the largest
// log gate, gathered by the same passes (one atomic a CTA) and one CTA at the end.
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
#include <vector>

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

// The extremes a pass gathers (extremes): every row's max-abs into rows[0] (the largest, as bits) and rows[1] (the
// smallest positive one, kept as 0xffffffff - bits so that atomicMax finds it and zero stands for none); the log
// gates of the CTA's tokens (when lg is given) into gate (ordered bits, zero for none). Null `rows`: nothing.
struct Gather {
  uint32_t* rows = nullptr;  // [2], zeroed by the caller
  uint32_t* gate = nullptr;  // [1], zeroed by the caller (with lg)
  const float* lg = nullptr;  // log gates [b, t, H] at strides lsb, lst, lsh
  int64_t lsb = 0, lst = 0, lsh = 0;
};

// A float's bits in an order that unsigned comparison keeps (negative numbers below positive ones; every NaN as the
// positive quiet NaN, above +inf, as at::max returns NaN when one is there); never zero.
__device__ __forceinline__ uint32_t ordered_bits(float x) {
  const uint32_t b = x != x ? 0x7fc00000u : __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The CTA's part of the extremes: rmax / rmin (the largest and the smallest positive, non-NaN row max-abs of this
// thread's rows, as bits; rmin 0xffffffff: none), the gates of tokens [t0, t1) of (bi, hi). Every thread calls it.
__device__ __forceinline__ void gather(const Gather& ga, uint32_t rmax, uint32_t rmin, int64_t bi, int64_t hi,
                                       int64_t t0, int64_t t1) {
  __shared__ uint32_t part[3][kWarps];
  uint32_t gmax = 0;
  if (ga.lg)
    for (int64_t tok = t0 + threadIdx.x; tok < t1; tok += kWarps * 32)
      gmax = max(gmax, ordered_bits(ga.lg[bi * ga.lsb + tok * ga.lst + hi * ga.lsh]));
  rmax = __reduce_max_sync(0xffffffffu, rmax);
  rmin = __reduce_min_sync(0xffffffffu, rmin);
  gmax = __reduce_max_sync(0xffffffffu, gmax);
  if ((threadIdx.x & 31) == 0) {
    part[0][threadIdx.x >> 5] = rmax;
    part[1][threadIdx.x >> 5] = rmin;
    part[2][threadIdx.x >> 5] = gmax;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kWarps; ++i) {
      rmax = max(rmax, part[0][i]);
      rmin = min(rmin, part[1][i]);
      gmax = max(gmax, part[2][i]);
    }
    if (ga.rows) {
      atomicMax(ga.rows, rmax);
      if (rmin != 0xffffffffu) atomicMax(ga.rows + 1, 0xffffffffu - rmin);
    }
    if (ga.lg) atomicMax(ga.gate, gmax);
  }
}

// A row's max-abs m (bits) into this thread's rmax / rmin.
__device__ __forceinline__ void note_row(uint32_t m, uint32_t& rmax, uint32_t& rmin) {
  rmax = max(rmax, m);
  if (m > 0 && m <= 0x7f800000u) rmin = min(rmin, m);
}

// rows_out [b, t, H] (or null), heads_out [b, H] as fp32 bits, zeroed by the caller (or null)
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    max_abs_kernel(const T* __restrict__ x, int64_t sb, int64_t st, int64_t sh, int64_t t, int64_t H, int w,
                   int64_t tiles, float* __restrict__ rows_out, uint32_t* __restrict__ heads_out, Gather ga) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, bi = bh / H, hi = bh % H;
  const T* xh = x + bi * sb + hi * sh;
  const int64_t t0 = tile * kTokens, t1 = t0 + kTokens < t ? t0 + kTokens : t;
  uint32_t head = 0, rmax = 0, rmin = 0xffffffffu;
  for (int64_t tok = t0 + warp; tok < t1; tok += kWarps) {
    const T* row = xh + tok * st;
    uint32_t m = 0;
    for (int i = lane; i < w; i += 32) m = max(m, abs_bits<T>(row[i]));
    m = __reduce_max_sync(0xffffffffu, m);
    if (rows_out && lane == 0) rows_out[(bi * t + tok) * H + hi] = __uint_as_float(m);
    head = max(head, m);
    note_row(m, rmax, rmin);
  }
  if (heads_out) head_max(head, heads_out + bh);
  if (ga.rows || ga.lg) gather(ga, rmax, rmin, bi, hi, t0, t1);
}

// The same with 16-byte loads: a row is L vectors of 16 bytes (L a power of two up to 32), a CTA's rows laid
// end to end over its threads, so that a row's vectors sit in L neighbouring lanes.
template <typename T, int L>
__global__ void __launch_bounds__(kWarps * 32)
    max_abs_vec_kernel(const T* __restrict__ x, int64_t sb, int64_t st, int64_t sh, int64_t t, int64_t H,
                       int64_t tiles, float* __restrict__ rows_out, uint32_t* __restrict__ heads_out, Gather ga) {
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
  uint32_t head = 0, rmax = 0, rmin = 0xffffffffu;
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
    if (item < kItems && tl < ntok) note_row(m, rmax, rmin);
  }
  if (heads_out) head_max(head, heads_out + bh);
  if (ga.rows || ga.lg) gather(ga, rmax, rmin, bi, hi, t0, t0 + ntok);
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
void launch(const at::Tensor& x, float* rows_out, uint32_t* heads_out, const Gather& ga) {
  const int64_t b = x.size(0), t = x.size(1), H = x.size(2), w = x.size(3);
  const int64_t tiles = (t + kTokens - 1) / kTokens, blocks = tiles * b * H;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "power_full: internal: too many rows for one max-abs launch (", blocks, ")");
  const T* p = reinterpret_cast<const T*>(x.data_ptr());
  const unsigned grid = static_cast<unsigned>(blocks);
  int L = 0;
  if (vector_rows(x, &L)) {
    const auto run = [&](auto kernel) {
      kernel<<<grid, kWarps * 32, 0, stream()>>>(p, x.stride(0), x.stride(1), x.stride(2), t, H, tiles, rows_out,
                                                 heads_out, ga);
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
                                                          static_cast<int>(w), tiles, rows_out, heads_out, ga);
  }
  check_launch();
}

void max_abs(const at::Tensor& x, float* rows_out, uint32_t* heads_out, const Gather& ga = {}) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.numel() > 0,
              "power_full: internal: max_abs takes a non-empty [b, t, H, w] with unit stride rows, got ", x.sizes(),
              " strides ", x.strides());
  switch (x.scalar_type()) {
    case at::kFloat: return launch<float>(x, rows_out, heads_out, ga);
    case at::kBFloat16: return launch<__nv_bfloat16>(x, rows_out, heads_out, ga);
    case at::kHalf: return launch<__half>(x, rows_out, heads_out, ga);
    default: TORCH_CHECK(false, "power_full: internal: max_abs takes fp32 or 16-bit tensors, got ", x.scalar_type());
  }
}


// The extremes as fp64 (extremes): from the rows' gather of q, the heads' max-abs of k ([nh] bits) and the gates'
// gather (when `gate`). One CTA.
__global__ void __launch_bounds__(kWarps * 32)
    extremes_finish_kernel(const uint32_t* __restrict__ qrows, const uint32_t* __restrict__ heads, int64_t nh,
                           const uint32_t* __restrict__ gate, double* __restrict__ out) {
  __shared__ uint32_t part[2][kWarps];
  uint32_t kmax = 0, kmin = 0x7f800000u;  // inf where no head is positive
  for (int64_t i = threadIdx.x; i < nh; i += kWarps * 32) {
    const uint32_t m = heads[i];
    kmax = max(kmax, m);
    if (m > 0 && m <= 0x7f800000u) kmin = min(kmin, m);
  }
  kmax = __reduce_max_sync(0xffffffffu, kmax);
  kmin = __reduce_min_sync(0xffffffffu, kmin);
  if ((threadIdx.x & 31) == 0) part[0][threadIdx.x >> 5] = kmax, part[1][threadIdx.x >> 5] = kmin;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int i = 1; i < kWarps; ++i) kmax = max(kmax, part[0][i]), kmin = min(kmin, part[1][i]);
  const uint32_t qmin = qrows[1] == 0 ? 0x7f800000u : 0xffffffffu - qrows[1];
  out[0] = static_cast<double>(__uint_as_float(qrows[0]));
  out[1] = static_cast<double>(__uint_as_float(qmin));
  out[2] = static_cast<double>(__uint_as_float(kmax));
  out[3] = static_cast<double>(__uint_as_float(kmin));
  if (gate) {
    const uint32_t u = *gate;
    out[4] = static_cast<double>(__uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u));
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

bool extremes_supported(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
  return max_abs_supported(q) && max_abs_supported(k) &&
         (!log_g.defined() || (log_g.scalar_type() == at::kFloat && log_g.dim() == 3 && log_g.device() == k.device() &&
                               log_g.size(0) == k.size(0) && log_g.size(1) == k.size(1) && log_g.size(2) == k.size(2)));
}

std::vector<at::Tensor> extremes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& log_g) {
  TORCH_CHECK(extremes_supported(q, k, log_g), "power_full: internal: extremes of q ", q.sizes(), ", k ", k.sizes());
  const int64_t nh = k.size(0) * k.size(2);
  // one zeroed buffer: the heads' max-abs of k [nh], q's rows' gather [2], the gates' [1]
  at::Tensor bits = at::zeros({nh + 3}, k.options().dtype(at::kInt));
  uint32_t* heads = reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>());
  at::Tensor qa = at::empty({q.size(0), q.size(1), q.size(2), 1}, q.options().dtype(at::kFloat));
  Gather gq;
  gq.rows = heads + nh;
  max_abs(q, qa.data_ptr<float>(), nullptr, gq);
  Gather gk;
  if (log_g.defined()) {
    gk.gate = heads + nh + 2;
    gk.lg = log_g.data_ptr<float>();
    gk.lsb = log_g.stride(0), gk.lst = log_g.stride(1), gk.lsh = log_g.stride(2);
  }
  max_abs(k, nullptr, heads, gk);
  at::Tensor stats = at::empty({log_g.defined() ? 5 : 4}, q.options().dtype(at::kDouble));
  extremes_finish_kernel<<<1, kWarps * 32, 0, stream()>>>(heads + nh, heads, nh, log_g.defined() ? heads + nh + 2 : nullptr,
                                                          stats.data_ptr<double>());
  check_launch();
  return {qa, bits.narrow(0, 0, nh).view(at::kFloat).view({k.size(0), 1, k.size(2), 1}), stats};
}

}  // namespace cuda
}  // namespace power_attention
