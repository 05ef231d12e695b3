// query_check.cu: the sm_90a query kernel (cuda/sympow2/query_sm90.cuh) checked and timed outside the library: nvcc
// and LibTorch's headers (the row map's operand.h), no LibTorch calls (run.sh beside this file), every CTA shape
// of QueryShape, not only the library's. The harness (../kernel_checks.cpp) checks the library's shapes against the
// sm_80 kernel and ATen, and the op against the fp64 oracle; this program checks each shape against a direct
// evaluation:
//   B[x, r, j] = sum_f phi'(x_r)[f] H[x, f, j], phi' made exactly as the kernels make it (c_AB (rs x_a) x_b rounded
//   once to bf16), summed in fp64 on the host: the kernel's error is then its fp32 accumulation alone (~1e-6);
// and against phi' in fp64 (the bf16 operand rounding, ~1e-3). Outputs start as NaN; rows through a chunk map of
// the API layout (padding rows read as zeros), the combination epilogue (y, den, y in the input dtype) too.
//   query_check [check|time]
#include "cuda/common/sm90_select.h"
#include "cuda/sympow2/query_sm90.cuh"
#include "cuda/sympow2/query_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace pc = power_attention::cuda;
namespace ps = power_attention::cuda::sympow2;

namespace {

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));  \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

float bf(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t to_bf(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float hf(uint16_t v) { return __half2float(__ushort_as_half(v)); }
uint16_t to_hf(float f) { return __half_as_ushort(__float2half_rn(f)); }

template <typename T>
T* dev(const std::vector<T>& h) {
  T* p = nullptr;
  CK(cudaMalloc(&p, h.size() * sizeof(T) + 16));
  CK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
template <typename T>
std::vector<T> host(const T* p, size_t n) {
  std::vector<T> h(n);
  CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
void nan_fill(void* p, size_t bytes) { CK(cudaMemset(p, 0xff, bytes)); }  // all-ones: NaN in fp32 and bf16

double rel(const std::vector<float>& a, const std::vector<double>& r) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - r[i]) * (a[i] - r[i]);
    den += r[i] * r[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The caller's layout [b, t, h g, w], contiguous, in chunks of c tokens (N a head): what RowMap::of makes of such
// a tensor (operand.h), without one.
pc::RowMap api_map(int64_t t, int64_t h, int64_t g, int64_t w, int64_t N, int64_t c) {
  pc::RowMap m;
  m.sb = t * h * g * w, m.ld = h * g * w, m.sm = w, m.sh = g * w;
  m.h = static_cast<int>(h), m.g = static_cast<int>(g), m.w = static_cast<int>(w);
  m.N = static_cast<int>(N), m.sn = c * h * g * w, m.c = c, m.t = t;
  return m;
}

// A kernel shape to run: the library's (query_launch: default or wide) or one of query_sm90.cuh's QueryShape
// variants (d = 64).
using Launch = void (*)(bool bfx, int64_t d, const uint16_t* x, const pc::RowMap& xm, const float* rs,
                        const uint16_t* H, float* out, int64_t X, int64_t n, int cols, const ps::Combine& cmb);
template <bool WIDE>
void library(bool bfx, int64_t d, const uint16_t* x, const pc::RowMap& xm, const float* rs, const uint16_t* H,
             float* out, int64_t X, int64_t n, int cols, const ps::Combine& cmb) {
  ps::sm90::query_launch(bfx, d, WIDE, x, xm, rs, H, out, X, n, cols, cmb, nullptr);
}
template <int WG, int MT, bool PACKED, int SYNC = 0, bool XREG = false>
void variant(bool bfx, int64_t d, const uint16_t* x, const pc::RowMap& xm, const float* rs, const uint16_t* H,
             float* out, int64_t X, int64_t n, int cols, const ps::Combine& cmb) {
  using S = ps::sm90::QueryShape<WG, MT, PACKED, SYNC, XREG>;
  const cudaError_t err =
      d != 64 ? cudaErrorInvalidValue
      : bfx   ? ps::sm90::query_launch_shape<true, 64, S>(x, xm, rs, H, out, X, n, cols, cmb, nullptr)
              : ps::sm90::query_launch_shape<false, 64, S>(x, xm, rs, H, out, X, n, cols, cmb, nullptr);
  if (err != cudaSuccess) {
    std::fprintf(stderr, "variant launch failed: %s\n", cudaGetErrorString(err));
    std::exit(2);
  }
}
struct Variant {
  const char* name;
  Launch fn;
  bool any_d;  // the library's launch: every d it supports, else d = 64 only
};
const Variant kVariants[] = {{"library", library<false>, true},
                             {"library-wide", library<true>, true},
                             {"wg1-mt2", variant<1, 2, false>},
                             {"wg2-mt1", variant<2, 1, false>},
                             {"wg4-mt1", variant<4, 1, false>},
                             {"wg4-mt1-mbar", variant<4, 1, false, 1>},
                             {"wg4-mt1-xreg", variant<4, 1, false, 0, true>},
                             {"wg4-mt1-xreg-mbar2", variant<4, 1, false, 2, true>},
                             {"wg2-mt2-xreg", variant<2, 2, false, 0, true>},
                             {"wg2-mt1-xreg", variant<2, 1, false, 0, true>},
                             {"wg4-mt1-mbar2", variant<4, 1, false, 2>},
                             {"wg2-mt1-mbar2", variant<2, 1, false, 2>},
                             {"wg2-mt2", variant<2, 2, false>},
                             {"wg2-mt1-packed", variant<2, 1, true>},
                             {"wg1-mt2-packed", variant<1, 2, true>}};

int failures = 0;
void report(const char* what, double err, double tol) {
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("  %-58s %.3e  (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
}

// One check: X blocks of n rows of x through map (dense when api is false), d, bf16 or fp16 x.
void check(int64_t d, bool bfx, bool api, bool combine, std::mt19937_64& rng, const Variant& v = kVariants[0]) {
  const int64_t nb = d / 16, D2 = 256 * nb * (nb + 1) / 2, E = d + 8, e = d;
  // shape: dense X = 5 blocks of n = 200; api: b = 1, t = 300, h = 2, g = 2, c = 128 -> N = 3, n = 256, X = 6
  const int64_t b = 1, t = 300, h = 2, g = 2, c = 128, N = 3;
  const int64_t X = api ? b * h * N : 5, n = api ? c * g : 200;
  pc::RowMap map = api ? api_map(t, h, g, d, N, c) : pc::RowMap::dense(n, d);
  const int64_t xelems = api ? b * t * h * g * d : X * n * d;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.5f, 1.5f);
  std::vector<uint16_t> xs(xelems);
  for (auto& v : xs) v = bfx ? to_bf(nd(rng)) : to_hf(nd(rng));
  std::vector<float> rs(X * n);
  for (auto& v : rs) v = ud(rng);
  std::vector<uint16_t> H(X * D2 * E);
  for (auto& v : H) v = to_bf(0.1f * nd(rng));
  // dense copy of the rows the kernel sees (rows past t: zeros)
  std::vector<float> xd(X * n * d, 0.f);
  for (int64_t bx = 0; bx < X; ++bx)
    for (int64_t r = 0; r < map.rows(bx, n); ++r)
      for (int64_t k = 0; k < d; ++k) {
        const uint16_t v = xs[map.base(bx) + map.row(r) + k];
        xd[(bx * n + r) * d + k] = bfx ? bf(v) : hf(v);
      }
  // references: phi as the kernels round it (fp64 sums) and phi in fp64
  std::vector<double> Bk(X * n * E), Bx(X * n * E);
  std::vector<float> phik(D2);
  std::vector<double> phix(D2);
  for (int64_t bx = 0; bx < X; ++bx)
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = &xd[(bx * n + r) * d];
      const float s = rs[bx * n + r];
      int64_t f = 0;
      for (int64_t A = 0; A < nb; ++A)
        for (int64_t a = 0; a < 16; ++a)
          for (int64_t B = A; B < nb; ++B)
            for (int64_t bb = 0; bb < 16; ++bb, ++f) {
              const float cab = A == B ? 1.f : 1.41421356237309504880f;
              const float w = s * xr[16 * A + a], ca = cab * w;
              phik[f] = bf(to_bf(xr[16 * B + bb] * ca));
              phix[f] = (A == B ? 1.0 : std::sqrt(2.0)) * s * static_cast<double>(xr[16 * A + a]) * xr[16 * B + bb];
            }
      for (int64_t j = 0; j < E; ++j) {
        double sk = 0, sx = 0;
        for (int64_t f2 = 0; f2 < D2; ++f2) {
          const double hv = bf(H[(bx * D2 + f2) * E + j]);
          sk += phik[f2] * hv;
          sx += phix[f2] * hv;
        }
        Bk[(bx * n + r) * E + j] = sk;
        Bx[(bx * n + r) * E + j] = sx;
      }
    }
  uint16_t* dx = dev(xs);
  float* drs = dev(rs);
  uint16_t* dH = dev(H);
  char id[160];
  std::snprintf(id, sizeof id, "%s: d%ld %s %s %s", v.name, static_cast<long>(d), bfx ? "bf16" : "fp16",
                api ? "api-map" : "dense", combine ? "combine" : "B");
  std::printf("%s (X %ld, n %ld)\n", id, static_cast<long>(X), static_cast<long>(n));
  if (!combine) {
    for (int cols : {static_cast<int>(E), static_cast<int>(e)}) {
      float* out = nullptr;
      CK(cudaMalloc(&out, X * n * cols * sizeof(float)));
      nan_fill(out, X * n * cols * sizeof(float));
      v.fn(bfx, d, dx, map, drs, dH, out, X, n, cols, ps::Combine{});
      CK(cudaDeviceSynchronize());
      const std::vector<float> o = host(out, X * n * cols);
      std::vector<double> rk(o.size()), rx(o.size());
      for (int64_t i = 0; i < X * n; ++i)
        for (int j = 0; j < cols; ++j) rk[i * cols + j] = Bk[i * E + j], rx[i * cols + j] = Bx[i * E + j];
      char w[120];
      std::snprintf(w, sizeof w, "B (%d cols) vs phi rounded as the kernels do", cols);
      const bool packed = std::strstr(v.name, "packed") != nullptr;
      report(w, rel(o, rk), packed ? 1e-2 : d >= 128 ? 3e-5 : 1e-5);
      std::snprintf(w, sizeof w, "B (%d cols) vs phi in fp64", cols);
      report(w, rel(o, rx), 1e-2);
      CK(cudaFree(out));
    }
  } else {
    std::vector<float> numA(X * n * e), l(X * n), m(X * n), gc(X * (n / g));
    std::vector<double> mu(X);
    // den = l wa + B[e] ws kept far from 0 (B[e] is ~ +-6 here, wa mostly in [0.3, 1]): a near-zero den would
    // amplify the fp32 / fp64 difference of B into y
    for (auto& v : numA) v = nd(rng);
    for (auto& v : l) v = 1000.f + ud(rng);
    for (auto& v : m) v = 0.5f * nd(rng);
    for (auto& v : gc) v = -0.5f * std::fabs(nd(rng));
    for (auto& v : mu) v = 0.0;
    mu[0] = -INFINITY;  // an empty state
    // references (B rounded as the kernels round phi)
    std::vector<double> yr(X * n * e), denr(X * n);
    for (int64_t bx = 0; bx < X; ++bx)
      for (int64_t r = 0; r < n; ++r) {
        const int64_t rw = bx * n + r;
        double wa = 1, ws = 0;
        if (mu[bx] != -INFINITY) {
          const double dd = static_cast<double>(static_cast<float>(static_cast<double>(gc[bx * (n / g) + r / g] - m[rw]) + mu[bx]));
          wa = std::exp(std::min(-dd, 0.0));
          ws = std::exp(std::min(dd, 0.0));
        }
        const double dn = l[rw] * wa + Bk[rw * E + e] * ws;
        denr[rw] = dn;
        for (int64_t j = 0; j < e; ++j) yr[rw * e + j] = (numA[rw * e + j] * wa + Bk[rw * E + j] * ws) / dn;
      }
    float *dnum = dev(numA), *dl = dev(l), *dm = dev(m), *dgc = dev(gc);
    double* dmu = dev(mu);
    float *dy = nullptr, *dden = nullptr;
    uint16_t* dyo = nullptr;
    CK(cudaMalloc(&dy, X * n * e * 4));
    CK(cudaMalloc(&dden, X * n * 4));
    CK(cudaMalloc(&dyo, xelems * 2));
    nan_fill(dy, X * n * e * 4);
    nan_fill(dden, X * n * 4);
    nan_fill(dyo, xelems * 2);
    ps::Combine cmb;
    cmb.numA = dnum, cmb.l = dl, cmb.m = dm, cmb.gc = dgc, cmb.mu = dmu, cmb.g = static_cast<int>(g), cmb.y = dy;
    cmb.den = dden, cmb.yo = dyo, cmb.map = map;
    v.fn(bfx, d, dx, map, drs, dH, nullptr, X, n, static_cast<int>(E), cmb);
    CK(cudaDeviceSynchronize());
    const double tb = std::strstr(v.name, "packed") ? 1e-2 : d >= 128 ? 3e-5 : 1e-5;
    const std::vector<float> yk = host(dy, X * n * e);
    const double ey = rel(yk, yr);
    report("y vs the combination of B (phi rounded as the kernels do)", ey, tb);
    if (ey > tb) {  // where: the row with the largest error, and its terms
      size_t worst = 0;
      double wmax = -1;
      for (size_t i = 0; i < yk.size(); ++i) {
        const double err = std::fabs(yk[i] - yr[i]);
        if (err > wmax) wmax = err, worst = i;
      }
      const int64_t rw = static_cast<int64_t>(worst) / e, bx = rw / n, r = rw % n, j = static_cast<int64_t>(worst) % e;
      std::printf("    worst: block %ld row %ld (exists: %d) column %ld: y %.6e, reference %.6e; den %.6e, B[e] %.6e, "
                  "B[j] %.6e, numA %.6e, m %.4f, gc %.4f, mu %g\n",
                  static_cast<long>(bx), static_cast<long>(r), r < map.rows(bx, n) ? 1 : 0, static_cast<long>(j),
                  yk[worst], yr[worst], denr[rw], Bk[rw * E + e], Bk[rw * E + j], numA[rw * e + j], m[rw],
                  gc[bx * (n / g) + r / g], mu[bx]);
    }
    report("den", rel(host(dden, X * n), denr), tb);
    const std::vector<uint16_t> yo = host(dyo, xelems);
    std::vector<float> yo_rows;
    std::vector<double> yo_ref;
    for (int64_t bx = 0; bx < X; ++bx)
      for (int64_t r = 0; r < map.rows(bx, n); ++r)
        for (int64_t j = 0; j < e; ++j) {
          const uint16_t v = yo[map.base(bx) + map.row(r) + j];
          yo_rows.push_back(bfx ? bf(v) : hf(v));
          yo_ref.push_back(yr[(bx * n + r) * e + j]);
        }
    report("y in the input dtype through the map", rel(yo_rows, yo_ref), 1e-2);
    for (void* p : {static_cast<void*>(dnum), static_cast<void*>(dl), static_cast<void*>(dm), static_cast<void*>(dgc),
                    static_cast<void*>(dmu), static_cast<void*>(dy), static_cast<void*>(dden), static_cast<void*>(dyo)})
      CK(cudaFree(p));
  }
  CK(cudaFree(dx));
  CK(cudaFree(drs));
  CK(cudaFree(dH));
}

// Deterministic pseudo-random bf16 values a * (uniform in [-1, 1)) made on the device (the timed shapes hold GBs).
__global__ void fill_bf16(uint16_t* p, int64_t n, float a, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const __nv_bfloat16 v = __float2bfloat16(a * (static_cast<float>(h >> 8) * (2.f / 16777216.f) - 1.f));
    p[i] = __bfloat16_as_ushort(v);
  }
}
uint16_t* dev_random(int64_t n, float a, uint32_t seed) {
  uint16_t* p = nullptr;
  CK(cudaMalloc(&p, n * 2));
  fill_bf16<<<1024, 256>>>(p, n, a, seed);
  CK(cudaGetLastError());
  return p;
}

// Median time of each variant at the benchmark's shapes (b t = 65536 tokens, h = 8, d = 64; d = 128: h = 4).
void time_shapes() {
  struct S {
    int64_t t, chunk, d;
    bool combine;
  };
  for (const S s : {S{16384, 256, 64, false}, S{16384, 256, 64, true}, S{65536, 512, 64, false},
                    S{65536, 512, 64, true}, S{16384, 256, 128, false}}) {
    const int64_t b = 65536 / s.t, h = s.d == 128 ? 4 : 8, N = s.t / s.chunk, X = b * h * N, n = s.chunk;
    const int64_t d = s.d, nb = d / 16, D2 = 256 * nb * (nb + 1) / 2, E = d + 8;
    uint16_t *dx = dev_random(X * n * d, 2.f, 1), *dH = dev_random(X * D2 * E, 0.1f, 2);
    std::vector<float> rs(X * n, 0.9f);
    float* drs = dev(rs);
    float* out = nullptr;
    CK(cudaMalloc(&out, X * n * E * 4));
    ps::Combine cmb;
    std::vector<float> zf(X * n * d, 0.5f), lf(X * n, 1.f), gcf(X * n, -0.1f);
    std::vector<double> muf(X, 0.0);
    float *dnum = dev(zf), *dl = dev(lf), *dm = dev(gcf), *dgc = dev(gcf), *dy = nullptr, *dden = nullptr;
    double* dmu = dev(muf);
    CK(cudaMalloc(&dy, X * n * d * 4));
    CK(cudaMalloc(&dden, X * n * 4));
    if (s.combine) cmb.numA = dnum, cmb.l = dl, cmb.m = dm, cmb.gc = dgc, cmb.mu = dmu, cmb.y = dy, cmb.den = dden;
    const pc::RowMap map = pc::RowMap::dense(n, d);
    for (const Variant& v : kVariants) {
      if (s.d != 64 && !v.any_d) continue;
      auto run = [&] {
        v.fn(true, d, dx, map, drs, dH, out, X, n, static_cast<int>(s.combine ? E : d), cmb);
      };
      for (int i = 0; i < 3; ++i) run();
      CK(cudaDeviceSynchronize());
      cudaEvent_t a, z;
      CK(cudaEventCreate(&a));
      CK(cudaEventCreate(&z));
      std::vector<float> ms;
      for (int i = 0; i < 15; ++i) {
        CK(cudaEventRecord(a));
        run();
        CK(cudaEventRecord(z));
        CK(cudaEventSynchronize(z));
        float t = 0;
        CK(cudaEventElapsedTime(&t, a, z));
        ms.push_back(t);
      }
      CK(cudaEventDestroy(a));
      CK(cudaEventDestroy(z));
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2], flop = 2.0 * X * n * D2 * E;
      char id[120];
      std::snprintf(id, sizeof id, "%s: t%ld c%ld d%ld %s", v.name, static_cast<long>(s.t),
                    static_cast<long>(s.chunk), static_cast<long>(d), s.combine ? "combine" : "B");
      std::printf("%-44s %8ld %8ld %10.4f %10.1f\n", id, static_cast<long>(X), static_cast<long>(n), med,
                  flop / med / 1e9);
    }
    for (void* p : {static_cast<void*>(dx), static_cast<void*>(dH), static_cast<void*>(drs), static_cast<void*>(out),
                    static_cast<void*>(dnum), static_cast<void*>(dl), static_cast<void*>(dm), static_cast<void*>(dgc),
                    static_cast<void*>(dmu), static_cast<void*>(dy), static_cast<void*>(dden)})
      CK(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, capability %d.%d, %d SMs; sm_90a kernels %s\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, pc::sm90a_present(0) ? "present" : "NOT present");
  if (!pc::sm90a_present(0)) return 1;
  if (mode == "check" || mode == "all") {
    std::mt19937_64 rng(std::random_device{}());
    for (bool bfx : {true, false})
      for (bool api : {false, true}) check(64, bfx, api, false, rng);
    check(128, true, false, false, rng);
    check(128, false, true, false, rng);
    for (bool bfx : {true, false}) check(64, bfx, true, true, rng);
    check(128, true, true, true, rng);
    for (size_t i = 1; i < sizeof kVariants / sizeof kVariants[0]; ++i) {
      check(64, true, false, false, rng, kVariants[i]);
      check(64, false, true, true, rng, kVariants[i]);
    }
    std::printf("%s: %d failures\n", failures ? "FAILED" : "passed", failures);
  }
  if (mode == "time" || mode == "all") {
    std::printf("%-44s %8s %8s %10s %10s\n", "shape", "X", "n", "ms", "TFLOP/s");
    time_shapes();
  }
  return failures ? 1 : 0;
}
