// bench.cpp: the harness's benchmarks: the forward and fwd+bwd table of every kernel set against SDPA's flash and
// cuDNN backends, the decode step, and one profiled step for ncu.
#include "harness.h"
#include "checks.h"
#include "magnitudes.h"
#include "path.h"
#include "plan.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/Context.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
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

// SDPA with one backend (flash or cuDNN) while alive: the others and the math fallback disabled, so that a call
// runs that backend or throws; the flags come back after.
class SdpaBackend {
 public:
  explicit SdpaBackend(bool cudnn)
      : flash_(ctx().userEnabledFlashSDP()),
        cudnn_(ctx().userEnabledCuDNNSDP()),
        mem_(ctx().userEnabledMemEfficientSDP()),
        math_(ctx().userEnabledMathSDP()) {
    ctx().setSDPUseFlash(!cudnn);
    ctx().setSDPUseCuDNN(cudnn);
    ctx().setSDPUseMemEfficient(false);
    ctx().setSDPUseMath(false);
  }
  ~SdpaBackend() {
    ctx().setSDPUseFlash(flash_);
    ctx().setSDPUseCuDNN(cudnn_);
    ctx().setSDPUseMemEfficient(mem_);
    ctx().setSDPUseMath(math_);
  }
  SdpaBackend(const SdpaBackend&) = delete;
  SdpaBackend& operator=(const SdpaBackend&) = delete;

 private:
  static at::Context& ctx() { return at::globalContext(); }
  bool flash_, cudnn_, mem_, math_;
};

// The backend at::_fused_sdp_choice names (its values are those of at::SDPBackend).
const char* sdpa_backend_name(int64_t choice) {
  switch (choice) {
    case 0:
      return "math";
    case 1:
      return "flash";
    case 2:
      return "memory-efficient";
    case 3:
      return "cuDNN";
    default:
      return "other";
  }
}

struct Row {
  std::string impl, pass;  // impl: sdpa-flash, sdpa-cudnn, power-<kernel set>
  int64_t t, b, chunk;     // chunk: the option asked (power), 0 (SDPA)
  bool quadratic;          // the form that ran (power: t <= chunk)
  double ms, tflops, mib;
  double gpu_ms;           // time_ms(.., queued): the GPU's work alone
  std::string note;        // why a row has no numbers
};

// One row's forward and fwd+bwd (two rows): times, TFLOP/s from `flops` (a forward; fwd+bwd 3x), peak memory; a
// measurement that throws gives rows without numbers (NaN) and its message.
template <typename F, typename B>
void measure(std::vector<Row>& rows, const std::string& impl, int64_t t, int64_t b, int64_t chunk, bool quadratic,
             double flops, F&& fwd, B&& both) {
  Row f{impl, "fwd", t, b, chunk, quadratic, NAN, NAN, NAN, NAN, ""}, fb = f;
  fb.pass = "fwd+bwd";
  try {
    f.ms = time_ms(fwd);
    fb.ms = time_ms(both);
    f.gpu_ms = time_ms(fwd, 3, 15, true);
    fb.gpu_ms = time_ms(both, 3, 15, true);
    f.mib = peak_mib(fwd);
    fb.mib = peak_mib(both);
    f.tflops = flops / f.ms / 1e9;
    fb.tflops = 3.0 * flops / fb.ms / 1e9;
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    f.note = fb.note = msg.substr(0, msg.find('\n'));
    std::printf("%s t %ld chunk %ld: %s\n", impl.c_str(), t, chunk, f.note.c_str());
  }
  rows.push_back(f);
  rows.push_back(fb);
}

const Row* find(const std::vector<Row>& rows, const std::string& impl, const char* pass, int64_t t, int64_t chunk) {
  for (const Row& r : rows)
    if (r.impl == impl && r.pass == pass && r.t == t && r.chunk == chunk) return &r;
  return nullptr;
}

// "ms (TFLOP/s)" of a row, "-" where there is none, "failed" where its measurement threw.
std::string cell(const Row* r) {
  if (!r) return "-";
  if (std::isnan(r->ms)) return "failed";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f (%.0f)", r->ms, r->tflops);
  return buf;
}

}  // namespace

int run_bench(const char* json_path) {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const std::string def = default_kernel_set();
  std::vector<std::string> sets = {def};
  for (const std::string& s : other_kernel_sets()) sets.push_back(s);
  std::printf("== benchmark on %s (%d SMs): b*t = 65536, h = 8, d = e = 64, bf16, deg 2, gated; kernel sets:", prop.name,
              prop.multiProcessorCount);
  for (const std::string& s : sets) std::printf(" %s", s.c_str());
  std::printf(" (the first the default here) ==\n");
  const int64_t tokens = 65536, h = 8, d = 64, e = 64, D = pa::state_dim(d, 2);
  std::vector<Row> rows;
  std::string sdpa_choice;
  const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const std::vector<int64_t> lengths = {1024, 4096, 16384, 65536}, chunks = {256, 512, 1024};
  for (int64_t t : lengths) {
    const int64_t b = tokens / t;
    at::Tensor q = at::randn({b, t, h, d}, o).requires_grad_(true);
    at::Tensor k = at::randn({b, t, h, d}, o).requires_grad_(true);
    at::Tensor v = at::randn({b, t, h, e}, o).requires_grad_(true);
    at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}, o.dtype(at::kFloat)) + 3.0).requires_grad_(true);
    at::Tensor dy = at::randn({b, t, h, e}, o);
    // the quadratic work: causal, b h (t^2 / 2) query-key pairs of 2 d (scores) + 2 e (values) FLOP
    const double quad_flops = static_cast<double>(b) * h * (static_cast<double>(t) * t / 2) * (2.0 * d + 2.0 * e);
    // SDPA: [b, h, t, d], causal, each backend forced in turn
    {
      at::Tensor qs = q.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor ks = k.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor vs = v.detach().transpose(1, 2).contiguous().requires_grad_(true);
      at::Tensor dys = dy.transpose(1, 2).contiguous();
      if (sdpa_choice.empty()) sdpa_choice = sdpa_backend_name(at::_fused_sdp_choice(qs, ks, vs, {}, 0.0, true));
      auto fwd = [&] {
        const at::NoGradGuard ng;
        at::scaled_dot_product_attention(qs, ks, vs, {}, 0.0, true);
      };
      auto both = [&] {
        at::Tensor y = at::scaled_dot_product_attention(qs, ks, vs, {}, 0.0, true);
        torch::autograd::grad({y}, {qs, ks, vs}, {dys});
      };
      for (bool cudnn : {false, true}) {
        const SdpaBackend backend(cudnn);
        measure(rows, cudnn ? "sdpa-cudnn" : "sdpa-flash", t, b, 0, true, quad_flops, fwd, both);
      }
    }
    for (int64_t chunk : chunks) {
      const bool quadratic = t <= chunk;  // the plan's quadratic form: no state stage, no sm_90a kernel
      const int64_t c = std::min(chunk, t);
      // the chunked form's work: states (2 D e a token) + queries (2 D e) + causal in-chunk attention (c/2 keys of
      // 2 d + 2 e a token, = 2 c d at d = e)
      const double flops =
          quadratic ? quad_flops : static_cast<double>(b) * h * t * (4.0 * D * e + static_cast<double>(c) * 2 * d);
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
      for (const std::string& set : sets) {
        if (quadratic && set != def) continue;
        const ForceKernels force(set);
        measure(rows, "power-" + set, t, b, chunk, quadratic, flops, fwd, both);
      }
    }
  }
  std::printf("%-16s %-8s %6s %4s %6s %-9s %10s %14s %9s %10s %8s\n", "impl", "pass", "t", "b", "chunk", "form", "ms",
              "tokens/s", "TFLOP/s", "peak MiB", "gpu ms");
  for (const Row& r : rows)
    std::printf("%-16s %-8s %6ld %4ld %6ld %-9s %10.3f %14.0f %9.1f %10.0f %8.3f\n", r.impl.c_str(), r.pass.c_str(),
                r.t, r.b, r.chunk, r.quadratic ? "quadratic" : "chunked", r.ms, 65536.0 / (r.ms / 1e3), r.tflops,
                r.mib, r.gpu_ms);
  std::printf("(ms: from an idle GPU, the host's work before the first kernel included; gpu ms: queued behind a spin "
              "kernel, the GPU's work alone; peak MiB: the caching allocator's peak during one call, above what was "
              "allocated before it)\n");
  if (json_path) {
    FILE* f = std::fopen(json_path, "w");
    if (f) {
      std::fprintf(f, "{\"device\": \"%s\", \"sdpa_default\": \"%s\", \"rows\": [\n", prop.name,
                   sdpa_choice.c_str());
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        std::fprintf(f,
                     "  {\"impl\": \"%s\", \"pass\": \"%s\", \"t\": %ld, \"b\": %ld, \"chunk\": %ld, "
                     "\"form\": \"%s\", \"ms\": %.4f, \"tflops\": %.2f, \"peak_mib\": %.1f, \"gpu_ms\": %.4f}%s\n",
                     r.impl.c_str(), r.pass.c_str(), r.t, r.b, r.chunk, r.quadratic ? "quadratic" : "chunked",
                     std::isnan(r.ms) ? -1.0 : r.ms, std::isnan(r.tflops) ? -1.0 : r.tflops,
                     std::isnan(r.mib) ? -1.0 : r.mib, std::isnan(r.gpu_ms) ? -1.0 : r.gpu_ms,
                     i + 1 < rows.size() ? "," : "");
      }
      std::fprintf(f, "]}\n");
      std::fclose(f);
    }
  }
  // the summary, last: fwd+bwd of every kernel set next to both SDPA backends
  std::printf("\n== summary: fwd+bwd ms (TFLOP/s) on %s, b t = 65536, h = 8, d = e = 64, bf16, deg 2, gated ==\n",
              prop.name);
  std::printf("FLOP counted (the work the algorithm needs): chunked forward b h t (4 D e + 2 c d), D = %ld; quadratic "
              "form and SDPA b h (t^2 / 2)(2 d + 2 e); fwd+bwd 3x the forward. ms from an idle GPU. SDPA's own "
              "choice here: %s. Peak: MiB above the inputs, one fwd+bwd.\n",
              D, sdpa_choice.c_str());
  std::printf("| t | chunk | SDPA flash | SDPA cuDNN |");
  for (const std::string& s : sets) std::printf(" power %s |", s.c_str());
  std::printf(" peak MiB: power; flash, cuDNN |\n|---|---|---|---|");
  for (size_t i = 0; i < sets.size(); ++i) std::printf("---|");
  std::printf("---|\n");
  for (int64_t t : lengths)
    for (int64_t chunk : chunks) {
      const bool first = chunk == chunks.front();
      const Row* fl = first ? find(rows, "sdpa-flash", "fwd+bwd", t, 0) : nullptr;
      const Row* cu = first ? find(rows, "sdpa-cudnn", "fwd+bwd", t, 0) : nullptr;
      const Row* pd = find(rows, "power-" + def, "fwd+bwd", t, chunk);
      std::printf("| %ld | %ld%s | %s | %s |", t, chunk, pd && pd->quadratic ? " (quadratic)" : "",
                  first ? cell(fl).c_str() : "", first ? cell(cu).c_str() : "");
      for (const std::string& s : sets) std::printf(" %s |", cell(find(rows, "power-" + s, "fwd+bwd", t, chunk)).c_str());
      std::printf(" %.0f", pd ? pd->mib : NAN);
      if (first) std::printf("; %.0f, %.0f", fl ? fl->mib : NAN, cu ? cu->mib : NAN);
      std::printf(" |\n");
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
// Where a fwd+bwd's wall time goes, from an idle GPU: per call, host stamps before the forward, after it returns,
// after the backward returns and after the GPU is done, with CUDA events recorded at the first three; the medians
// of 15 calls after 3. A host that returns from the backward only when the GPU is done points at a sync inside it.
int run_timeline(int64_t chunk, int64_t t) {
  const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  const int64_t h = 8, d = 64, b = std::max<int64_t>(1, 65536 / t);
  at::Tensor q = at::randn({b, t, h, d}, o).requires_grad_(true), k = at::randn({b, t, h, d}, o).requires_grad_(true);
  at::Tensor v = at::randn({b, t, h, d}, o).requires_grad_(true);
  at::Tensor lg = at::log_sigmoid(at::randn({b, t, h}, o.dtype(at::kFloat)) + 3.0).requires_grad_(true);
  at::Tensor dy = at::randn({b, t, h, d}, o);
  pa::PowerFullOptions opt;
  if (chunk > 0) opt.chunk_size = chunk;
  using clk = std::chrono::steady_clock;
  const auto us = [](clk::time_point a, clk::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count();
  };
  std::vector<std::array<double, 7>> rows;
  cudaEvent_t ev[3];
  for (auto& e : ev) cudaEventCreate(&e);
  for (int i = 0; i < 18; ++i) {
    cudaDeviceSynchronize();
    const auto stream = c10::cuda::getCurrentCUDAStream().stream();
    const auto h0 = clk::now();
    cudaEventRecord(ev[0], stream);
    at::Tensor y = pa::power_full(q, k, v, lg, opt);
    const auto h1 = clk::now();
    cudaEventRecord(ev[1], stream);
    torch::autograd::grad({y}, {q, k, v, lg}, {dy});
    const auto h2 = clk::now();
    cudaEventRecord(ev[2], stream);
    cudaEventSynchronize(ev[2]);
    const auto h3 = clk::now();
    float g01 = 0, g02 = 0;
    cudaEventElapsedTime(&g01, ev[0], ev[1]);
    cudaEventElapsedTime(&g02, ev[0], ev[2]);
    if (i >= 3) rows.push_back({us(h0, h1), us(h1, h2), us(h2, h3), us(h0, h3), 1e3 * g01, 1e3 * (g02 - g01), 1e3 * g02});
  }
  for (auto& e : ev) cudaEventDestroy(e);
  // The host's own cost of the call's parts, each with the GPU kept busy (launches never wait): the checks and the
  // plan, the magnitudes' read (queued, not waited for), the path's forward and its backward.
  std::vector<std::array<double, 4>> parts;
  {
    at::NoGradGuard no_grad;
    const at::Tensor qd = q.detach(), kd = k.detach(), vd = v.detach(), lgd = lg.detach();
    for (int i = 0; i < 18; ++i) {
      cudaDeviceSynchronize();
      at::cuda::sleep(20000000);
      const auto h0 = clk::now();
      const pa::Checked ck = pa::check_inputs(qd, kd, vd, lgd, opt);
      const pa::Plan plan = pa::make_plan(qd, kd, vd, ck.p, ck.scale, ck.chunk, false, true);
      const auto h1 = clk::now();
      const pa::MagnitudeRead rd = pa::read_magnitudes(qd, kd, lgd);
      const auto h2 = clk::now();
      const pa::Forward f = pa::path::forward(plan.problem, qd, kd, vd, lgd, true);
      const auto h3 = clk::now();
      const pa::Grads g = pa::path::backward(plan.problem, qd, kd, vd, lgd, f, dy, pa::Needs{});
      const auto h4 = clk::now();
      if (i >= 3) parts.push_back({us(h0, h1), us(h1, h2), us(h2, h3), us(h3, h4)});
    }
    cudaDeviceSynchronize();
  }
  const char* names[7] = {"host: forward call", "host: backward call", "host: then waiting for the GPU",
                          "host: whole", "gpu: forward done (from its start)", "gpu: then backward done",
                          "gpu: whole"};
  std::printf("== timeline: chunk %ld, t %ld, b %ld (us, median of %zu) ==\n", chunk, t, b, rows.size());
  for (int c = 0; c < 7; ++c) {
    std::vector<double> x;
    for (const auto& r : rows) x.push_back(r[c]);
    std::sort(x.begin(), x.end());
    std::printf("%-36s %9.1f\n", names[c], x[x.size() / 2]);
  }
  const char* part_names[4] = {"host alone: checks + plan", "host alone: magnitudes' read",
                               "host alone: path forward", "host alone: path backward"};
  for (int c = 0; c < 4; ++c) {
    std::vector<double> x;
    for (const auto& r : parts) x.push_back(r[c]);
    std::sort(x.begin(), x.end());
    std::printf("%-36s %9.1f\n", part_names[c], x[x.size() / 2]);
  }
  return 0;
}

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
