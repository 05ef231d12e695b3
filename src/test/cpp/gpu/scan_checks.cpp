// scan_checks.cpp: the degree-2 fused scans (cuda/sympow2/sympow2.h: sympow2_scan_forward / backward) of each sm_90a
// kernel set, and of each CTA shape of the sm_90a scan kernel (cuda/sympow2/scan_sm90.h), against the sm_80 kernel's
// on the same inputs; and their times at the benchmark's long shapes.
#include "harness.h"

#include "cuda/sympow2/scan_sm90.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/autograd.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace harness {
namespace {

namespace pc = pa::cuda;

// The inputs of one forward and one backward scan: keys and values in the caller's layout through a chunk map (g = 1),
// queries with g members a head (the backward's rows are the g queries of each token), dB dense.
struct ScanInputs {
  int64_t b, t, h, g, c, d, N, BH, D2, E;
  at::Tensor k, v, q, kf, qf, decay, H0, dB, dfin;
  pc::Operand ko, vo, qo;
};

ScanInputs scan_inputs(int64_t b, int64_t t, int64_t h, int64_t g, int64_t c, int64_t d, at::ScalarType dt) {
  const auto o = at::TensorOptions().device(at::kCUDA);
  ScanInputs s{b, t, h, g, c, d, (t + c - 1) / c, b * h, pc::sympow2_dim(d), d + 8};
  s.k = at::randn({b, t, h, d}, o.dtype(dt));
  s.v = at::randn({b, t, h, d}, o.dtype(at::kBFloat16));
  s.q = at::randn({b, t, h * g, d}, o.dtype(dt));
  s.ko = pc::Operand::caller(s.k, h, 1, c);
  s.vo = pc::Operand::caller(s.v, h, 1, c);
  s.qo = pc::Operand::caller(s.q, h, g, c);
  s.kf = at::rand({s.BH * s.N * c}, o.dtype(at::kFloat)) * 0.1 + 0.02;  // the scans' row scales: |phi| ~ 1
  s.qf = at::rand({s.BH * s.N * c * g}, o.dtype(at::kFloat)) * 0.1 + 0.02;
  s.decay = at::rand({s.BH * s.N}, o.dtype(at::kFloat)) * 0.5 + 0.5;
  s.H0 = at::randn({s.BH, s.D2, s.E}, o.dtype(at::kFloat));
  s.dB = at::randn({s.BH, s.N * c * g, s.E}, o.dtype(at::kBFloat16));
  s.dfin = at::randn({s.BH, s.D2, s.E}, o.dtype(at::kFloat));
  return s;
}

struct ScanOutputs {
  at::Tensor Hs, fin, An, dL, dH0;
};

// Both scans through `run_fwd` / `run_bwd`, outputs poisoned with NaN first (dL starts at 0: the kernels add to it).
ScanOutputs run_scans(const ScanInputs& s, const std::function<void(ScanOutputs&)>& run_fwd,
                      const std::function<void(ScanOutputs&)>& run_bwd) {
  const auto o = at::TensorOptions().device(at::kCUDA);
  ScanOutputs r;
  r.Hs = at::full({s.BH, s.N, s.D2, s.E}, NAN, o.dtype(at::kBFloat16));
  r.fin = at::full({s.BH, s.D2, s.E}, NAN, o.dtype(at::kFloat));
  r.An = at::full({s.BH, s.N, s.D2, s.E}, NAN, o.dtype(at::kBFloat16));
  r.dL = at::zeros({s.BH * s.N}, o.dtype(at::kFloat));
  r.dH0 = at::full({s.BH, s.D2, s.E}, NAN, o.dtype(at::kFloat));
  run_fwd(r);
  run_bwd(r);
  return r;
}

// Through the library's entry points (the kernel set in force decides the kernel); the backward reads the states
// Hs_in where given (the same for every kernel compared), else the forward's.
ScanOutputs run_library(const ScanInputs& s, const at::Tensor& Hs_in) {
  return run_scans(
      s,
      [&](ScanOutputs& r) { pc::sympow2_scan_forward(s.ko, s.kf, s.vo, s.decay, s.H0, s.N, r.Hs, r.fin); },
      [&](ScanOutputs& r) {
        pc::sympow2_scan_backward(s.qo, s.qf, s.dB, s.decay, Hs_in.defined() ? Hs_in : r.Hs, s.dfin, s.N, r.An,
                                  r.dL, r.dH0);
      });
}

const uint16_t* u16p(const at::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); }

// The sm_90a kernel in the shape of wg warpgroups a CTA, called directly.
ScanOutputs run_shape(const ScanInputs& s, const at::Tensor& Hs_in, int wg) {
  const cudaStream_t st = c10::cuda::getCurrentCUDAStream();
  const bool bf = s.k.scalar_type() == at::kBFloat16;
  const pc::RowMap dBm = pc::RowMap::dense(s.c * s.g, s.E);  // dB's blocks: the chunks, c g rows each
  return run_scans(
      s,
      [&](ScanOutputs& r) {
        pc::sympow2::sm90::scan_launch(bf, s.d, false, true, u16p(s.k), s.ko.map, s.kf.data_ptr<float>(), u16p(s.v),
                                       s.vo.map, s.decay.data_ptr<float>(), s.H0.data_ptr<float>(), nullptr,
                                       static_cast<uint16_t*>(r.Hs.data_ptr()), r.fin.data_ptr<float>(), nullptr,
                                       s.BH, s.N, s.c, wg, st);
      },
      [&](ScanOutputs& r) {
        const at::Tensor& Hs = Hs_in.defined() ? Hs_in : r.Hs;
        pc::sympow2::sm90::scan_launch(bf, s.d, true, false, u16p(s.q), s.qo.map, s.qf.data_ptr<float>(), u16p(s.dB),
                                       dBm, s.decay.data_ptr<float>(), s.dfin.data_ptr<float>(), u16p(Hs),
                                       static_cast<uint16_t*>(r.An.data_ptr()), r.dH0.data_ptr<float>(),
                                       r.dL.data_ptr<float>(), s.BH, s.N, s.c * s.g, wg, st);
      });
}

struct Diff {
  double rel;
  int64_t differ;  // elements not bitwise equal (NaN counts)
};
// On the device in fp64 (the harness's rel() copies to the host: minutes for the long shapes' 377M-element states);
// inf where a is not finite.
Diff diff(const at::Tensor& a, const at::Tensor& ref) {
  const at::Tensor x = a.to(at::kDouble), y = ref.to(at::kDouble);
  const int64_t differ = (x != y).sum().item<int64_t>();
  if (!at::isfinite(x).all().item<bool>()) return {INFINITY, differ};
  const double den = std::max(y.norm().item<double>(), 1e-300);
  return {(x - y).norm().item<double>() / den, differ};
}

// The outputs against the sm_80 kernel's: fp32 ones (final state, dH0) within 1e-5, bf16 ones (Hs, An) within 2e-4
// (a few roundings to bf16 may fall the other way where the fp32 sums differ in their last bits), dL within 1e-5
// (its atomics add in any order).
void compare(const std::string& id, const ScanOutputs& r, const ScanOutputs& ref) {
  const Diff hs = diff(r.Hs, ref.Hs), fin = diff(r.fin, ref.fin), an = diff(r.An, ref.An);
  const Diff dh0 = diff(r.dH0, ref.dH0), dl = diff(r.dL, ref.dL);
  Outcome q{};
  q.y = std::max(hs.rel, fin.rel);
  q.dq = std::max(an.rel, dh0.rel);
  q.dk = dl.rel;
  q.ok = hs.rel < 2e-4 && an.rel < 2e-4 && fin.rel < 1e-5 && dh0.rel < 1e-5 && dl.rel < 1e-5;
  report(id, q, Tol{2e-4, 1e-5});
  std::printf("     elements not bitwise equal: Hs %ld of %ld, final %ld, An %ld, dH0 %ld, dL %ld of %ld\n",
              static_cast<long>(hs.differ), static_cast<long>(r.Hs.numel()), static_cast<long>(fin.differ),
              static_cast<long>(an.differ), static_cast<long>(dh0.differ), static_cast<long>(dl.differ),
              static_cast<long>(r.dL.numel()));
}

// Median time of fn over reps runs after 2 warm-ups, by events on the current stream.
double median_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 2; ++i) fn();
  cudaDeviceSynchronize();
  cudaEvent_t a, e;
  cudaEventCreate(&a);
  cudaEventCreate(&e);
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a, c10::cuda::getCurrentCUDAStream());
    fn();
    cudaEventRecord(e, c10::cuda::getCurrentCUDAStream());
    cudaEventSynchronize(e);
    float x = 0;
    cudaEventElapsedTime(&x, a, e);
    ms.push_back(x);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return static_cast<double>(ms[ms.size() / 2]);
}

}  // namespace

void check_scan_set(const std::string& set) {
  for (int64_t d : {64, 128})
    for (auto dt : {at::kBFloat16, at::kHalf}) {
      // t = 250, chunks of 100 tokens: the last chunk of each head 50 (its other rows padding), the keys' chunks two
      // stages of 64 rows with the second partly past the chunk; g = 2 queries a head (200 rows a chunk)
      const ScanInputs s = scan_inputs(1, 250, 2, 2, 100, d, dt);
      ScanOutputs ref, got;
      {
        const ForceKernels force("sm80");
        ref = run_library(s, at::Tensor());
      }
      {
        const ForceKernels force(set);
        got = run_library(s, ref.Hs);
      }
      const std::string tag = "-d" + std::to_string(d) + "-" + c10::toString(dt);
      compare("sympow2-scans" + tag + "-" + set + " vs sm80 (Hs + final, An + dH0, dL)", got, ref);
      const unsigned shapes = pc::sympow2::sm90::scan_shapes(d);
      for (int wg = 1; wg <= 4; wg *= 2) {
        if (!(shapes & static_cast<unsigned>(wg))) continue;
        compare("sympow2-scans" + tag + "-wg" + std::to_string(wg) + " vs sm80 (Hs + final, An + dH0, dL)",
                run_shape(s, ref.Hs, wg), ref);
      }
    }
}

// The scans alone at the benchmark's long shapes (b t = 65536 h = 8 tokens, d = 64, bf16): the sm_80 kernel and each
// shape of the sm_90a one, median of 9 after 2 warm-ups, each checked against the sm_80 kernel's outputs first.
int run_scan_bench() {
  struct Shape {
    int64_t t, c;
  };
  for (const Shape sh : {Shape{4096, 256}, Shape{16384, 256}, Shape{65536, 512}}) {
    const int64_t b = 65536 / sh.t, h = 8;
    const ScanInputs s = scan_inputs(b, sh.t, h, 1, sh.c, 64, at::kBFloat16);
    ScanOutputs ref;
    {
      const ForceKernels force("sm80");
      ref = run_library(s, at::Tensor());
    }
    const double flop = 2.0 * static_cast<double>(s.BH * sh.t) * static_cast<double>(s.D2 * s.E);  // one scan
    std::printf("== scans alone: b h = %ld, t = %ld, chunk %ld, d = 64, bf16 (%.3g FLOP a scan) ==\n",
                static_cast<long>(s.BH), static_cast<long>(sh.t), static_cast<long>(sh.c), flop);
    auto row = [&](const std::string& what, const std::function<void(ScanOutputs&)>& fwd,
                   const std::function<void(ScanOutputs&)>& bwd) {
      ScanOutputs r = run_scans(s, fwd, bwd);
      cudaDeviceSynchronize();
      compare("scan-bench-t" + std::to_string(sh.t) + "-" + what + " vs sm80", r, ref);
      const double f = median_ms([&] { fwd(r); }, 9), bk = median_ms([&] { bwd(r); }, 9);
      std::printf("scan-time %-10s t %6ld c %4ld: forward %.3f ms (%.0f TFLOP/s), reverse %.3f ms (%.0f TFLOP/s), "
                  "both %.3f ms\n",
                  what.c_str(), static_cast<long>(sh.t), static_cast<long>(sh.c), f, flop / f * 1e-9, bk,
                  flop / bk * 1e-9, f + bk);
    };
    auto lib = [&](const std::string& set) {
      return std::make_pair(
          std::function<void(ScanOutputs&)>([&s, set](ScanOutputs& r) {
            const ForceKernels force(set);
            pc::sympow2_scan_forward(s.ko, s.kf, s.vo, s.decay, s.H0, s.N, r.Hs, r.fin);
          }),
          std::function<void(ScanOutputs&)>([&s, &ref, set](ScanOutputs& r) {
            const ForceKernels force(set);
            pc::sympow2_scan_backward(s.qo, s.qf, s.dB, s.decay, ref.Hs, s.dfin, s.N, r.An, r.dL, r.dH0);
          }));
    };
    const auto s80 = lib("sm80"), s90 = lib("sm90a-scan");
    row("sm80", s80.first, s80.second);
    row("sm90a-scan", s90.first, s90.second);
    for (int wg : {1, 2, 4}) {
      const cudaStream_t st = c10::cuda::getCurrentCUDAStream();
      const pc::RowMap dBm = pc::RowMap::dense(s.c * s.g, s.E);
      row("wg" + std::to_string(wg),
          [&, wg](ScanOutputs& r) {
            pc::sympow2::sm90::scan_launch(true, 64, false, true, u16p(s.k), s.ko.map, s.kf.data_ptr<float>(),
                                           u16p(s.v), s.vo.map, s.decay.data_ptr<float>(), s.H0.data_ptr<float>(),
                                           nullptr, static_cast<uint16_t*>(r.Hs.data_ptr()),
                                           r.fin.data_ptr<float>(), nullptr, s.BH, s.N, s.c, wg, st);
          },
          [&, wg](ScanOutputs& r) {
            pc::sympow2::sm90::scan_launch(true, 64, true, false, u16p(s.q), s.qo.map, s.qf.data_ptr<float>(),
                                           u16p(s.dB), dBm, s.decay.data_ptr<float>(), s.dfin.data_ptr<float>(),
                                           u16p(ref.Hs), static_cast<uint16_t*>(r.An.data_ptr()),
                                           r.dH0.data_ptr<float>(), r.dL.data_ptr<float>(), s.BH, s.N, s.c, wg, st);
          });
    }
  }
  // one fwd+bwd of power_full (the benchmark's case: h = 8, d = 64, bf16, degree 2, gated) with the library's scan
  // shapes and with POWER_ATTENTION_SCAN_WG's where set
  for (const Shape sh : {Shape{1024, 256}, Shape{4096, 256}, Shape{16384, 256}, Shape{65536, 512}}) {
    const auto o = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
    const int64_t h = 8, d = 64, b = 65536 / sh.t;
    at::Tensor q = at::randn({b, sh.t, h, d}, o).requires_grad_(true);
    at::Tensor k = at::randn({b, sh.t, h, d}, o).requires_grad_(true);
    at::Tensor v = at::randn({b, sh.t, h, d}, o).requires_grad_(true);
    at::Tensor lg = at::log_sigmoid(at::randn({b, sh.t, h}, o.dtype(at::kFloat)) + 3.0).requires_grad_(true);
    const at::Tensor dy = at::randn({b, sh.t, h, d}, o);
    pa::PowerFullOptions opt;
    opt.chunk_size = sh.c;
    // the default set with the library's scan shapes, then with POWER_ATTENTION_SCAN_WG's (scan_sm90.h), in turn
    const char* before = std::getenv("POWER_ATTENTION_SCAN_WG");
    const std::string wgs = before != nullptr ? before : "";
    for (int round = 0; round < 4; ++round) {
      const bool env = round % 2 == 1;
      if (env && wgs.empty()) continue;
      if (env) setenv("POWER_ATTENTION_SCAN_WG", wgs.c_str(), 1);
      else unsetenv("POWER_ATTENTION_SCAN_WG");
      const std::string set = env ? "wg=" + wgs : std::string("default");
      const double ms = median_ms(
          [&] {
            const at::Tensor y = pa::power_full(q, k, v, lg, opt);
            torch::autograd::grad({y}, {q, k, v, lg}, {dy});
          },
          7);
      std::printf("fwdbwd-time %-10s t %6ld c %4ld: %.3f ms\n", set.c_str(), static_cast<long>(sh.t),
                  static_cast<long>(sh.c), ms);
    }
    if (!wgs.empty()) setenv("POWER_ATTENTION_SCAN_WG", wgs.c_str(), 1);
  }
  return failures() > 0 ? 1 : 0;
}

}  // namespace harness
