// power_full.cpp: the API file. Input checks (every binding gets them), magnitudes brought to a safe range, the
// compute layout, the one autograd Function that owns forward and backward (optional state in and out), and the
// dispatch between the device paths and the references.
#include "errors.h"
#include "power_attention.h"
#include "power_full_cpu.h"
#ifdef POWER_ATTENTION_WITH_CUDA
#include "power_full_cuda.h"
#include "sympow2_cuda.h"
#endif
#include "sympow.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <unistd.h>

namespace power_attention {
namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

void check_rank(const at::Tensor& x, const char* name, const char* dims, int64_t rank) {
  POWER_ATTENTION_CHECK_ARG(x.defined(), "power_full: ", name, " must be a tensor ", dims, ", got an undefined tensor");
  POWER_ATTENTION_CHECK_ARG(x.dim() == rank, "power_full: ", name, " must have ", rank, " dimensions ", dims, ", got ",
                    x.dim(), " dimensions ", shape_str(x.sizes()));
}

void check_shape(const at::Tensor& x, const char* name, const char* dims, std::vector<int64_t> expected) {
  POWER_ATTENTION_CHECK_ARG(x.sizes().vec() == expected, "power_full: ", name, " must have shape ", dims, " = ",
                    shape_str(expected), ", got ", shape_str(x.sizes()));
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Bytes the chunked form holds at once for its states: all of them when they are saved for backward, one
// head group's running state otherwise, plus phi of one chunk of query rows.
double chunked_bytes(const Problem& pr, bool save, int64_t elem) {
  const double D = static_cast<double>(sympow_dim(pr.d, pr.p));
  const double N = static_cast<double>(pr.T / pr.chunk);
  const double states = (save ? pr.BH * N : 1.0) * D * (pr.e + 1);
  const double phi = 2.0 * pr.chunk * pr.g * D;
  return (states + phi) * elem;
}

double memory_limit_bytes() {
  if (const char* env = std::getenv("POWER_ATTENTION_MEMORY_LIMIT")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v > 0) return v;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) return 0.5 * static_cast<double>(pages) * static_cast<double>(page);
  return 8.0 * (1ull << 30);
}

std::string gib(double bytes) {
  std::ostringstream o;
  o.precision(3);
  o << bytes / static_cast<double>(1ull << 30) << " GiB";
  return o.str();
}

// The compute layout of power_full_cpu.h.
struct Layout {
  int64_t b, t, hq, h, g, d, e, T;
  at::ScalarType ct;  // compute dtype of q, k, v, y
  at::ScalarType gt;  // log gates
  at::ScalarType st;  // states in and out
};

at::Tensor pad_tokens(const at::Tensor& x, int64_t dim, int64_t T) {
  const int64_t pad = T - x.size(dim);
  if (pad == 0) return x;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[dim] = pad;
  return at::cat({x, at::zeros(shape, x.options())}, dim);
}

// [b, t, hq, w] -> [b*h, T, g, w]
at::Tensor query_layout(const at::Tensor& x, const Layout& L) {
  at::Tensor y = x.to(L.ct).view({L.b, L.t, L.h, L.g, x.size(3)}).permute({0, 2, 1, 3, 4});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T, L.g, x.size(3)}).contiguous();
}
// [b, t, h, w] -> [b*h, T, w]
at::Tensor kv_layout(const at::Tensor& x, const Layout& L) {
  at::Tensor y = x.to(L.ct).permute({0, 2, 1, 3});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T, x.size(3)}).contiguous();
}
// [b, t, h] -> [b*h, T] in the gate dtype
at::Tensor gate_layout(const at::Tensor& x, const Layout& L) {
  if (!x.defined()) return at::Tensor();
  at::Tensor y = x.to(L.gt).permute({0, 2, 1});
  return pad_tokens(y, 2, L.T).reshape({L.b * L.h, L.T}).contiguous();
}
// The way back: one copy that permutes and converts at once (no intermediate in the compute dtype).
at::Tensor query_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  const int64_t w = y.size(3);
  at::Tensor out = at::empty({L.b, L.t, L.hq, w}, y.options().dtype(dtype));
  out.view({L.b, L.t, L.h, L.g, w}).copy_(y.view({L.b, L.h, L.T, L.g, w}).narrow(2, 0, L.t).permute({0, 2, 1, 3, 4}));
  return out;
}
at::Tensor kv_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  const int64_t w = y.size(2);
  at::Tensor out = at::empty({L.b, L.t, L.h, w}, y.options().dtype(dtype));
  out.copy_(y.view({L.b, L.h, L.T, w}).narrow(2, 0, L.t).permute({0, 2, 1, 3}));
  return out;
}
at::Tensor gate_unlayout(const at::Tensor& y, const Layout& L, at::ScalarType dtype) {
  at::Tensor out = at::empty({L.b, L.t, L.h}, y.options().dtype(dtype));
  out.copy_(y.view({L.b, L.h, L.T}).narrow(2, 0, L.t).permute({0, 2, 1}));
  return out;
}

// What goes back to the caller: y, and the gradients of q, k, v, in the API layout and the inputs' dtypes (the
// path's own when it made them there, Forward::y_api / Grads::api; else the compute layout's, converted).
at::Tensor api_output(const Forward& f, const Layout& L, at::ScalarType dtype) {
  return f.y_api.defined() ? f.y_api : query_unlayout(f.y, L, dtype);
}
struct InputGrads {
  at::Tensor q, k, v;
};
InputGrads api_grads(const Grads& gr, const Layout& L, const Needs& needs, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v) {
  InputGrads g;
  if (needs.q) g.q = gr.api ? gr.q : query_unlayout(gr.q, L, q.scalar_type());
  if (needs.k) g.k = gr.api ? gr.k : kv_unlayout(gr.k, L, k.scalar_type());
  if (needs.v) g.v = gr.api ? gr.v : kv_unlayout(gr.v, L, v.scalar_type());
  return g;
}

struct Resolved {
  Layout layout;
  Problem problem;
};

// stateful: states in or out need the chunked path; without a chunk size (or t <= chunk) it is one chunk of t.
// amplifying: the log gates hold a positive value (the past amplified, see amplifying_gates).
Resolved resolve(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t p, double scale,
                 int64_t chunk, bool stateful = false, bool amplifying = false) {
  Resolved r;
  Layout& L = r.layout;
  L.b = q.size(0), L.t = q.size(1), L.hq = q.size(2), L.d = q.size(3), L.h = k.size(2), L.e = v.size(3);
  L.g = L.hq / L.h;
  // fp64 for fp64 inputs and for odd degrees, whose signed normaliser can cancel badly. Otherwise the CPU computes
  // in fp32, and CUDA keeps the input dtype for its matrix products (fp32 accumulation) with fp32 gates and states.
  const bool cpu = q.device().is_cpu();
  // t <= chunk: the quadratic form is the chunked form with a single chunk, minus the padding.
  const int64_t c = (chunk > 0 && chunk < L.t) ? chunk : (stateful ? L.t : 0);
  // Positive log gates make the states carry most of the weight: phi(q) . phi(k) = (q . k)^p is then formed as a
  // sum of D products, which in fp32 loses the cancellation of nearly orthogonal q, k (1e-3 relative errors at log
  // gates of +5 a token, where the quadratic form is exact to 1e-7). The CPU computes those chunked forms in fp64.
  const bool fp64 = q.scalar_type() == at::kDouble || p % 2 == 1 || (cpu && c > 0 && amplifying);
  // On CUDA, degrees >= 3 compute in fp32 too: bf16 phi of degree 4 left gate gradients at 0.9-1.5e-2 on the GPU
  // harness, over SPEC §7's 1e-2 (degree 2 stays on the bf16 tensor-core path). So do chunks under 16 tokens:
  // nearly all weight then goes through the states, whose bf16 phi products lose the cancellation of a small
  // q . k (chunk 1: 2-9e-2 on the harness); the in-chunk scores are exact products of the inputs.
  const bool small_chunk = c > 0 && c < 16;
  L.ct = fp64 ? at::kDouble : (cpu || p >= 3 || small_chunk ? at::kFloat : q.scalar_type());
  L.gt = fp64 || cpu ? at::kDouble : at::kFloat;
  L.st = fp64 ? at::kDouble : at::kFloat;
  L.T = c > 0 ? (L.t + c - 1) / c * c : L.t;
  Problem& pr = r.problem;
  pr.BH = L.b * L.h, pr.T = L.T, pr.g = L.g, pr.d = L.d, pr.e = L.e, pr.p = p, pr.scale = scale, pr.chunk = c;
  pr.b = L.b, pr.t = L.t;
  pr.api = q.scalar_type() == L.ct && k.scalar_type() == L.ct && v.scalar_type() == L.ct;
#ifdef POWER_ATTENTION_WITH_CUDA
  // CUDA reads q, k, v (and dy) in the API layout where its kernels can: no layout copies
  pr.direct = q.is_cuda() && pr.api && cuda::direct_supported(pr, q.scalar_type());
#endif
  return r;
}

// The inputs in the compute layout. On CUDA the forward's copies are kept for the backward (three layout copies
// fewer per step, for as much memory as the inputs); elsewhere the backward makes them again.
struct LaidOut {
  at::Tensor q, k, v, g;
};
LaidOut lay_out(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                const Layout& L) {
  return {query_layout(q, L), kv_layout(k, L), kv_layout(v, L), gate_layout(log_g, L)};
}
// Keeps the forward's compute-layout copies for the backward on CUDA (none with Problem::direct: x is the inputs).
void keep_for_backward(torch::autograd::AutogradContext* ctx, const Problem& pr, const LaidOut& x) {
  if (!x.q.is_cuda() || pr.direct) return;
  ctx->saved_data["lq"] = x.q;
  ctx->saved_data["lk"] = x.k;
  ctx->saved_data["lv"] = x.v;
  if (x.g.defined()) ctx->saved_data["lg"] = x.g;
}

// The device path: CUDA kernels for CUDA tensors (when built with them), the CPU path otherwise.
bool has_device_path(const at::Tensor& q) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) return true;
#endif
  return q.device().is_cpu();
}

Forward path_forward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& lg, bool save, const State& initial = {}, bool want_final = false) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) return cuda::forward(pr, q, k, v, lg, save, initial, want_final);
#endif
  return cpu::forward(pr, q, k, v, lg, save, initial, want_final);
}

Grads path_backward(const Problem& pr, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& lg, const Forward& saved, const at::Tensor& dy, const Needs& needs,
                    const State& d_final = {}) {
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) return cuda::backward(pr, q, k, v, lg, saved, dy, needs, d_final);
#endif
  return cpu::backward(pr, q, k, v, lg, saved, dy, needs, d_final);
}

// The inputs as the path takes them: the API layout itself (Problem::direct: contiguous, no copies) or the compute
// layout (laid_out_for_backward reuses the forward's copies).
LaidOut path_inputs(const Resolved& r, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& log_g) {
  if (r.problem.direct) return {q.contiguous(), k.contiguous(), v.contiguous(), gate_layout(log_g, r.layout)};
  return lay_out(q, k, v, log_g, r.layout);
}
// The backward's inputs: the forward's compute-layout copies where it kept them (CUDA), else path_inputs again.
LaidOut laid_out_for_backward(torch::autograd::AutogradContext* ctx, const Resolved& r, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g) {
  if (ctx->saved_data.count("lq") == 0) return path_inputs(r, q, k, v, log_g);
  LaidOut x{ctx->saved_data["lq"].toTensor(), ctx->saved_data["lk"].toTensor(), ctx->saved_data["lv"].toTensor(), {}};
  if (log_g.defined()) x.g = ctx->saved_data["lg"].toTensor();
  return x;
}
// dy [b, t, hq, e] as the path takes it (like q), or zeros where autograd gave none.
at::Tensor path_dy(const Resolved& r, const at::Tensor& dy, const at::Tensor& q) {
  const Layout& L = r.layout;
  if (r.problem.direct) {
    return dy.defined() ? dy.to(q.scalar_type()).contiguous() : at::zeros({L.b, L.t, L.hq, L.e}, q.options());
  }
  return dy.defined() ? query_layout(dy, L) : at::zeros({L.b * L.h, L.T, L.g, L.e}, q.options().dtype(L.ct));
}

// [b, h, D, e] / [b, h, D] <-> [b*h, D, e] / [b*h, D] in the state dtype
State state_layout(const at::Tensor& S, const at::Tensor& s, const Layout& L) {
  if (!S.defined()) return {};
  return {S.to(L.st).reshape({L.b * L.h, S.size(2), S.size(3)}).contiguous(),
          s.to(L.st).reshape({L.b * L.h, s.size(2)}).contiguous(), at::Tensor()};
}

// ---------------------------------------------------------------------------------------------------------------
// Magnitudes. y is invariant to the scale of each query row, to a common scale of each head's keys, and to `scale`
// (every weight of a row shares the factor). Inputs whose scores or states could leave the floating-point range
// (|q|, |k| of 1e-20 or 1e20, say, or an extreme `scale`) are brought to max-abs in [1, 2) by powers of two, which is
// exact; the gradients of q and k take the same factors. Inputs of ordinary size pass untouched.
// ---------------------------------------------------------------------------------------------------------------

struct Scaled {
  at::Tensor q, k;    // what the path sees
  at::Tensor qf;      // [b, t, hq, 1] the power of two each query row was multiplied by (undefined: none was)
  at::Tensor kf;      // [b, 1, h, 1] likewise for each head's keys
  at::Tensor state_logscale;  // [b * h] fp64: p log(kf), the log-scale of a state in the path's units of k
  double scale = 1;   // the scale the path uses
  bool applied() const { return qf.defined(); }
};

// 2^-floor(log2(a)) for a > 0, 1 for a == 0, as fp32 (fp64 for fp64 amax).
at::Tensor pow2_factor(const at::Tensor& amax) {
  const at::Tensor e = at::floor(at::log2(at::where(amax > 0, amax, at::ones_like(amax))));
  return at::exp2(-e);
}

// x * f with f a power of two per row or head: in x's dtype where that is exact (fp16 cannot hold every factor).
at::Tensor times_pow2(const at::Tensor& x, const at::Tensor& f) {
  if (x.scalar_type() == at::kHalf) return (x.to(at::kFloat) * f).to(at::kHalf);
  return x * f.to(x.scalar_type());
}

Scaled scale_to_safe_range(const at::Tensor& q, const at::Tensor& k, int64_t p, double scale) {
  Scaled sc;
  sc.q = q, sc.k = k, sc.scale = scale;
  const auto wide = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double d = static_cast<double>(q.size(3));
  at::Tensor qa, ka;
  {
    at::NoGradGuard no_grad;
    qa = at::linalg_vector_norm(q, std::numeric_limits<double>::infinity(), {-1}, true, wide);       // [b, t, hq, 1]
    ka = at::linalg_vector_norm(k, std::numeric_limits<double>::infinity(), {1, 3}, true, wide);     // [b, 1, h, 1]
  }
  // On the CPU the factors are applied only where needed. On CUDA they always are: deciding would read the maxima
  // back to the host, a device sync on every call, which costs more than the two scaling passes.
  if (!q.is_cuda()) {
    double qmax, qmin, kmax, kmin;
    {
      at::NoGradGuard no_grad;
      const at::Tensor inf = at::full({}, std::numeric_limits<double>::infinity(), qa.options());
      const at::Tensor stats = at::stack({qa.max(), at::where(qa > 0, qa, inf).min(), ka.max(),
                                          at::where(ka > 0, ka, inf).min()}).to(at::kDouble).cpu();
      const double* st = stats.data_ptr<double>();
      qmax = st[0], qmin = st[1], kmax = st[2], kmin = st[3];
    }
    if (qmax == 0 || kmax == 0) return sc;  // all weights are zero: nothing to bring into range
    // the largest score scale d |q| |k| and the smallest relevant one |q| |k| (per row and head) must stay well
    // inside the range where their p-th powers, summed over the sequence, are finite and normal in fp32
    const double hi = std::exp2(64.0 / static_cast<double>(p)), lo = std::exp2(-64.0 / static_cast<double>(p));
    const bool safe = std::isfinite(qmax) && std::isfinite(kmax) && scale * d * qmax * kmax <= hi &&
                      scale * qmin * kmin >= lo && scale <= hi && scale >= lo;
    if (safe) return sc;
  }
  at::NoGradGuard no_grad;
  sc.qf = pow2_factor(qa);
  sc.kf = pow2_factor(ka);
  sc.q = times_pow2(q, sc.qf);
  sc.k = times_pow2(k, sc.kf);
  sc.scale = 1.0 / std::sqrt(d);
  sc.state_logscale = (at::log(sc.kf.to(at::kDouble)) * static_cast<double>(p)).reshape({-1});  // [b * h]
  return sc;
}

// The gradient of x from that of x * f (f a constant power of two per row or head), in x's dtype.
at::Tensor unscale_grad(const at::Tensor& grad, const at::Tensor& f) {
  if (!grad.defined() || !f.defined()) return grad;
  return times_pow2(grad, f);
}

// A state that the op returns is a plain tensor (SPEC §6): exp(G_t - G_j) must fit its dtype. Positive log gates
// that add up past that are refused before any work (the plain power_full serves any log gates).
double state_gate_limit(at::ScalarType st) { return st == at::kDouble ? 354.0 : 44.0; }  // ln 2^512, ln 2^64

void check_state_gates(const at::Tensor& log_g, bool has_initial, at::ScalarType st) {
  if (!log_g.defined()) return;
  double worst;
  {
    at::NoGradGuard no_grad;
    const at::Tensor G = log_g.to(at::kDouble).cumsum(1);                  // [b, t, h]
    const at::Tensor last = G.select(1, G.size(1) - 1);                    // [b, h]
    at::Tensor lowest = std::get<0>(G.min(1));                             // min_j G_j
    if (has_initial) lowest = at::minimum(lowest, at::zeros_like(lowest));  // the entering state decays by exp(G_t)
    worst = (last - lowest).max().item<double>();
  }
  const double limit = state_gate_limit(st);
  POWER_ATTENTION_CHECK_ARG(
      std::isfinite(worst) && worst <= limit, "power_full: log_G adds up to exp(G_t - G_j) = exp(", worst,
      ") in the state returned after the last token (positive log gates grow the past), over the exp(", limit,
      ") that a ", st == at::kDouble ? "float64" : "float32",
      " state can hold. Options: power_full without states (it serves log gates of any sign and size), float64 "
      "inputs (states up to exp(354)), or shorter pieces");
}

// The true state [b, h, D, e] / [b, h, D] from the path's scaled one: exp(final_logscale - state_logscale) (S^, s^).
at::Tensor state_factor(const at::Tensor& final_logscale, const Scaled& sc, int64_t BH) {
  at::Tensor lf = final_logscale.defined() ? final_logscale.to(at::kDouble)
                                           : at::zeros({BH}, at::TensorOptions().dtype(at::kDouble));
  if (sc.applied()) lf = lf - sc.state_logscale.to(lf.device());
  return at::exp(lf);
}

// ---------------------------------------------------------------------------------------------------------------
// The autograd Function: power_full with an optional state in (S0, s0) and, when stateful, the state out.
// Inputs q, k, v, gates, S0, s0 (0-element tensors stand for "none": autograd rejects undefined inputs); outputs
// {Y} or, stateful, {Y, S, s}.
// ---------------------------------------------------------------------------------------------------------------

at::Tensor or_none(const at::Tensor& x) { return x.numel() > 0 ? x : at::Tensor(); }

// Whether the CPU's chunked form must compute in fp64 (resolve): log gates with a positive value. Read on the CPU
// only (a CUDA tensor would need a device sync).
bool amplifying_gates(const at::Tensor& log_g, int64_t chunk) {
  if (!log_g.defined() || chunk <= 0 || !log_g.device().is_cpu()) return false;
  at::NoGradGuard no_grad;
  return log_g.max().item<double>() > 0;
}

class PowerFullFunction : public torch::autograd::Function<PowerFullFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& gates, const at::Tensor& S0,
                                                const at::Tensor& s0, int64_t p, double scale, int64_t chunk,
                                                bool save, bool stateful) {
    const at::Tensor log_g = or_none(gates);
    const bool has_initial = S0.numel() > 0;
    const Scaled sc = scale_to_safe_range(q, k, p, scale);
    const bool amplifying = amplifying_gates(log_g, stateful ? std::max<int64_t>(chunk, 1) : chunk);
    const Resolved r = resolve(sc.q, sc.k, v, p, sc.scale, chunk, stateful, amplifying);
    const Layout& L = r.layout;
    State initial;
    if (has_initial) {
      initial = state_layout(S0, s0, L);
      initial.logscale = sc.state_logscale;
    }
    const LaidOut x = path_inputs(r, sc.q, sc.k, v, log_g);
    const Forward f = path_forward(r.problem, x.q, x.k, x.v, x.g, save, initial, stateful);
    at::Tensor factor;
    if (stateful) factor = state_factor(f.final_logscale, sc, L.b * L.h).to(f.final_state.device());
    if (save) {
      ctx->save_for_backward({q, k, v, gates, S0, s0});
      keep_for_backward(ctx, r.problem, x);
      if (sc.applied()) {
        ctx->saved_data["q_scaled"] = sc.q;
        ctx->saved_data["k_scaled"] = sc.k;
        ctx->saved_data["q_factor"] = sc.qf;
        ctx->saved_data["k_factor"] = sc.kf;
      }
      ctx->saved_data["y"] = f.y;
      ctx->saved_data["den"] = f.den;
      ctx->saved_data["rowmax"] = f.rowmax;
      if (f.states.defined()) {
        ctx->saved_data["states"] = f.states;
        ctx->saved_data["norms"] = f.norms;
      }
      if (f.logscale.defined()) ctx->saved_data["logscale"] = f.logscale;
      if (factor.defined()) ctx->saved_data["state_factor"] = factor;
      ctx->saved_data["p"] = p;
      ctx->saved_data["scale"] = sc.scale;
      ctx->saved_data["chunk"] = chunk;
      ctx->saved_data["stateful"] = stateful;
      ctx->saved_data["amplifying"] = amplifying;
    }
    const at::Tensor y = api_output(f, L, q.scalar_type());
    if (!stateful) return {y};
    const int64_t D = f.final_state.size(1);
    const at::Tensor S = (f.final_state.to(at::kDouble) * factor.view({-1, 1, 1})).to(L.st);
    const at::Tensor s = (f.final_norm.to(at::kDouble) * factor.view({-1, 1})).to(L.st);
    return {y, S.view({L.b, L.h, D, L.e}), s.view({L.b, L.h, D})};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    const bool stateful = ctx->saved_data["stateful"].toBool();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor log_g = or_none(saved[3]), S0 = or_none(saved[4]), s0 = or_none(saved[5]);
    Needs needs;
    needs.q = ctx->needs_input_grad(0);
    needs.k = ctx->needs_input_grad(1);
    needs.v = ctx->needs_input_grad(2);
    needs.g = log_g.defined() && ctx->needs_input_grad(3);
    needs.state = S0.defined() && (ctx->needs_input_grad(4) || ctx->needs_input_grad(5));
    const at::Tensor dy = grad_outputs[0];
    const bool seeded = stateful && (grad_outputs[1].defined() || grad_outputs[2].defined());
    torch::autograd::variable_list out(11);
    if (!(needs.q || needs.k || needs.v || needs.g || needs.state) || !(dy.defined() || seeded)) return out;
    if (at::GradMode::is_enabled()) return backward_with_graph(ctx, saved, grad_outputs, needs, stateful);

    const bool scaled = ctx->saved_data.count("q_factor") > 0;
    const at::Tensor qs = scaled ? ctx->saved_data["q_scaled"].toTensor() : q;
    const at::Tensor ks = scaled ? ctx->saved_data["k_scaled"].toTensor() : k;
    const Resolved r = resolve(qs, ks, v, ctx->saved_data["p"].toInt(), ctx->saved_data["scale"].toDouble(),
                               ctx->saved_data["chunk"].toInt(), stateful, ctx->saved_data["amplifying"].toBool());
    const Layout& L = r.layout;
    Forward f;
    f.y = ctx->saved_data["y"].toTensor();
    f.den = ctx->saved_data["den"].toTensor();
    f.rowmax = ctx->saved_data["rowmax"].toTensor();
    if (ctx->saved_data.count("states") > 0) {
      f.states = ctx->saved_data["states"].toTensor();
      f.norms = ctx->saved_data["norms"].toTensor();
    }
    if (ctx->saved_data.count("logscale") > 0) f.logscale = ctx->saved_data["logscale"].toTensor();
    State d_final;
    if (seeded) {
      // the true state is factor * (S^, s^): the gradient of S^ is factor * dS
      const int64_t D = sympow_dim(L.d, r.problem.p);
      const auto o = q.options().dtype(L.st);
      const at::Tensor dS = grad_outputs[1].defined() ? grad_outputs[1] : at::zeros({L.b, L.h, D, L.e}, o);
      const at::Tensor ds = grad_outputs[2].defined() ? grad_outputs[2] : at::zeros({L.b, L.h, D}, o);
      const at::Tensor factor = ctx->saved_data["state_factor"].toTensor();
      d_final = state_layout(dS, ds, L);
      d_final.S = (d_final.S.to(at::kDouble) * factor.view({-1, 1, 1})).to(L.st);
      d_final.s = (d_final.s.to(at::kDouble) * factor.view({-1, 1})).to(L.st);
    }
    const LaidOut x = laid_out_for_backward(ctx, r, qs, ks, v, log_g);
    const Grads gr = path_backward(r.problem, x.q, x.k, x.v, x.g, f, path_dy(r, dy, qs), needs, d_final);
    InputGrads g = api_grads(gr, L, needs, qs, ks, v);
    if (scaled) {
      g.q = unscale_grad(g.q, ctx->saved_data["q_factor"].toTensor());
      g.k = unscale_grad(g.k, ctx->saved_data["k_factor"].toTensor());
    }
    out[0] = g.q, out[1] = g.k, out[2] = g.v;
    if (needs.g) out[3] = gate_unlayout(gr.lg, L, log_g.scalar_type());
    if (needs.state) {
      const int64_t D = S0.size(2);
      out[4] = gr.initial.S.view({L.b, L.h, D, L.e}).to(S0.scalar_type());
      out[5] = gr.initial.s.view({L.b, L.h, D}).to(s0.scalar_type());
    }
    return out;
  }

 private:
  // create_graph: the gradients must themselves be differentiable (second derivatives). They are taken through the
  // plain-ATen reference on the same inputs (the quadratic form, or the stabilised chunked form when states are in
  // play), which autograd differentiates again. Memory: the reference's, O(t^2) or phi of every token.
  static torch::autograd::variable_list backward_with_graph(torch::autograd::AutogradContext* ctx,
                                                            const torch::autograd::variable_list& saved,
                                                            const torch::autograd::variable_list& grad_outputs,
                                                            const Needs& needs, bool stateful) {
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor log_g = or_none(saved[3]), S0 = or_none(saved[4]), s0 = or_none(saved[5]);
    const int64_t p = ctx->saved_data["p"].toInt(), chunk = ctx->saved_data["chunk"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool scaled = ctx->saved_data.count("q_factor") > 0;
    // the same (exact) scaling as the forward, now inside the graph
    const at::Tensor qx = scaled ? times_pow2(q, ctx->saved_data["q_factor"].toTensor()) : q;
    const at::Tensor kx = scaled ? times_pow2(k, ctx->saved_data["k_factor"].toTensor()) : k;
    std::vector<at::Tensor> outputs, cotangents;
    if (stateful) {
      const int64_t t = q.size(1), c = (chunk > 0 && chunk < t) ? chunk : t;
      // the reference's states are in units of the keys it sees: a scaled kx scales them by kf^p
      at::Tensor S0x = S0, s0x = s0;
      at::Tensor unit;  // [b, h] kf^p, or undefined
      if (scaled) {
        const at::Tensor kf = ctx->saved_data["k_factor"].toTensor().to(at::kDouble).pow(static_cast<double>(p));
        unit = kf.view({kf.size(0), kf.size(2)});
      }
      if (S0.defined() && unit.defined()) {
        S0x = S0 * unit.view({unit.size(0), unit.size(1), 1, 1}).to(S0.scalar_type());
        s0x = s0 * unit.view({unit.size(0), unit.size(1), 1}).to(s0.scalar_type());
      }
      std::vector<at::Tensor> ref = reference::power_full_chunked_with_state(qx, kx, v, log_g, p, scale, c, S0x, s0x);
      if (unit.defined()) {
        ref[1] = ref[1] / unit.view({unit.size(0), unit.size(1), 1, 1}).to(ref[1].scalar_type());
        ref[2] = ref[2] / unit.view({unit.size(0), unit.size(1), 1}).to(ref[2].scalar_type());
      }
      for (int i = 0; i < 3; ++i) {
        outputs.push_back(ref[i]);
        cotangents.push_back(grad_outputs[i].defined() ? grad_outputs[i] : at::zeros_like(ref[i]));
      }
    } else {
      outputs.push_back(reference::power_full_quadratic(qx, kx, v, log_g, p, scale));
      cotangents.push_back(grad_outputs[0]);
    }
    std::vector<at::Tensor> inputs;
    std::vector<int> slot;
    const bool want[6] = {needs.q, needs.k, needs.v, needs.g, needs.state, needs.state};
    for (int i = 0; i < 6; ++i) {
      if (want[i] && saved[i].numel() > 0) {
        inputs.push_back(saved[i]);
        slot.push_back(i);
      }
    }
    const auto grads = torch::autograd::grad(outputs, inputs, cotangents, /*retain_graph=*/true,
                                             /*create_graph=*/true, /*allow_unused=*/true);
    torch::autograd::variable_list out(11);
    for (size_t i = 0; i < slot.size(); ++i) out[slot[i]] = grads[i];
    return out;
  }
};

void check_state(const at::Tensor& S, const at::Tensor& s, const at::Tensor& q, int64_t b, int64_t h, int64_t D,
                 int64_t e) {
  POWER_ATTENTION_CHECK_ARG(S.defined() == s.defined(), "power_full: the state needs both S [b, h, D, e] and s [b, h, D], got ",
                    S.defined() ? "S only" : "s only");
  if (!S.defined()) return;
  check_rank(S, "state S", "[b, h, D, e]", 4);
  check_shape(S, "state S", "[b, h, D, e]", {b, h, D, e});
  check_rank(s, "state s", "[b, h, D]", 3);
  check_shape(s, "state s", "[b, h, D]", {b, h, D});
  POWER_ATTENTION_CHECK_ARG(at::isFloatingType(S.scalar_type()) && at::isFloatingType(s.scalar_type()),
                    "power_full: the state must have floating dtypes, got S ", S.scalar_type(), ", s ",
                    s.scalar_type());
  POWER_ATTENTION_CHECK_ARG(S.device() == q.device() && s.device() == q.device(), "power_full: the state must be on Q's device ",
                    q.device(), ", got S on ", S.device(), ", s on ", s.device());
}

}  // namespace

int64_t state_dim(int64_t head_dim, int64_t degree) {
  POWER_ATTENTION_CHECK_ARG(head_dim >= 1, "power_full: head_dim must be >= 1, got ", head_dim);
  POWER_ATTENTION_CHECK_ARG(degree >= 1, "power_full: deg must be >= 1, got ", degree);
  return sympow_dim(head_dim, degree);
}

namespace {

struct Checked {
  int64_t p;
  double scale;
  int64_t chunk;  // 0: none
  bool grad;      // autograd will need the backward
};

Checked check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                     const PowerFullOptions& options) {
  // ---- checks: argument, expected, actual
  check_rank(q, "Q", "[b, t, hq, d]", 4);
  check_rank(k, "K", "[b, t, h, d]", 4);
  check_rank(v, "V", "[b, t, h, e]", 4);
  const int64_t b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3), h = k.size(2), e = v.size(3);
  POWER_ATTENTION_CHECK_ARG(b >= 1 && t >= 1 && hq >= 1 && d >= 1, "power_full: Q must have b, t, hq, d >= 1, got ",
                    shape_str(q.sizes()));
  POWER_ATTENTION_CHECK_ARG(h >= 1, "power_full: K must have at least one head, got ", shape_str(k.sizes()));
  check_shape(k, "K", "[b, t, h, d]", {b, t, h, d});
  POWER_ATTENTION_CHECK_ARG(e >= 1, "power_full: V must have e >= 1, got ", shape_str(v.sizes()));
  check_shape(v, "V", "[b, t, h, e]", {b, t, h, e});
  POWER_ATTENTION_CHECK_ARG(hq % h == 0, "power_full: the number of query heads hq = ", hq,
                    " must be a multiple of the number of key/value heads h = ", h);
  POWER_ATTENTION_CHECK_ARG(supported_dtype(q.scalar_type()), "power_full: Q must have dtype float32, float64, bfloat16 or ",
                    "float16, got ", q.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                    "power_full: Q, K and V must share one dtype, got Q ", q.scalar_type(), ", K ", k.scalar_type(),
                    ", V ", v.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.device() == q.device() && v.device() == q.device(),
                    "power_full: Q, K and V must be on one device, got Q on ", q.device(), ", K on ", k.device(),
                    ", V on ", v.device());
  if (log_g.defined()) {
    check_rank(log_g, "log_G", "[b, t, h]", 3);
    check_shape(log_g, "log_G", "[b, t, h]", {b, t, h});
    POWER_ATTENTION_CHECK_ARG(log_g.scalar_type() == at::kFloat || log_g.scalar_type() == at::kDouble ||
                          log_g.scalar_type() == at::kBFloat16 || log_g.scalar_type() == at::kHalf,
                      "power_full: log_G must have a floating dtype, got ", log_g.scalar_type());
    POWER_ATTENTION_CHECK_ARG(log_g.device() == q.device(), "power_full: log_G must be on Q's device ", q.device(),
                      ", got ", log_g.device());
  }
  const int64_t p = options.degree;
  POWER_ATTENTION_CHECK_ARG(p >= 1, "power_full: deg must be >= 1, got ", p);
  double scale = 1.0 / std::sqrt(static_cast<double>(d));
  if (options.scale.has_value()) {
    scale = *options.scale;
    POWER_ATTENTION_CHECK_ARG(std::isfinite(scale) && scale > 0, "power_full: scale must be finite and > 0, got ", scale);
  }
  int64_t chunk = 0;
  if (options.chunk_size.has_value()) {
    chunk = *options.chunk_size;
    POWER_ATTENTION_CHECK_ARG(chunk >= 1, "power_full: chunk_size must be >= 1, got ", chunk);
  }

  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                     (log_g.defined() && log_g.requires_grad()));

  return {p, scale, chunk, grad};
}

void check_affordable(const Resolved& r, bool grad, const at::Tensor& q) {
  if (r.problem.chunk <= 0) return;
  const Problem& pr = r.problem;
  const int64_t d = pr.d, p = pr.p;
  const int64_t D = sympow_dim(d, p);
  double need = 0, limit = 0;
  std::string where;
#ifdef POWER_ATTENTION_WITH_CUDA
  if (q.is_cuda()) {
    const double X = static_cast<double>(pr.BH) * (pr.T / pr.chunk), E = static_cast<double>(pr.e + 8);
    if (p == 2 && cuda::sympow2_supported(r.layout.ct, d, pr.e)) {
      // The fused degree-2 path: the bf16 states entering each chunk in the internal layout (sympow2_cuda.h), and
      // in backward their gradients; no fp32 per-chunk states, no phi in memory.
      need = X * static_cast<double>(cuda::sympow2_dim(d)) * E * 2 * (grad ? 2 : 1);
    } else {
      // All chunks at once: the states entering each chunk (input dtype) and their fp32 sums, phi of every key
      // and query row (input dtype), twice over in backward.
      const double elem = r.layout.ct == at::kDouble ? 8 : 2, acc = r.layout.ct == at::kDouble ? 8 : 4;
      need = X * D * E * (elem + 2 * acc) + X * D * pr.chunk * (2.0 * pr.g + 1) * elem * (grad ? 2 : 1);
    }
    limit = cuda::device_memory_limit_bytes(q);
    where = "the free memory of " + q.device().str();
  }
#endif
  if (where.empty()) {
    const int64_t elem = r.layout.ct == at::kDouble ? 8 : 4;
    need = chunked_bytes(pr, grad, elem);
    limit = memory_limit_bytes();
    where = "half the physical memory, or POWER_ATTENTION_MEMORY_LIMIT in bytes";
  }
  POWER_ATTENTION_CHECK_ARG(need <= limit, "power_full: the chunked form with d = ", d, ", deg = ", p,
                    " has state dimension D = C(d + deg - 1, deg) = ", D, " and needs about ", gib(need),
                    " for its states (b*h = ", pr.BH, ", ", pr.T / pr.chunk,
                    " chunks, D x (e + 1) numbers each", grad ? ", all kept for backward" : "",
                    "), over the limit of ", gib(limit), " (", where, "). Options: the "
                    "quadratic form (no chunk_size), a larger chunk_size, a smaller head dimension d or a "
                    "lower degree");
}

}  // namespace

at::Tensor power_full(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                      const PowerFullOptions& options) {
  const Checked ck = check_inputs(q, k, v, log_g, options);
  const Resolved r = resolve(q, k, v, ck.p, ck.scale, ck.chunk);
  check_affordable(r, ck.grad, q);
  if (!has_device_path(q)) {
    // No kernels for this device in this build: the plain-ATen references run on any device, differentiable by
    // autograd, on inputs brought to a safe range (a power of two per row and head, inside the graph).
    const Scaled sc = scale_to_safe_range(q, k, ck.p, ck.scale);
    const at::Tensor qx = sc.applied() ? times_pow2(q, sc.qf) : q;
    const at::Tensor kx = sc.applied() ? times_pow2(k, sc.kf) : k;
    return r.problem.chunk > 0 ? reference::power_full_chunked(qx, kx, v, log_g, ck.p, sc.scale, r.problem.chunk)
                               : reference::power_full_quadratic(qx, kx, v, log_g, ck.p, sc.scale);
  }
  const at::Tensor none = at::empty({0}, q.options().dtype(at::kFloat));
  const at::Tensor gates = log_g.defined() ? log_g : none;
  return PowerFullFunction::apply(q, k, v, gates, none, none, ck.p, ck.scale, ck.chunk, ck.grad, false)[0];
}

at::Tensor power_full_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g,
                           int64_t degree, bool has_scale, double scale, bool has_chunk_size, int64_t chunk_size) {
  return at_binding_boundary([&] {
    PowerFullOptions o;
    o.degree = degree;
    if (has_scale) o.scale = scale;
    if (has_chunk_size) o.chunk_size = chunk_size;
    return power_full(q, k, v, log_g, o);
  });
}

std::vector<at::Tensor> power_full_with_state(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& log_g, const PowerFullOptions& options,
                                              const at::Tensor& S0, const at::Tensor& s0) {
  Checked ck = check_inputs(q, k, v, log_g, options);
  const int64_t b = q.size(0), h = k.size(2), d = q.size(3), e = v.size(3);
  check_state(S0, s0, q, b, h, sympow_dim(d, ck.p), e);
  POWER_ATTENTION_CHECK_ARG(has_device_path(q), "power_full: states are implemented on the CPU",
#ifdef POWER_ATTENTION_WITH_CUDA
                            " and CUDA",
#endif
                            " only in this build, got Q on ", q.device());
  ck.grad = ck.grad || (at::GradMode::is_enabled() && S0.defined() && (S0.requires_grad() || s0.requires_grad()));
  const Resolved r = resolve(q, k, v, ck.p, ck.scale, ck.chunk, true);
  check_affordable(r, ck.grad, q);
  check_state_gates(log_g, S0.defined(), r.layout.st);
  const at::Tensor none = at::empty({0}, q.options().dtype(at::kFloat));
  const at::Tensor gates = log_g.defined() ? log_g : none;
  const at::Tensor S = S0.defined() ? S0 : none, s = s0.defined() ? s0 : none;
  std::vector<at::Tensor> out = PowerFullFunction::apply(q, k, v, gates, S, s, ck.p, ck.scale, ck.chunk, ck.grad, true);
  {
    at::NoGradGuard no_grad;
    const bool finite = at::isfinite(out[1]).all().item<bool>() && at::isfinite(out[2]).all().item<bool>();
    POWER_ATTENTION_CHECK_ARG(finite, "power_full: the state after the last token overflows its dtype ",
                              out[1].scalar_type(), " (the largest |K|^deg * |V| summed over the sequence, or an "
                              "initial state near the dtype's limit); float64 inputs carry larger states");
  }
  return out;
}

std::vector<at::Tensor> power_full_with_state_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& log_g, int64_t degree, bool has_scale,
                                                   double scale, bool has_chunk_size, int64_t chunk_size,
                                                   const at::Tensor& S0, const at::Tensor& s0) {
  return at_binding_boundary([&] {
    PowerFullOptions o;
    o.degree = degree;
    if (has_scale) o.scale = scale;
    if (has_chunk_size) o.chunk_size = chunk_size;
    return power_full_with_state(q, k, v, log_g, o, S0, s0);
  });
}

namespace {

// A decode step's new state and output must be finite: a state that overflows its dtype (positive log gates that
// have added up, or values near the dtype's limit) is reported, naming log_G, instead of turning y into NaN.
void check_step_finite(const at::Tensor& y, const at::Tensor& S1, const at::Tensor& s1) {
  at::NoGradGuard no_grad;
  const bool finite = at::isfinite(S1).all().item<bool>() && at::isfinite(s1).all().item<bool>() &&
                      at::isfinite(y).all().item<bool>();
  POWER_ATTENTION_CHECK_ARG(finite, "power_full: the state after this decode step overflows ", S1.scalar_type(),
                            ": exp(log_G) times the state (positive log gates add up step after step) or phi(K) V "
                            "leaves the dtype's range; float64 states carry up to 1e308");
}

}  // namespace

std::vector<at::Tensor> power_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                          int64_t degree) {
  check_rank(q, "Q", "[b, hq, d]", 3);
  check_rank(k, "K", "[b, h, d]", 3);
  check_rank(v, "V", "[b, h, e]", 3);
  const int64_t b = q.size(0), hq = q.size(1), d = q.size(2), h = k.size(1), e = v.size(2);
  POWER_ATTENTION_CHECK_ARG(b >= 1 && hq >= 1 && d >= 1, "power_full: Q must have b, hq, d >= 1, got ",
                            shape_str(q.sizes()));
  check_shape(k, "K", "[b, h, d]", {b, h, d});
  POWER_ATTENTION_CHECK_ARG(e >= 1, "power_full: V must have e >= 1, got ", shape_str(v.sizes()));
  check_shape(v, "V", "[b, h, e]", {b, h, e});
  POWER_ATTENTION_CHECK_ARG(h >= 1 && hq % h == 0, "power_full: the number of query heads hq = ", hq,
                            " must be a multiple of the number of key/value heads h = ", h);
  POWER_ATTENTION_CHECK_ARG(supported_dtype(q.scalar_type()) && k.scalar_type() == q.scalar_type() &&
                                v.scalar_type() == q.scalar_type(),
                            "power_full: Q, K and V must share one dtype of float32, float64, bfloat16, float16, got Q ",
                            q.scalar_type(), ", K ", k.scalar_type(), ", V ", v.scalar_type());
  POWER_ATTENTION_CHECK_ARG(k.device() == q.device() && v.device() == q.device(),
                            "power_full: Q, K and V must be on one device, got Q on ", q.device(), ", K on ",
                            k.device(), ", V on ", v.device());
  POWER_ATTENTION_CHECK_ARG(degree >= 1, "power_full: deg must be >= 1, got ", degree);
  if (log_g.defined()) {
    check_rank(log_g, "log_G", "[b, h]", 2);
    check_shape(log_g, "log_G", "[b, h]", {b, h});
    POWER_ATTENTION_CHECK_ARG(supported_dtype(log_g.scalar_type()), "power_full: log_G must have a floating dtype, got ",
                              log_g.scalar_type());
    POWER_ATTENTION_CHECK_ARG(log_g.device() == q.device(), "power_full: log_G must be on Q's device ", q.device(),
                              ", got ", log_g.device());
  }
  const int64_t D = sympow_dim(d, degree);
  POWER_ATTENTION_CHECK_ARG(S.defined() && s.defined(), "power_full: a decode step needs a state (S, s)");
  check_state(S, s, q, b, h, D, e);
  const auto ct = (q.scalar_type() == at::kDouble || degree % 2 == 1) ? at::kDouble : at::kFloat;
  const int64_t g = hq / h;
  const auto st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() || S.requires_grad() ||
                     s.requires_grad() || (log_g.defined() && log_g.requires_grad()));
  // y is invariant to the scale of each query row: max-abs [1, 2) by a power of two (exact), so phi(q) . S stays
  // finite for any |q|.
  at::Tensor qn;
  {
    at::Tensor f;
    {
      at::NoGradGuard no_grad;
      f = pow2_factor(at::linalg_vector_norm(q, std::numeric_limits<double>::infinity(), {-1}, true, ct));
    }
    qn = q.to(ct) * f;
  }
  bool fused = q.device().is_cpu();
#ifdef POWER_ATTENTION_WITH_CUDA
  fused = fused || (q.is_cuda() && cuda::decode_supported(g, e, degree));
#endif
  if (fused && !grad) {
    // Generation: one fused pass over the state per head (the ATen composition below made ~10 passes).
    const auto flat = [&](const at::Tensor& x, std::vector<int64_t> shape) {
      return x.to(ct).reshape(shape).contiguous();
    };
    const at::Tensor q3 = flat(qn, {b * h, g, d}), k2 = flat(k, {b * h, d}), v2 = flat(v, {b * h, e});
    const at::Tensor lg1 = log_g.defined() ? flat(log_g, {b * h}) : at::Tensor();
    const at::Tensor S3 = flat(S, {b * h, D, e}), s2 = flat(s, {b * h, D});
#ifdef POWER_ATTENTION_WITH_CUDA
    const auto out = q.is_cuda() ? cuda::decode_step(q3, k2, v2, lg1, S3, s2, degree)
                                 : cpu::decode_step(q3, k2, v2, lg1, S3, s2, degree);
#else
    const auto out = cpu::decode_step(q3, k2, v2, lg1, S3, s2, degree);
#endif
    std::vector<at::Tensor> res = {out[0].view({b, hq, e}).to(q.scalar_type()), out[1].view({b, h, D, e}).to(st),
                                   out[2].view({b, h, D}).to(st)};
    check_step_finite(res[0], res[1], res[2]);
    return res;
  }
  const at::Tensor phiK = reference::symmetric_power_embedding(k.to(ct), degree);               // [b, h, D]
  at::Tensor S1 = S.to(ct), s1 = s.to(ct);
  if (log_g.defined()) {
    const at::Tensor gate = at::exp(log_g.to(ct));                                              // [b, h]
    S1 = S1 * gate.view({b, h, 1, 1});
    s1 = s1 * gate.view({b, h, 1});
  }
  S1 = S1 + phiK.unsqueeze(-1) * v.to(ct).unsqueeze(-2);
  s1 = s1 + phiK;
  const at::Tensor phiQ = reference::symmetric_power_embedding(qn.view({b, h, g, d}), degree);  // [b, h, g, D]
  const at::Tensor num = at::matmul(phiQ, S1);                                                  // [b, h, g, e]
  const at::Tensor den = at::matmul(phiQ, s1.unsqueeze(-1));                                    // [b, h, g, 1]
  const at::Tensor y = num / at::where(den == 0, at::ones_like(den), den);
  std::vector<at::Tensor> res = {y.reshape({b, hq, e}).to(q.scalar_type()), S1.to(st), s1.to(st)};
  check_step_finite(res[0], res[1], res[2]);
  return res;
}

std::vector<at::Tensor> power_decode_step_flat(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const at::Tensor& log_g, const at::Tensor& S, const at::Tensor& s,
                                               int64_t degree) {
  return at_binding_boundary([&] { return power_decode_step(q, k, v, log_g, S, s, degree); });
}

int64_t state_dim_flat(int64_t head_dim, int64_t degree) {
  return at_binding_boundary([&] { return state_dim(head_dim, degree); });
}

}  // namespace power_attention
