// harness.h: what the GPU harness's files share (main.cpp: the modes; oracle.cpp: the fp64 oracle of SPEC §2 and
// the error measure; kernel_sets.cpp: the library's CUDA kernel sets, forced one at a time; cases.cpp: the
// correctness cases; kernel_checks.cpp: the degree-2 kernels against ATen and the kernel sets against each other;
// bench.cpp: the benchmarks). Built by CMake against the GPU machine's LibTorch together with the same src/main/cpp
// sources as the JARs (run.sh beside this file does all of it).
#pragma once

#include "power_attention.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace harness {

namespace pa = power_attention;

// ---------------------------------------------------------------------------------------------------------------
// oracle.cpp
// ---------------------------------------------------------------------------------------------------------------

/// SPEC §2 directly, fp64 on the CPU, differentiable by autograd: q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e],
/// lg [b, t, h] or undefined -> y [b, t, hq, e] for the query rows `rows` (all when undefined).
at::Tensor oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lg, int64_t p,
                  double scale, const at::Tensor& rows = at::Tensor());

/// Relative L2 error (inf when x is not finite). floor: the denominator's floor, for references that are zero by
/// symmetry.
double rel(const at::Tensor& x, const at::Tensor& ref, double floor = 1e-300);

/// Fills the caching allocator's free blocks with NaN, so that an output the op forgets to write shows up.
void poison();

// ---------------------------------------------------------------------------------------------------------------
// kernel_sets.cpp
// ---------------------------------------------------------------------------------------------------------------

/// While alive, the CUDA stages run the kernel set named (POWER_ATTENTION_CUDA_KERNELS = sm80 | sm90a | sm90a-wg4 |
/// sm90a-scan, cuda/common/sm90_select.h); the variable's earlier value comes back after.
class ForceKernels {
 public:
  explicit ForceKernels(const std::string& set);
  ~ForceKernels();
  ForceKernels(const ForceKernels&) = delete;
  ForceKernels& operator=(const ForceKernels&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};

/// Whether device 0 runs the library's sm_90a kernels (a Hopper card and their image in this build).
bool hopper();
/// The kernel set the library runs on device 0 as the process started (the default, or what the environment asks).
std::string default_kernel_set();
/// The kernel sets checked and timed after the default one: on Hopper every other set (sm80 first), or those
/// POWER_ATTENTION_HARNESS_SETS lists (comma-separated; empty: none); elsewhere none.
std::vector<std::string> other_kernel_sets();

// ---------------------------------------------------------------------------------------------------------------
// cases.cpp
// ---------------------------------------------------------------------------------------------------------------

struct Case {
  int64_t b, t, hq, h, d, e, p;
  int64_t chunk;  // 0: quadratic
  bool gate;
  at::ScalarType dtype;
  double qk = 1;     // q and k drawn times this (tiny: scores whose squares leave fp32's range)
  double shift = 3;  // log gates = log_sigmoid(randn + shift) (very negative: strong decay within a tile)
  int want = 15;     // the gradients asked for: q 1, k 2, v 4, gates 8 (the other inputs need none)
  // log gates gate_mean + gate_std N(0, 1) a token instead (either sign: positive gates amplify the past), when set
  double gate_mean = NAN, gate_std = 0;
  // Gates that give a few keys nearly all of many rows' weight (positive or widely mixed): SPEC §7's tolerances are
  // stated for ordinary gates, and such rows are ill-conditioned for the chunked form's state products (they resolve
  // (q . k)^2 as phi(q) . phi(k), to the rounding of |q|^2 |k|^2) and for the gate gradient. Such a case must be
  // finite; its errors are reported ("over" when above the tolerances), not failed.
  bool concentrated = false;
  double vs = 1, dys = 1;  // v and the cotangent dy drawn times these (tiny or huge: y and the gradients scale)
  // when set: the first token's score in query head 0 of every batch, q_0 . k_0 scale, set to this (k_0 = e_0,
  // q_0[0] = first / scale): its only key is itself, so y_0 = v_0 and its gradients through q_0 and k_0 are zero
  double first = NAN;
};

/// A case with log gates mean + std N(0, 1) a token; `concentrated`: see Case.
Case gated(Case c, double mean, double std, bool concentrated = false);

std::string name(const Case& c);

struct Tol {
  double fwd, grad;
};
inline Tol tolerance(at::ScalarType t) {
  if (t == at::kDouble) return {1e-10, 1e-9};
  if (t == at::kFloat) return {1e-5, 1e-4};
  return {5e-3, 1e-2};
}

struct Outcome {
  bool ok;
  double y, dq, dk, dv, dg;
  bool finite_only = false;  // a concentrated case (Case::concentrated): ok needs finite outputs only
  bool within = true;        // ... and whether it met the tolerances all the same
  std::string note;          // the worst row, when not within the tolerances
};

/// Prints a case's line and counts failures (and concentrated cases over the tolerances).
void report(const std::string& id, const Outcome& o, const Tol& tol);
/// Every case's inputs drawn from this LibTorch seed (0: each from the run's random sequence, as by default); a
/// case over its tolerances names its seed, so that `repeat 1 <name> <seed>` draws it again.
void force_seed(uint64_t seed);
int failures();
int overs();

/// One case on CUDA against the oracle: forward and the asked gradients (outputs poisoned with NaN first).
Outcome run_case(const Case& c, std::mt19937_64& rng);

/// Every correctness case (the degree-2 kernel checks first); 0 when all pass.
int run_tests();

/// The chunked form with its scans on the side stream against one stream, bitwise, n draws of a few cases; 0 when
/// all are equal.
int run_stream_check(int n);

// ---------------------------------------------------------------------------------------------------------------
// kernel_checks.cpp, scan_checks.cpp, bench.cpp
// ---------------------------------------------------------------------------------------------------------------

/// The magnitudes' max-abs kernel against ATen, bitwise; reported like cases.
void check_max_abs();
void check_extremes();

/// The degree-2 state kernels (cuda/sympow2/sympow2.h) against phi made in ATen; reported like cases.
void check_sympow2_kernels();

/// The query products of kernel set `set` (an sm_90a one) against the sm_80 kernel's on the same inputs (bitwise:
/// both round phi' once to bf16 and sum in fp32 in the same order a row): B, its first e columns, and the
/// combination (y, den, y in the input dtype through the caller's layout), plus the combination against ATen.
void check_query_set(const std::string& set);

/// The fused scans (forward and reverse) of kernel set `set` (an sm_90a one), and of each CTA shape of the sm_90a scan
/// kernel, against the sm_80 kernel's on the same inputs (x through chunk maps, partial chunks and stages, g = 2
/// query rows a token): the states within bf16 rounding flips, the fp32 outputs within 1e-5 (scan_checks.cpp).
void check_scan_set(const std::string& set);

/// The scans alone at the benchmark's long shapes (t = 16384 chunk 256, t = 65536 chunk 512): the sm_80 kernel, the
/// sm90a set and each CTA shape of the sm_90a kernel, each checked against the sm_80 kernel first.
int run_scan_bench();

/// The gradients through phi (dx, u) of kernel set `set` (an sm_90a one) against the sm_80 kernel's on the same
/// inputs (bitwise: the same products, the same epilogue in the same order) and both against ATen, on the queries'
/// and the keys' operands as the op passes them (chunk maps of the caller's layout, the values' ones column).
void check_grad_set(const std::string& set);

/// fwd and fwd+bwd at b*t = 65536, h = 8, d = 64, bf16, deg 2, gated, for the default kernel set and every other
/// one (other_kernel_sets), against SDPA's flash and cuDNN backends; the rows and a summary table (last) to stdout
/// and, with json_path, the rows to a JSON file.
int run_bench(const char* json_path);

/// One decode step from the state against recomputing the forward and against SDPA over a KV cache.
int run_decode_bench();

/// One fwd+bwd of the benchmark's shape at length t (chunk 0: the quadratic form) between cudaProfilerStart/Stop.
int run_profile(int64_t chunk, int64_t t);

/// Host and GPU time stamps of a fwd+bwd (from an idle GPU) at chunk c (0: quadratic) and length t.
int run_timeline(int64_t chunk, int64_t t);

}  // namespace harness
