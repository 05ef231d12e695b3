// power_full.cpp: the API layer's core: the one autograd Function (optional state in and out) that owns forward and
// backward, the dispatch between the device paths and the references, and the entry points with their bindings.
// Checks (checks.h), the plan (plan.h), magnitudes (magnitudes.h) and the memory budget (memory_budget.h) are
// asked; the device paths are reached only through their entry headers.
#include "checks.h"
#include "errors.h"
#include "magnitudes.h"
#include "memory_budget.h"
#include "plan.h"
#include "power_attention.h"
#include "cpu/power_full_cpu.h"
#ifdef POWER_ATTENTION_WITH_CUDA
#include "cuda/power_full_cuda.h"
#endif
#include "sympow.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace power_attention {
namespace {

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

// The backward's inputs: the forward's compute-layout copies where it kept them (CUDA), else path_inputs again.
LaidOut laid_out_for_backward(torch::autograd::AutogradContext* ctx, const Resolved& r, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v, const at::Tensor& log_g) {
  if (ctx->saved_data.count("lq") == 0) return path_inputs(r, q, k, v, log_g);
  LaidOut x{ctx->saved_data["lq"].toTensor(), ctx->saved_data["lk"].toTensor(), ctx->saved_data["lv"].toTensor(), {}};
  if (log_g.defined()) x.g = ctx->saved_data["lg"].toTensor();
  return x;
}
// ---------------------------------------------------------------------------------------------------------------
// The autograd Function: power_full with an optional state in (S0, s0) and, when stateful, the state out.
// Inputs q, k, v, gates, S0, s0 (0-element tensors stand for "none": autograd rejects undefined inputs); outputs
// {Y} or, stateful, {Y, S, s}.
// ---------------------------------------------------------------------------------------------------------------

at::Tensor or_none(const at::Tensor& x) { return x.numel() > 0 ? x : at::Tensor(); }

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

}  // namespace

int64_t state_dim(int64_t head_dim, int64_t degree) {
  POWER_ATTENTION_CHECK_ARG(head_dim >= 1, "power_full: head_dim must be >= 1, got ", head_dim);
  POWER_ATTENTION_CHECK_ARG(degree >= 1, "power_full: deg must be >= 1, got ", degree);
  return sympow_dim(head_dim, degree);
}

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

}  // namespace power_attention
