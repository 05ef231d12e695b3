// bench.cpp: the harness's benchmarks: the forward and fwd+bwd table against SDPA, the decode step, and one
// profiled step for ncu.
#include "harness.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace harness {
namespace {

// Median wall time of fn on the GPU's clock, from an idle GPU: the host's work before the first kernel counts. With
// `queued`, a ~5 ms spin kernel goes first, so that fn's kernels are queued behind it: the time of the GPU's work
// alone, as when the host runs ahead (a model of many layers).
template <typename F>
double time_ms(F&& fn, int warmup = 3, int reps = 15, bool queued = false) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaDeviceSynchronize();
  std::vector<double> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < reps; ++i) {
    if (queued) at::cuda::sleep(10000000);
    cudaEventRecord(a, c10::cuda::getCurrentCUDAStream());
    fn();
    cudaEventRecord(b, c10::cuda::getCurrentCUDAStream());
    cudaEventSynchronize(b);
    float x = 0;
    cudaEventElapsedTime(&x, a, b);
    ms.push_back(x);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double peak_mib(const std::function<void()>& fn) {
  cudaDeviceSynchronize();
  c10::cuda::CUDACachingAllocator::emptyCache();
  const int dev = 0;
  c10::cuda::CUDACachingAllocator::resetPeakStats(dev);
  const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const int64_t before = c10::cuda::CUDACachingAllocator::getDeviceStats(dev).allocated_bytes[agg].current;
  fn();
  cudaDeviceSynchronize();
  const int64_t peak = c10::cuda::CUDACachingAllocator::getDeviceStats(dev).allocated_bytes[agg].peak;
  return static_cast<double>(peak - before) / (1 << 20);
}

struct Row {
  std::string impl, pass;
  int64_t t, b, chunk;
  double ms, tflops, mib;
  double gpu_ms;  // time_ms(.., queued): the GPU's work alone
};

}  // namespace

int run_bench(const char* json_path) {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("== benchmark on %s (%d SMs): b*t = 65536, h = 8, d = e = 64, bf16, deg 2, gated ==\n", prop.name,
              prop.multiProcessorCount);
  const int64_t tokens = 65536, h = 8, d = 64;
  std::vector<Row> rows;
  const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  for (int64_t t : {1024, 4096, 16384, 65536}) {
    const int64_t b = tokens / t;
    at::Tensor q = at::randn({b, t, h, d}, o).requires_grad_(true);
    at::Tensor k = at::randn({b, t, h, d}, o).requires_grad_(true);
    at::Tensor v = at::randn({b, t, h, d}, o).requires_grad_(true);
    at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}, o.dtype(at::kFloat)) + 3.0).requires_grad_(true);
    at::Tensor dy = at::randn({b, t, h, d}, o);
    // SDPA: [b, h, t, d], causal (flash backend for bf16 on Hopper)
    {
      at::Tensor qs = q.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor ks = k.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor vs = v.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor dys = dy.transpose(1, 2).contiguous();
      auto fwd = [&] {
        const at::NoGradGuard ng;
        at::scaled_dot_product_attention(qs, ks, vs, {}, 0.0, true);
      };
      auto both = [&] {
        at::Tensor y = at::scaled_dot_product_attention(qs, ks, vs, {}, 0.0, true);
        torch::autograd::grad({y}, {qs, ks, vs}, {dys});
      };
      const double flops = 4.0 * b * h * t * t * d / 2;  // two causal matrix products
      const double f_ms = time_ms(fwd), b_ms = time_ms(both);
      const double fq = time_ms(fwd, 3, 15, true), bq = time_ms(both, 3, 15, true);
      rows.push_back({"sdpa-flash", "fwd", t, b, 0, f_ms, flops / f_ms / 1e9, peak_mib(fwd), fq});
      rows.push_back({"sdpa-flash", "fwd+bwd", t, b, 0, b_ms, 3.5 * flops / b_ms / 1e9, peak_mib(both), bq});
    }
    for (int64_t chunk : {256, 512, 1024}) {
      pa::PowerFullOptions opt;
      opt.chunk_size = chunk;
      auto fwd = [&] {
        const at::NoGradGuard ng;
        pa::power_full(q, k, v, lg, opt);
      };
      auto both = [&] {
        at::Tensor y = pa::power_full(q, k, v, lg, opt);
        torch::autograd::grad({y}, {q, k, v, lg}, {dy});
      };
      const int64_t c = std::min(chunk, t), D = pa::state_dim(d, 2);
      // required work of the chunked algorithm: states (2 D e per token) + queries (2 D e) + causal in-chunk c(d+e)
      const double flops = static_cast<double>(b) * h * t * (4.0 * D * d + static_cast<double>(c) * 2 * d);
      const double f_ms = time_ms(fwd), b_ms = time_ms(both);
      const double fq = time_ms(fwd, 3, 15, true), bq = time_ms(both, 3, 15, true);
      rows.push_back({"power", "fwd", t, b, chunk, f_ms, flops / f_ms / 1e9, peak_mib(fwd), fq});
      rows.push_back({"power", "fwd+bwd", t, b, chunk, b_ms, 3.0 * flops / b_ms / 1e9, peak_mib(both), bq});
    }
  }
  std::printf("%-11s %-8s %6s %4s %6s %10s %14s %9s %10s %8s\n", "impl", "pass", "t", "b", "chunk", "ms", "tokens/s",
              "TFLOP/s", "peak MiB", "gpu ms");
  for (const Row& r : rows)
    std::printf("%-11s %-8s %6ld %4ld %6ld %10.3f %14.0f %9.1f %10.0f %8.3f\n", r.impl.c_str(), r.pass.c_str(), r.t,
                r.b, r.chunk, r.ms, 65536.0 / (r.ms / 1e3), r.tflops, r.mib, r.gpu_ms);
  std::printf("(ms: from an idle GPU, the host's work before the first kernel included; gpu ms: queued behind a spin "
              "kernel, the GPU's work alone)\n");
  if (json_path) {
    FILE* f = std::fopen(json_path, "w");
    if (f) {
      std::fprintf(f, "{\"device\": \"%s\", \"rows\": [\n", prop.name);
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        std::fprintf(f,
                     "  {\"impl\": \"%s\", \"pass\": \"%s\", \"t\": %ld, \"b\": %ld, \"chunk\": %ld, \"ms\": %.4f, "
                     "\"tokens_per_s\": %.0f, \"tflops\": %.2f, \"peak_mib\": %.1f, \"gpu_ms\": %.4f}%s\n",
                     r.impl.c_str(), r.pass.c_str(), r.t, r.b, r.chunk, r.ms, 65536.0 / (r.ms / 1e3), r.tflops, r.mib,
                     r.gpu_ms, i + 1 < rows.size() ? "," : "");
      }
      std::fprintf(f, "]}\n");
      std::fclose(f);
    }
  }
  return 0;
}

// Decode: one token's step from the recurrent state against recomputing the forward over the
// whole context and against a softmax step over a KV cache; b = 1, h = 8, d = e = 64, bf16, deg 2, gated.
int run_decode_bench() {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("== decode on %s: b = 1, h = 8, d = e = 64, bf16, deg 2, gated ==\n", prop.name);
  const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const at::NoGradGuard no_grad;
  const int64_t h = 8, d = 64;
  std::printf("%8s %-26s %10s %12s\n", "context", "method", "ms/token", "memory MiB");
  for (int64_t n : {4096, 65536}) {
    at::Tensor q = at::randn({1, n + 1, h, d}, o), k = at::randn({1, n + 1, h, d}, o), v = at::randn({1, n + 1, h, d}, o);
    at::Tensor lg = at::log_sigmoid(at::randn({1, n + 1, h}, o.dtype(at::kFloat)) + 3.0);
    pa::PowerFullOptions opt;
    opt.chunk_size = 1024;
    auto pre = pa::power_full_with_state(q.narrow(1, 0, n), k.narrow(1, 0, n), v.narrow(1, 0, n), lg.narrow(1, 0, n),
                                         opt, at::Tensor(), at::Tensor());
    const at::Tensor S = pre[1], s = pre[2];
    const at::Tensor q1 = q.select(1, n), k1 = k.select(1, n), v1 = v.select(1, n), g1 = lg.select(1, n);
    const double step = time_ms([&] { pa::power_decode_step(q1, k1, v1, g1, S, s, 2); }, 5, 50);
    const double state_mib = static_cast<double>(S.nbytes() + s.nbytes()) / (1 << 20);
    const double recompute = time_ms([&] { pa::power_full(q, k, v, lg, opt); }, 2, 10);
    // softmax with a KV cache [1, h, n + 1, d]: append the new key/value, attend with the one query
    at::Tensor kc = at::randn({1, h, n + 1, d}, o), vc = at::randn({1, h, n + 1, d}, o);
    const at::Tensor qs = q1.view({1, h, 1, d}), ks = k1.view({1, h, 1, d}), vs = v1.view({1, h, 1, d});
    const double kv = time_ms([&] {
      kc.narrow(2, n, 1).copy_(ks);
      vc.narrow(2, n, 1).copy_(vs);
      at::scaled_dot_product_attention(qs, kc, vc);
    }, 5, 50);
    const double cache_mib = static_cast<double>(kc.nbytes() + vc.nbytes()) / (1 << 20);
    std::printf("%8ld %-26s %10.3f %12.1f\n", n, "power decode step", step, state_mib);
    std::printf("%8ld %-26s %10.3f %12s\n", n, "power full recompute", recompute, "-");
    std::printf("%8ld %-26s %10.3f %12.1f\n", n, "sdpa step over KV cache", kv, cache_mib);
  }
  return 0;
}

// One fwd+bwd of the benchmark's shape at length t (b = 65536 / t, h = 8, d = 64, bf16, gated; chunk 0: the
// quadratic form) between cudaProfilerStart/Stop, for `ncu --profile-from-start off` (per-kernel times).
int run_profile(int64_t chunk, int64_t t) {
  const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t h = 8, d = 64, b = std::max<int64_t>(1, 65536 / t);
  at::Tensor q = at::randn({b, t, h, d}, o).requires_grad_(true), k = at::randn({b, t, h, d}, o).requires_grad_(true);
  at::Tensor v = at::randn({b, t, h, d}, o).requires_grad_(true);
  at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}, o.dtype(at::kFloat)) + 3.0).requires_grad_(true);
  at::Tensor dy = at::randn({b, t, h, d}, o);
  pa::PowerFullOptions opt;
  if (chunk > 0) opt.chunk_size = chunk;
  for (int i = 0; i < 2; ++i) {
    if (i == 1) cudaProfilerStart();
    at::Tensor y = pa::power_full(q, k, v, lg, opt);
    torch::autograd::grad({y}, {q, k, v, lg}, {dy});
    cudaDeviceSynchronize();
  }
  cudaProfilerStop();
  return 0;
}

}  // namespace harness
