// harness.cpp: the GPU harness. Built by CMake against the GPU machine's LibTorch together with the same
// src/main/cpp sources as the JARs (run.sh beside this file does all of it).
//
//   power_attention_gpu test          SPEC §7/§8 cases on CUDA against an fp64 CPU evaluation of SPEC §2 (forward
//                                      and all gradients; outputs poisoned with NaN; fresh random inputs per case)
//   power_attention_gpu bench [json]   fwd and fwd+bwd at b*t = 65536, h = 8, d = 64, bf16, deg 2, gated, against
//                                      at::scaled_dot_product_attention (flash) in the same run
#include "power_attention.h"
#include "cuda/sympow2/sympow2.h"

#include <ATen/ATen.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace pa = power_attention;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// The oracle: SPEC §2 directly, fp64 on the CPU, differentiable by autograd.
// ---------------------------------------------------------------------------------------------------------------

// q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e], lg [b, t, h] or undefined -> y [b, t, hq, e] for the query rows
// `rows` (all when empty).
at::Tensor oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lg, int64_t p,
                  double scale, const at::Tensor& rows = at::Tensor()) {
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), h = k.size(2), g = hq / h;
  at::Tensor qh = q.permute({0, 2, 1, 3});                                    // [b, hq, t, d]
  at::Tensor kh = k.permute({0, 2, 1, 3}).repeat_interleave(g, 1);            // [b, hq, t, d]
  at::Tensor vh = v.permute({0, 2, 1, 3}).repeat_interleave(g, 1);            // [b, hq, t, e]
  at::Tensor qi = rows.defined() ? qh.index_select(2, rows) : qh;
  at::Tensor idx_i = rows.defined() ? rows : at::arange(t, at::kLong);
  at::Tensor s = at::matmul(qi, kh.transpose(2, 3)) * scale;                  // [b, hq, r, t]
  at::Tensor w = s.pow(static_cast<double>(p));
  at::Tensor mask = idx_i.unsqueeze(1) >= at::arange(t, at::kLong).unsqueeze(0);  // [r, t]
  if (lg.defined()) {
    at::Tensor G = lg.cumsum(1).permute({0, 2, 1}).repeat_interleave(g, 1);  // [b, hq, t]
    at::Tensor Gi = G.index_select(2, idx_i);
    // mask the exponent, not the product: exp(G_i - G_j) overflows for masked j > i at long t; and take out each
    // row's largest exponent (a constant: the ratio does not depend on it), for positive gates overflow fp64 too
    at::Tensor expo = at::where(mask, Gi.unsqueeze(3) - G.unsqueeze(2), at::full({}, -INFINITY, G.options()));
    expo = expo - std::get<0>(expo.max(3, true)).detach();
    w = w * at::exp(expo);
  }
  w = w * mask.to(at::kDouble);
  at::Tensor y = at::matmul(w, vh) / w.sum(3, true);
  (void)b;
  return y.permute({0, 2, 1, 3});
}

// Relative L2 error. floor: the denominator's floor, for references that are zero by symmetry (at t = 1 the
// gradients of q and k vanish exactly; rounding leaves ~1e-8 |dy|).
double rel(const at::Tensor& x, const at::Tensor& ref, double floor = 1e-300) {
  const at::Tensor a = x.to(at::kCPU, at::kDouble), r = ref.to(at::kCPU, at::kDouble);
  if (!at::isfinite(a).all().item<bool>()) return INFINITY;
  return (a - r).norm().item<double>() / std::max(r.norm().item<double>(), floor);
}

// Fills the caching allocator's free blocks with NaN, so that an output the op forgets to write shows up.
void poison() {
  c10::cuda::CUDACachingAllocator::emptyCache();
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  const int64_t n = static_cast<int64_t>(std::min<size_t>(free_b / 4, size_t(4) << 30) / 4);
  {
    at::Tensor t = at::empty({n}, at::TensorOptions().device(at::kCUDA).dtype(at::kFloat));
    t.fill_(NAN);
  }
  cudaDeviceSynchronize();
}

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
};

// A case with log gates gate_mean + gate_std N(0, 1) a token; `concentrated`: see Case.
Case gated(Case c, double mean, double std, bool concentrated = false) {
  c.gate = true;
  c.gate_mean = mean;
  c.gate_std = std;
  c.concentrated = concentrated;
  return c;
}

std::string name(const Case& c) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "b%ld-t%ld-hq%ld-h%ld-d%ld-e%ld-p%ld-%s%ld-%s-%s", c.b, c.t, c.hq, c.h, c.d, c.e,
                c.p, c.chunk ? "c" : "quad", c.chunk, c.gate ? "gated" : "nogate", c10::toString(c.dtype));
  std::string n = buf;
  if (c.qk != 1) n += "-qk" + std::to_string(c.qk);
  if (c.shift != 3) n += "-shift" + std::to_string(c.shift);
  if (c.want != 15) n += "-grads" + std::to_string(c.want);
  if (!std::isnan(c.gate_mean)) {
    char g[64];
    std::snprintf(g, sizeof g, "-lg%+g~%g", c.gate_mean, c.gate_std);
    n += g;
  }
  return n;
}

struct Tol {
  double fwd, grad;
};
Tol tolerance(at::ScalarType t) {
  if (t == at::kDouble) return {1e-10, 1e-9};
  if (t == at::kFloat) return {1e-5, 1e-4};
  return {5e-3, 1e-2};
}

struct Inputs {
  at::Tensor q, k, v, lg;  // fp64 CPU, rounded to the case's dtype
};

Inputs make_inputs(const Case& c, std::mt19937_64& rng) {
  at::manual_seed(static_cast<uint64_t>(rng()));
  const auto o = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.q = (at::randn({c.b, c.t, c.hq, c.d}, o) * c.qk).to(c.dtype).to(at::kDouble);
  in.k = (at::randn({c.b, c.t, c.h, c.d}, o) * c.qk).to(c.dtype).to(at::kDouble);
  in.v = at::randn({c.b, c.t, c.h, c.e}, o).to(c.dtype).to(at::kDouble);
  // gates in fp32 (fp64 for fp64 cases), as a user would pass them
  if (c.gate) {
    const at::ScalarType gt = c.dtype == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor z = at::randn({c.b, c.t, c.h}, o);
    in.lg = (std::isnan(c.gate_mean) ? at::log_sigmoid(z + c.shift) : z * c.gate_std + c.gate_mean)
                .to(gt)
                .to(at::kDouble);
  }
  return in;
}

at::Tensor leaf(const at::Tensor& x, at::ScalarType dt, at::Device dev) {
  return x.to(dev, dt).detach().requires_grad_(true);
}

struct Outcome {
  bool ok;
  double y, dq, dk, dv, dg;
  bool finite_only = false;  // a concentrated case (Case::concentrated): ok needs finite outputs only
  bool within = true;        // ... and whether it met the tolerances all the same
  std::string note;          // the worst row, when not within the tolerances
};

int failures = 0, overs = 0;

void report(const std::string& id, const Outcome& o, const Tol& tol) {
  const char* status = !o.ok ? "FAIL" : (o.within ? "ok" : "over");
  std::printf("%-4s %-62s y %.2e  dq %.2e  dk %.2e  dv %.2e  dg %.2e  (tol %.0e / %.0e)\n", status, id.c_str(), o.y,
              o.dq, o.dk, o.dv, o.dg, tol.fwd, tol.grad);
  if (!o.note.empty()) std::printf("     %s\n", o.note.c_str());
  std::fflush(stdout);
  if (!o.ok) ++failures;
  if (o.ok && !o.within) ++overs;
}

// The forward's worst row: where it is (token, query head, position in its chunk), its relative error, and how its
// weights spread (from the oracle): the share carried by keys before its chunk (the states) and by its largest key.
std::string worst_row(const Case& c, const Inputs& in, const at::Tensor& y, const at::Tensor& y0, double scale) {
  const at::Tensor a = y.to(at::kCPU, at::kDouble), r = y0.detach();
  const at::Tensor err = (a - r).norm(2, {3}) / r.norm(2, {3}).clamp_min(1e-300);  // [b, t, hq]
  if (!at::isfinite(err).all().item<bool>()) return "non-finite rows";
  const int64_t flat = err.argmax().item<int64_t>(), hq = c.hq, t = c.t;
  const int64_t bi = flat / (t * hq), i = flat / hq % t, qh = flat % hq, kh = qh / (hq / c.h);
  const at::Tensor s = at::matmul(in.k.select(0, bi).select(1, kh).narrow(0, 0, i + 1),
                                  in.q.select(0, bi).select(0, i).select(0, qh)) * scale;  // [i + 1]
  at::Tensor logw = static_cast<double>(c.p) * at::log(s.abs());
  if (c.gate) {
    const at::Tensor G = in.lg.select(0, bi).select(1, kh).cumsum(0);
    logw = logw + (G[i] - G.narrow(0, 0, i + 1));
  }
  const at::Tensor w = at::exp(logw - logw.max()), share = w / w.sum();
  const int64_t start = c.chunk > 0 ? i / c.chunk * c.chunk : 0;
  const double state = start > 0 ? share.narrow(0, 0, start).sum().item<double>() : 0.0;
  char buf[200];
  std::snprintf(buf, sizeof buf, "worst row: b %ld token %ld (chunk position %ld) head %ld, error %.2e; weight %.3f "
                "from keys before its chunk, %.3f on its largest key (token %ld)", bi, i, c.chunk ? i % c.chunk : i, qh,
                err.view({-1})[flat].item<double>(), state, share.max().item<double>(), share.argmax().item<int64_t>());
  return buf;
}

// A case's outcome, or a failure naming the exception it threw (the other cases still run).
template <typename F>
Outcome guarded(F&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    Outcome o{};
    o.ok = o.within = false;
    o.y = o.dq = o.dk = o.dv = o.dg = INFINITY;
    std::string what = e.what();
    o.note = "threw: " + what.substr(0, what.find('\n'));
    return o;
  }
}

Outcome run_case(const Case& c, std::mt19937_64& rng) {
  const Inputs in = make_inputs(c, rng);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  // oracle: values and the vector-Jacobian product with a random cotangent
  at::Tensor q0 = in.q.clone().requires_grad_(true), k0 = in.k.clone().requires_grad_(true),
             v0 = in.v.clone().requires_grad_(true);
  at::Tensor g0 = c.gate ? in.lg.clone().requires_grad_(true) : at::Tensor();
  at::Tensor y0 = oracle(q0, k0, v0, g0, c.p, scale);
  const at::Tensor dy = at::randn(y0.sizes(), at::TensorOptions().dtype(at::kDouble)).to(c.dtype).to(at::kDouble);
  std::vector<at::Tensor> ins0 = {q0, k0, v0};
  if (c.gate) ins0.push_back(g0);
  const auto ref = torch::autograd::grad({y0}, ins0, {dy});

  // the op on CUDA; inputs whose gradient the case does not ask for need none
  const at::Device dev(at::kCUDA);
  auto input = [&](const at::Tensor& x, at::ScalarType dt, int bit) {
    return (c.want & bit) ? leaf(x, dt, dev) : x.to(dev, dt);
  };
  at::Tensor q = input(in.q, c.dtype, 1), k = input(in.k, c.dtype, 2), v = input(in.v, c.dtype, 4);
  at::Tensor lg = c.gate ? input(in.lg, c.dtype == at::kDouble ? at::kDouble : at::kFloat, 8) : at::Tensor();
  pa::PowerFullOptions opt;
  opt.degree = c.p;
  if (c.chunk > 0) opt.chunk_size = c.chunk;
  poison();
  at::Tensor y = pa::power_full(q, k, v, lg, opt);
  std::vector<at::Tensor> ins;
  for (const at::Tensor& x : {q, k, v, lg})
    if (x.defined() && x.requires_grad()) ins.push_back(x);
  poison();
  const auto asked = torch::autograd::grad({y}, ins, {dy.to(dev, c.dtype)});
  cudaDeviceSynchronize();
  std::vector<at::Tensor> got(4);  // q, k, v, gates; undefined where not asked for
  for (size_t i = 0, j = 0; i < 4; ++i)
    if ((c.want & (1 << i)) && (i < 3 || c.gate)) got[i] = asked[j++];

  const Tol tol = tolerance(c.dtype);
  Outcome o{};
  // At t = 1 the gradients of q and k are zero by symmetry; what comes out is rounding noise (dy.v_0 - dy.y_0,
  // summed in two orders, divided by s_00), so there the error is measured against 10 |dy|.
  const double floor = (c.t == 1 ? 10.0 : 1e-6) * dy.norm().item<double>();
  o.y = rel(y, y0.detach());
  o.dq = got[0].defined() ? rel(got[0], ref[0], floor) : 0.0;
  o.dk = got[1].defined() ? rel(got[1], ref[1], floor) : 0.0;
  o.dv = got[2].defined() ? rel(got[2], ref[2], floor) : 0.0;
  o.dg = got[3].defined() ? rel(got[3], ref[3], floor) : 0.0;
  o.within = o.y <= tol.fwd && o.dq <= tol.grad && o.dk <= tol.grad && o.dv <= tol.grad && o.dg <= tol.grad;
  const bool finite = std::isfinite(o.y) && std::isfinite(o.dq) && std::isfinite(o.dk) && std::isfinite(o.dv) &&
                      std::isfinite(o.dg);
  o.finite_only = c.concentrated;
  o.ok = (c.concentrated ? finite : o.within) && y.dtype() == q.dtype() && y.device().is_cuda();
  if (!o.within) o.note = worst_row(c, in, y, y0, scale);
  return o;
}

// Long sequences: the chunked form's forward on sampled query rows against the oracle on those rows.
Outcome run_long(int64_t t, int64_t chunk, at::ScalarType dt, std::mt19937_64& rng, double gate_mean = NAN,
                 double gate_std = 0) {
  Case c{1, t, 2, 2, 64, 64, 2, chunk, true, dt};
  c.gate_mean = gate_mean, c.gate_std = gate_std;
  const Inputs in = make_inputs(c, rng);
  const at::Device dev(at::kCUDA);
  pa::PowerFullOptions opt;
  opt.chunk_size = chunk;
  poison();
  at::Tensor y = pa::power_full(in.q.to(dev, dt), in.k.to(dev, dt), in.v.to(dev, dt), in.lg.to(dev, at::kFloat), opt);
  at::Tensor rows = at::cat({at::arange(0, 64, at::kLong), at::randint(0, t, {192}, at::kLong),
                             at::arange(t - 64, t, at::kLong)});
  at::Tensor y0 = oracle(in.q, in.k, in.v, in.lg, 2, 1.0 / 8.0, rows);
  Outcome o{};
  o.y = rel(y.cpu().index_select(1, rows), y0);
  o.ok = o.within = o.y <= tolerance(dt).fwd;
  return o;
}

// States on CUDA: two pieces carrying the state equal the whole (values and gradients); prefill + one decode
// step equals the forward at the last position.
Outcome run_states(const Case& c, std::mt19937_64& rng) {
  const Inputs in = make_inputs(c, rng);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  at::Tensor q0 = in.q.clone().requires_grad_(true), k0 = in.k.clone().requires_grad_(true),
             v0 = in.v.clone().requires_grad_(true), g0 = in.lg.clone().requires_grad_(true);
  at::Tensor y0 = oracle(q0, k0, v0, g0, c.p, scale);
  const at::Tensor dy = at::randn(y0.sizes(), at::TensorOptions().dtype(at::kDouble)).to(c.dtype).to(at::kDouble);
  const auto ref = torch::autograd::grad({y0}, {q0, k0, v0, g0}, {dy});

  const at::Device dev(at::kCUDA);
  at::Tensor q = leaf(in.q, c.dtype, dev), k = leaf(in.k, c.dtype, dev), v = leaf(in.v, c.dtype, dev),
             lg = leaf(in.lg, at::kFloat, dev);
  const int64_t cut = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(c.t - 2));
  pa::PowerFullOptions opt;
  opt.degree = c.p;
  if (c.chunk > 0) opt.chunk_size = c.chunk;
  poison();
  auto first = pa::power_full_with_state(q.narrow(1, 0, cut), k.narrow(1, 0, cut), v.narrow(1, 0, cut),
                                         lg.narrow(1, 0, cut), opt, at::Tensor(), at::Tensor());
  auto second = pa::power_full_with_state(q.narrow(1, cut, c.t - cut), k.narrow(1, cut, c.t - cut),
                                          v.narrow(1, cut, c.t - cut), lg.narrow(1, cut, c.t - cut), opt, first[1],
                                          first[2]);
  at::Tensor y = at::cat({first[0], second[0]}, 1);
  const auto got = torch::autograd::grad({y}, {q, k, v, lg}, {dy.to(dev, c.dtype)});
  Outcome o{};
  o.y = rel(y, y0.detach());
  o.dq = rel(got[0], ref[0]);
  o.dk = rel(got[1], ref[1]);
  o.dv = rel(got[2], ref[2]);
  o.dg = rel(got[3], ref[3]);
  // decode the last token from the state after t - 1 tokens
  {
    const at::NoGradGuard no_grad;
    const int64_t n = c.t - 1;
    auto pre = pa::power_full_with_state(q.narrow(1, 0, n), k.narrow(1, 0, n), v.narrow(1, 0, n), lg.narrow(1, 0, n),
                                         opt, at::Tensor(), at::Tensor());
    auto step = pa::power_decode_step(q.select(1, n), k.select(1, n), v.select(1, n), lg.select(1, n), pre[1], pre[2],
                                      c.p);
    const double dec = rel(step[0], y0.detach().select(1, n));
    o.y = std::max(o.y, dec);
  }
  const Tol tol = tolerance(c.dtype);
  o.within = o.y <= tol.fwd && o.dq <= tol.grad && o.dk <= tol.grad && o.dv <= tol.grad && o.dg <= tol.grad;
  o.ok = c.concentrated ? std::isfinite(o.y) && std::isfinite(o.dq) && std::isfinite(o.dk) && std::isfinite(o.dv) &&
                              std::isfinite(o.dg)
                        : o.within;
  return o;
}

// The degree-2 state kernels (sympow2_cuda.h) against phi made in ATen (fp32) from the documented internal layout:
// the fused scan (forward: Hs and the final state; backward: An, dL, dH0) over N chunks with random decays and
// starting states, B = phi'(x) H, and dx, u of phi'(x) . (y H^T) by autograd; plus the layout maps' round trip.
void check_sympow2_kernels() {
  const auto o = at::TensorOptions().device(at::kCUDA);
  for (int64_t d : {16, 64, 128})
    for (auto dt : {at::kBFloat16, at::kHalf}) {
      const int64_t BH = 2, N = 3, c = 100, X = BH * N, n = c, E = d + 8, nb = d / 16;
      std::vector<int64_t> ia, ib;
      std::vector<float> cf;
      for (int64_t A = 0; A < nb; ++A)
        for (int64_t a = 0; a < 16; ++a)
          for (int64_t B = A; B < nb; ++B)
            for (int64_t b = 0; b < 16; ++b) {
              ia.push_back(16 * A + a);
              ib.push_back(16 * B + b);
              cf.push_back(A == B ? 1.f : std::sqrt(2.f));
            }
      const int64_t D2 = static_cast<int64_t>(ia.size());
      const at::Tensor tia = at::tensor(ia).to(at::kCUDA), tib = at::tensor(ib).to(at::kCUDA);
      const at::Tensor tcf = at::tensor(cf).to(at::kCUDA);
      const at::Tensor x = at::randn({X, n, d}, o.dtype(dt));
      const at::Tensor rs = at::rand({X * n}, o.dtype(at::kFloat)) + 0.5;
      const at::Tensor y = at::randn({X, n, E}, o.dtype(at::kBFloat16));
      const at::Tensor H = (at::randn({X, D2, E}, o.dtype(at::kFloat)) * 0.1).to(at::kBFloat16);
      const at::Tensor decay = at::rand({X}, o.dtype(at::kFloat));
      const at::Tensor H0 = at::randn({BH, D2, E}, o.dtype(at::kFloat));
      at::Tensor xf = x.to(at::kFloat).requires_grad_(true);
      const at::Tensor phi = xf.index_select(2, tia) * xf.index_select(2, tib) * tcf * rs.view({X, n, 1});
      // scan references: H_{k+1} = decay_k H_k + S_k (forward), A_{k-1} = S_k + decay_k A_k (backward)
      const at::Tensor Sk = at::bmm(phi.detach().transpose(1, 2), y.to(at::kFloat)).view({BH, N, D2, E});
      const at::Tensor dec = decay.view({BH, N, 1, 1});
      std::vector<at::Tensor> hs, as(N);
      at::Tensor h = H0, acc = H0;
      for (int64_t k = 0; k < N; ++k) {
        hs.push_back(h);
        h = dec.select(1, k) * h + Sk.select(1, k);
      }
      at::Tensor dL_ref = at::zeros({BH, N}, o.dtype(at::kFloat));
      for (int64_t k = N - 1; k >= 0; --k) {
        as[k] = acc;
        dL_ref.select(1, k).copy_(decay.view({BH, N}).select(1, k) * (hs[k] * acc).sum({1, 2}));
        acc = Sk.select(1, k) + dec.select(1, k) * acc;
      }
      at::Tensor Hs = at::empty({BH, N, D2, E}, o.dtype(at::kBFloat16)), fin = at::empty({BH, D2, E}, o.dtype(at::kFloat));
      pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, y.view({BH, N * n, E}), decay, H0, N, Hs, fin);
      at::Tensor An = at::empty_like(Hs), dL = at::zeros({BH * N}, o.dtype(at::kFloat)), dH0 = at::empty_like(fin);
      const at::Tensor Hs_ref = at::stack(hs, 1).to(at::kBFloat16);  // the backward reads the bf16 states
      pa::cuda::sympow2_scan_backward(x.view({BH, N * n, d}), rs, y.view({BH, N * n, E}), decay, Hs_ref, H0, N, An,
                                      dL, dH0);
      const double fwd = std::max(rel(Hs, at::stack(hs, 1)), rel(fin, h));
      const double bwd_an = rel(An, at::stack(as, 1)), bwd_h0 = rel(dH0, acc), bwd_dl = rel(dL.view({BH, N}), dL_ref);
      const double bwd = std::max({bwd_an, bwd_h0, bwd_dl});
      // products against a given state
      const at::Tensor B_ref = at::bmm(phi, H.to(at::kFloat));
      const at::Tensor dphi = at::bmm(y.to(at::kFloat), H.to(at::kFloat).transpose(1, 2));
      const at::Tensor u_ref = (phi * dphi).sum(2).reshape({X * n});
      const at::Tensor dx_ref = torch::autograd::grad({(phi * dphi).sum()}, {xf})[0];
      const at::Tensor B = pa::cuda::sympow2_query(x, rs, H);
      auto [dx, u] = pa::cuda::sympow2_grad(x, rs, y, H);
      // the layout maps: to_official(to_internal(S)) = S (their composition is the identity)
      const at::Tensor ext = at::randn({2, pa::state_dim(d, 2), E}, o.dtype(at::kFloat));
      const double trip = rel(pa::cuda::sympow2_to_official(pa::cuda::sympow2_to_internal(ext, d), d), ext);
      // values given without their extended columns (bf16): the kernels make [v | 1 | 0] themselves, and must
      // match the same rows given whole
      double ones = 0;
      if (dt == at::kBFloat16) {
        const at::Tensor ve = y.narrow(2, 0, d).contiguous();
        const at::Tensor vx = at::cat({ve, at::ones({X, n, 1}, ve.options()), at::zeros({X, n, E - d - 1}, ve.options())}, 2);
        at::Tensor Hs1 = at::empty_like(Hs), Hs2 = at::empty_like(Hs), f1 = at::empty_like(fin), f2 = at::empty_like(fin);
        pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, ve.view({BH, N * n, d}), decay, H0, N, Hs1, f1);
        pa::cuda::sympow2_scan_forward(x.view({BH, N * n, d}), rs, vx.view({BH, N * n, E}), decay, H0, N, Hs2, f2);
        auto [dx1, u1] = pa::cuda::sympow2_grad(x, rs, ve, H);
        auto [dx2, u2] = pa::cuda::sympow2_grad(x, rs, vx, H);
        ones = std::max({rel(Hs1, Hs2), rel(f1, f2), rel(dx1, dx2), rel(u1, u2)});
      }
      Outcome oc;
      oc.y = fwd;
      oc.dq = bwd;
      oc.dk = rel(B, B_ref);
      oc.dv = std::max(rel(dx, dx_ref), rel(u, u_ref));
      oc.dg = std::max(trip, ones);  // both exact up to fp32 rounding
      const double tol = 1e-2;
      oc.ok = oc.y < tol && oc.dq < tol && oc.dk < tol && oc.dv < tol && oc.dg < 1e-6;
      char id[120];
      std::snprintf(id, sizeof id, "sympow2-kernels-d%ld-%s (scan fwd, scan bwd, B, dx+u, maps + ones)", d, c10::toString(dt));
      report(id, oc, Tol{tol, tol});
      if (!oc.ok) {
        std::printf("     scan bwd: An %.2e  dH0 %.2e  dL %.2e; dL / ref:", bwd_an, bwd_h0, bwd_dl);
        const at::Tensor a = dL.cpu(), r = dL_ref.reshape({BH * N}).cpu();
        for (int64_t i = 0; i < BH * N; ++i) std::printf(" %.4g/%.4g", a[i].item<double>(), r[i].item<double>());
        std::printf("\n");
      }
    }
}

int run_tests() {
  std::mt19937_64 rng(std::random_device{}());
  check_sympow2_kernels();
  const at::ScalarType bf = at::kBFloat16, hf = at::kHalf, f32 = at::kFloat, f64 = at::kDouble;
  std::vector<Case> cases;
  // dtypes x forms at the workhorse shape, odd t
  for (auto dt : {bf, hf, f32, f64})
    for (int64_t chunk : {0, 64})
      for (bool gate : {true, false}) cases.push_back({2, 97, 4, 2, 64, 64, 2, chunk, gate, dt});
  // degrees 1-4 (odd degrees compute in fp64 internally)
  for (int64_t p : {1, 2, 3, 4})
    for (int64_t chunk : {0, 16}) {
      const int64_t d = p >= 3 ? 16 : 32;
      cases.push_back({1, 97, 2, 1, d, d, p, chunk, true, f32});
      cases.push_back({1, 97, 2, 1, d, d, p, chunk, true, bf});
    }
  cases.push_back({1, 33, 1, 1, 64, 64, 4, 0, true, bf});
  cases.push_back({1, 40, 1, 1, 64, 64, 3, 16, true, f32});
  // head dims d, e in {16, 32, 64, 128}, e != d, and an odd size (fallback)
  for (int64_t d : {16, 32, 64, 128})
    for (int64_t e : {16, 128}) cases.push_back({1, 130, 2, 2, d, e, 2, 32, true, bf});
  cases.push_back({1, 61, 3, 1, 24, 40, 2, 16, true, f32});
  // grouped-query heads
  for (int64_t g : {1, 2, 4, 8}) {
    cases.push_back({2, 100, 2 * g, 2, 32, 32, 2, 32, true, bf});
    cases.push_back({1, 100, g, 1, 32, 32, 2, 0, true, f32});
  }
  // lengths: 1, primes, 1025; chunk sizes around t
  for (int64_t t : {1, 2, 17, 1025})
    for (int64_t chunk : {0, 1, 16, 128, 2048}) cases.push_back({1, t, 2, 1, 32, 32, 2, chunk, true, f32});
  cases.push_back({1, 1025, 4, 4, 64, 64, 2, 256, true, bf});
  cases.push_back({1, 1025, 4, 4, 64, 64, 2, 0, true, bf});
  cases.push_back({2, 1025, 8, 2, 64, 64, 2, 1024, false, hf});
  // the fused tile kernels (bf16 / fp16, d == e): sizes, tile edges (64 rows / keys), grouped heads, both forms
  for (int64_t d : {16, 32, 128})
    for (auto dt : {bf, hf}) cases.push_back({1, 130, 4, 2, d, d, 2, 0, true, dt});
  for (int64_t t : {1, 2, 65, 200})
    for (int64_t chunk : {0, 1, 64, 128}) cases.push_back({1, t, 4, 2, 64, 64, 2, chunk, true, bf});
  cases.push_back({2, 300, 8, 1, 64, 64, 2, 0, false, hf});
  // the forward's degree-2 form and its way back to the log form: tiny scores (squares under 2^-126), strong
  // decay (gates spanning more than 2^64 inside a key tile), both, and a chunked case of each
  // (chunked: 1e-5, squares under 2^-60; smaller ones would underflow the fp32 state products, a known limit)
  for (int64_t chunk : {0, 64}) {
    cases.push_back({1, 200, 2, 1, 64, 64, 2, chunk, true, bf, chunk ? 1e-5 : 1e-12});
    cases.push_back({1, 200, 2, 1, 64, 64, 2, chunk, true, bf, 1, -2});
    cases.push_back({1, 200, 4, 2, 32, 32, 2, chunk, true, hf, 1, -1});
  }
  cases.push_back({1, 513, 2, 2, 128, 128, 2, 256, true, bf});
  // some gradients only (the kernels make dk and dv together; the chunked form adds the state side's parts)
  for (int64_t chunk : {0, 64})
    for (int want : {1, 2, 4, 8, 3, 12}) {
      Case c{1, 150, 4, 2, 64, 64, 2, chunk, true, bf};
      c.want = want;
      cases.push_back(c);
    }

  // log gates of either sign and any size (the stabilised chunked form), both forms, chunks 16 / 64 / 256, t = 600
  // (a multiple of none of them): positive +0.05 a token (the states' log-scale grows to 30 nats) and tiny
  // N(0, 1e-6); and the concentrated ones (Case::concentrated: finite, errors reported): +0.5 and +5 a token (a row's
  // weight on the first few tokens), mixed N(0, 1) and N(0, 3), strong decay -20 (a row's weight on its own key). With
  // 16-bit inputs the chunked form's +0.05 counts as concentrated too: nearly all of every row's weight then comes
  // through the bf16 states, and the gate gradient's reverse cumsum cancels their rounding (measured 1.3-4.9e-2 on an
  // H200; y, dq, dk, dv stay within SPEC §7). Then t = 1024, chunk 256 (where NaN was first reported); the unfused
  // state side (fp32, degrees 1, 3, 4, d != e).
  struct Mode {
    double mean, std;
    bool concentrated;
  };
  const std::vector<Mode> modes = {{0.05, 0, false}, {0, 1e-6, false}, {-20, 0, true}, {0.5, 0, true},
                                   {5, 0, true},     {0, 1, true},     {0, 3, true}};
  auto states_in_16bit = [&](at::ScalarType dt, int64_t chunk) { return chunk > 0 && (dt == bf || dt == hf); };
  for (auto dt : {bf, hf, f32})
    for (int64_t chunk : {0, 16, 64, 256})
      for (const Mode& m : modes)
        cases.push_back(gated({1, 600, 4, 2, 64, 64, 2, chunk, true, dt}, m.mean, m.std,
                              m.concentrated || (m.mean > 0 && states_in_16bit(dt, chunk))));
  for (auto dt : {bf, f32})
    for (double mean : {0.5, 5.0}) cases.push_back(gated({1, 1024, 4, 2, 64, 64, 2, 256, true, dt}, mean, 0, true));
  for (int64_t p : {1, 3, 4})
    for (const Mode& m : std::vector<Mode>{{0.05, 0, false}, {-20, 0, true}, {5, 0, true}, {0, 3, true}})
      cases.push_back(gated({1, 97, 2, 1, 16, 16, p, 16, true, f32}, m.mean, m.std, m.concentrated));
  for (const Mode& m : std::vector<Mode>{{0.05, 0, true}, {5, 0, true}})  // bf16 states (see above)
    cases.push_back(gated({1, 130, 2, 2, 32, 16, 2, 32, true, bf}, m.mean, m.std, m.concentrated));

  std::printf("== correctness: %zu cases against the fp64 oracle of SPEC §2 ==\n", cases.size());
  for (const Case& c : cases) report(name(c), guarded([&] { return run_case(c, rng); }), tolerance(c.dtype));
  for (auto dt : {bf, f32}) {
    for (int64_t t : {65536, 131072}) {
      char id[100];
      std::snprintf(id, sizeof id, "long-t%ld-c1024-%s (256 sampled rows)", t, c10::toString(dt));
      report(id, run_long(t, 1024, dt, rng), tolerance(dt));
    }
    // mixed gates over a long sequence (the log-scales wander far both ways), and positive ones (they grow to
    // 3300 nats: e^3300 overflows fp64)
    for (const auto& [mean, std] : std::vector<std::pair<double, double>>{{0.0, 0.3}, {0.05, 0.0}})
      for (int64_t chunk : {256, 1024}) {
        char id[100];
        std::snprintf(id, sizeof id, "long-t65536-c%ld-%s-lg%+g~%g (256 sampled rows)", chunk, c10::toString(dt), mean,
                      std);
        report(id, guarded([&] { return run_long(65536, chunk, dt, rng, mean, std); }), tolerance(dt));
      }
  }
  for (auto dt : {bf, f32}) {
    for (int64_t chunk : {0, 32}) {
      const Case c{2, 150, 4, 2, 32, 32, 2, chunk, true, dt};
      report("states-" + name(c), guarded([&] { return run_states(c, rng); }), tolerance(dt));
      // positive gates: the returned (true-scale) state grows to e^7.5 (+0.05 a token) and e^37.5 (+0.25,
      // concentrated: finite, errors reported), under the exp(44) that the API lets an fp32 state hold; +0.05 through
      // bf16 states counts as concentrated (see above)
      for (const auto& [mean, conc] : std::vector<std::pair<double, bool>>{{0.05, false}, {0.25, true}}) {
        const Case cg = gated(c, mean, 0, conc || states_in_16bit(dt, chunk));
        report("states-" + name(cg), guarded([&] { return run_states(cg, rng); }), tolerance(dt));
      }
    }
  }
  std::printf("== %d failure(s); %d concentrated case(s) finite but over the tolerances ==\n", failures, overs);
  return failures == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------------------------------------------

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

// Decode (issue: states): one token's step from the recurrent state against recomputing the forward over the
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

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "test";
  try {
    if (mode == "test") return run_tests();
    if (mode == "bench") return run_bench(argc > 2 ? argv[2] : nullptr);
    if (mode == "decode") return run_decode_bench();
    if (mode == "repeat") {  // a few cases drawn again and again (fresh inputs each time), to see their spread
      const int n = argc > 2 ? std::atoi(argv[2]) : 10;
      std::mt19937_64 rng(std::random_device{}());
      const std::vector<Case> cs = {{1, 200, 4, 2, 32, 32, 2, 64, true, at::kHalf, 1, -1},
                                    {1, 200, 4, 2, 32, 32, 2, 64, true, at::kBFloat16, 1, -1},
                                    {1, 200, 4, 2, 32, 32, 2, 64, true, at::kHalf},
                                    {2, 100, 8, 2, 32, 32, 2, 32, true, at::kBFloat16},
                                    {2, 100, 8, 2, 32, 32, 2, 0, true, at::kBFloat16}};
      for (const Case& c : cs)
        for (int i = 0; i < n; ++i) report(name(c), run_case(c, rng), tolerance(c.dtype));
      return failures > 0 ? 1 : 0;
    }
    if (mode == "kernels") {  // the direct kernel checks alone, repeated (fresh inputs each time)
      for (int i = 0; i < (argc > 2 ? std::atoi(argv[2]) : 1); ++i) check_sympow2_kernels();
      return 0;
    }
    if (mode == "profile")
      return run_profile(argc > 2 ? std::atoll(argv[2]) : 256, argc > 3 ? std::atoll(argv[3]) : 65536);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr, "usage: %s test | bench [json]\n", argv[0]);
  return 2;
}
