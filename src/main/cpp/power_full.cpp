// power_full.cpp: the API layer's core: the one autograd Function (optional state in and out) that owns forward and
// backward, and the entry points with their bindings. Checks (checks.h), the plan (plan.h), magnitudes
// (magnitudes.h) and the memory budget (memory_budget.h) are asked; the device paths are reached only through
// path.h, which this file asks and never looks inside: what a path keeps for its backward (Forward) is saved and
// handed back whole.
#include "checks.h"
#include "errors.h"
#include "magnitudes.h"
#include "memory_budget.h"
#include "path.h"
#include "plan.h"
#include "power_attention.h"
#include "sympow.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

namespace power_attention {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// The plan and the path's Forward in the autograd context: the plan is made once per call (the entry points) and
// saved with the forward; the backward reads both back.
// ---------------------------------------------------------------------------------------------------------------

void save_plan(torch::autograd::AutogradContext* ctx, const Plan& plan) {
  const Problem& pr = plan.problem;
  ctx->saved_data["plan.sizes"] = std::vector<int64_t>{pr.b, pr.t, pr.h, pr.g, pr.d, pr.e, pr.p, pr.chunk, pr.BH, pr.T};
  ctx->saved_data["plan.scale"] = pr.scale;
  ctx->saved_data["plan.dtypes"] = std::vector<int64_t>{static_cast<int64_t>(pr.precision.compute),
                                                        static_cast<int64_t>(pr.precision.gates),
                                                        static_cast<int64_t>(pr.precision.states)};
  ctx->saved_data["plan.flags"] = std::vector<int64_t>{plan.stateful, plan.amplifying, plan.grad};
}

Plan load_plan(torch::autograd::AutogradContext* ctx) {
  Plan plan;
  Problem& pr = plan.problem;
  const std::vector<int64_t> n = ctx->saved_data["plan.sizes"].toIntVector();
  pr.b = n[0], pr.t = n[1], pr.h = n[2], pr.g = n[3], pr.d = n[4], pr.e = n[5], pr.p = n[6], pr.chunk = n[7];
  pr.BH = n[8], pr.T = n[9];
  pr.scale = ctx->saved_data["plan.scale"].toDouble();
  const std::vector<int64_t> dt = ctx->saved_data["plan.dtypes"].toIntVector();
  pr.precision = {static_cast<at::ScalarType>(dt[0]), static_cast<at::ScalarType>(dt[1]),
                  static_cast<at::ScalarType>(dt[2])};
  const std::vector<int64_t> f = ctx->saved_data["plan.flags"].toIntVector();
  plan.stateful = f[0] != 0, plan.amplifying = f[1] != 0, plan.grad = f[2] != 0;
  return plan;
}

// The tensors of a Forward that its backward takes back (the output and the final state are not among them).
constexpr std::pair<const char*, at::Tensor Forward::*> kKept[] = {
    {"f.y", &Forward::y},           {"f.den", &Forward::den},     {"f.rowmax", &Forward::rowmax},
    {"f.states", &Forward::states}, {"f.norms", &Forward::norms}, {"f.logscale", &Forward::logscale},
    {"f.q", &Forward::q},           {"f.k", &Forward::k},         {"f.v", &Forward::v},
    {"f.lg", &Forward::lg}};

void save_forward(torch::autograd::AutogradContext* ctx, const Forward& f) {
  for (const auto& [name, member] : kKept)
    if ((f.*member).defined()) ctx->saved_data[name] = f.*member;
}

Forward load_forward(torch::autograd::AutogradContext* ctx) {
  Forward f;
  for (const auto& [name, member] : kKept)
    if (ctx->saved_data.count(name) > 0) f.*member = ctx->saved_data[name].toTensor();
  return f;
}

// A state [b, h, D, e] / [b, h, D] as the paths take it: [b h, D, e] / [b h, D] in the state dtype.
State state_in(const at::Tensor& S, const at::Tensor& s, const Problem& pr) {
  if (!S.defined()) return {};
  const at::ScalarType st = pr.precision.states;
  return {S.to(st).reshape({pr.BH, S.size(2), S.size(3)}).contiguous(),
          s.to(st).reshape({pr.BH, s.size(2)}).contiguous(), at::Tensor()};
}

// ---------------------------------------------------------------------------------------------------------------
// The autograd Function: power_full with an optional state in (S0, s0) and, when stateful, the state out.
// Inputs q, k, v, gates, S0, s0 (0-element tensors stand for "none": autograd rejects undefined inputs) and the
// plan; outputs {Y} or, stateful, {Y, S, s}.
// ---------------------------------------------------------------------------------------------------------------

constexpr int kInputs = 7;  // q, k, v, gates, S0, s0, plan

at::Tensor or_none(const at::Tensor& x) { return x.numel() > 0 ? x : at::Tensor(); }

class PowerFullFunction : public torch::autograd::Function<PowerFullFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v,
                                                const at::Tensor& gates, const at::Tensor& S0,
                                                const at::Tensor& s0, const Plan& call) {
    const at::Tensor log_g = or_none(gates);
    // The magnitudes and whether a log gate is positive, read once (a device sync on CUDA). On CUDA the read travels
    // while the forward on the inputs as given is queued behind it, so that the GPU does not idle through the sync;
    // that forward is the answer unless the read asks for factors or a wider dtype (then it is dropped and the
    // forward runs again on what the read decided).
    const MagnitudeRead read = read_magnitudes(q, k, log_g);
    Forward f;
    bool ahead = false;  // f is the forward on the inputs as given, under the call's plan
    if (read.pending()) {
      try {
        const State initial = S0.numel() > 0 ? state_in(S0, s0, call.problem) : State();
        f = path::forward(call.problem, q, k, v, log_g, call.grad, initial, call.stateful);
        ahead = true;
      } catch (const std::exception&) {
        // whatever stopped it is decided below, on the plan the read gives: the same plan raises it again
      }
    }
    const Scaled sc = scale_to_safe_range(read, q, k, call.problem.p, call.problem.scale);
    Plan plan = call;
    plan.problem.scale = sc.scale;
    if (amplifying_gates(log_g, plan.problem.chunk, sc)) amplify(plan, q);
    const Problem& pr = plan.problem;
    if (!ahead || sc.applied() || plan.amplifying) {
      f = Forward();
      State initial;
      if (S0.numel() > 0) {
        initial = state_in(S0, s0, pr);
        initial.logscale = sc.state_logscale;
      }
      f = path::forward(pr, sc.q, sc.k, v, log_g, plan.grad, initial, plan.stateful);
    }
    at::Tensor factor;
    if (plan.stateful) factor = state_factor(f.final_logscale, sc, pr.BH).to(f.final_state.device());
    if (plan.grad) {
      ctx->save_for_backward({q, k, v, gates, S0, s0});
      if (sc.applied()) {
        ctx->saved_data["q_scaled"] = sc.q;
        ctx->saved_data["k_scaled"] = sc.k;
        ctx->saved_data["q_factor"] = sc.qf;
        ctx->saved_data["k_factor"] = sc.kf;
      }
      save_forward(ctx, f);
      save_plan(ctx, plan);
      if (factor.defined()) ctx->saved_data["state_factor"] = factor;
    }
    if (!plan.stateful) return {f.out};
    const int64_t D = f.final_state.size(1);
    // a returned state is fp32 (fp64 for fp64 inputs) whatever the path computed it in (SPEC §6)
    const at::ScalarType st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor S = (f.final_state.to(at::kDouble) * factor.view({-1, 1, 1})).to(st);
    const at::Tensor s = (f.final_norm.to(at::kDouble) * factor.view({-1, 1})).to(st);
    return {f.out, S.view({pr.b, pr.h, D, pr.e}), s.view({pr.b, pr.h, D})};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    torch::autograd::variable_list saved = ctx->get_saved_variables();
    const Plan plan = load_plan(ctx);
    const Problem& pr = plan.problem;
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor log_g = or_none(saved[3]), S0 = or_none(saved[4]), s0 = or_none(saved[5]);
    Needs needs;
    needs.q = ctx->needs_input_grad(0);
    needs.k = ctx->needs_input_grad(1);
    needs.v = ctx->needs_input_grad(2);
    needs.g = log_g.defined() && ctx->needs_input_grad(3);
    needs.state = S0.defined() && (ctx->needs_input_grad(4) || ctx->needs_input_grad(5));
    const at::Tensor dy = grad_outputs[0];
    const bool seeded = plan.stateful && (grad_outputs[1].defined() || grad_outputs[2].defined());
    torch::autograd::variable_list out(kInputs);
    if (!(needs.q || needs.k || needs.v || needs.g || needs.state) || !(dy.defined() || seeded)) return out;
    if (at::GradMode::is_enabled()) return backward_with_graph(ctx, saved, grad_outputs, needs, plan);

    const bool scaled = ctx->saved_data.count("q_factor") > 0;
    const at::Tensor qs = scaled ? ctx->saved_data["q_scaled"].toTensor() : q;
    const at::Tensor ks = scaled ? ctx->saved_data["k_scaled"].toTensor() : k;
    State d_final;
    if (seeded) {
      // the true state is factor * (S^, s^): the gradient of S^ is factor * dS
      const int64_t D = sympow_dim(pr.d, pr.p);
      const at::ScalarType st = pr.precision.states;
      const auto o = q.options().dtype(st);
      const at::Tensor dS = grad_outputs[1].defined() ? grad_outputs[1] : at::zeros({pr.b, pr.h, D, pr.e}, o);
      const at::Tensor ds = grad_outputs[2].defined() ? grad_outputs[2] : at::zeros({pr.b, pr.h, D}, o);
      const at::Tensor factor = ctx->saved_data["state_factor"].toTensor();
      d_final = state_in(dS, ds, pr);
      d_final.S = (d_final.S.to(at::kDouble) * factor.view({-1, 1, 1})).to(st);
      d_final.s = (d_final.s.to(at::kDouble) * factor.view({-1, 1})).to(st);
    }
    Grads gr = path::backward(pr, qs, ks, v, log_g, load_forward(ctx), dy, needs, d_final);
    if (scaled) {
      gr.q = unscale_grad(gr.q, ctx->saved_data["q_factor"].toTensor());
      gr.k = unscale_grad(gr.k, ctx->saved_data["k_factor"].toTensor());
    }
    out[0] = gr.q, out[1] = gr.k, out[2] = gr.v;
    if (needs.g) out[3] = gr.lg;
    if (needs.state) {
      const int64_t D = S0.size(2);
      out[4] = gr.initial.S.view({pr.b, pr.h, D, pr.e}).to(S0.scalar_type());
      out[5] = gr.initial.s.view({pr.b, pr.h, D}).to(s0.scalar_type());
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
                                                            const Needs& needs, const Plan& plan) {
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    const at::Tensor log_g = or_none(saved[3]), S0 = or_none(saved[4]), s0 = or_none(saved[5]);
    const int64_t p = plan.problem.p;
    const double scale = plan.problem.scale;
    const bool scaled = ctx->saved_data.count("q_factor") > 0;
    // the same (exact) scaling as the forward, now inside the graph
    const at::Tensor qx = scaled ? times_pow2(q, ctx->saved_data["q_factor"].toTensor()) : q;
    const at::Tensor kx = scaled ? times_pow2(k, ctx->saved_data["k_factor"].toTensor()) : k;
    std::vector<at::Tensor> outputs, cotangents;
    if (plan.stateful) {
      const int64_t c = plan.problem.chunk;
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
    torch::autograd::variable_list out(kInputs);
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
  const Plan plan = make_plan(q, k, v, ck.p, ck.scale, ck.chunk, false, ck.grad);
  check_affordable(plan, q);
  if (!path::supports(q.device())) {
    // No kernels for this device in this build: the plain-ATen references run on any device, differentiable by
    // autograd, on inputs brought to a safe range (a power of two per row and head, inside the graph).
    const Scaled sc = scale_to_safe_range(q, k, ck.p, ck.scale);
    const at::Tensor qx = sc.applied() ? times_pow2(q, sc.qf) : q;
    const at::Tensor kx = sc.applied() ? times_pow2(k, sc.kf) : k;
    const int64_t c = plan.problem.chunk;
    return c > 0 ? reference::power_full_chunked(qx, kx, v, log_g, ck.p, sc.scale, c)
                 : reference::power_full_quadratic(qx, kx, v, log_g, ck.p, sc.scale);
  }
  const at::Tensor none = at::empty({0}, q.options().dtype(at::kFloat));
  const at::Tensor gates = log_g.defined() ? log_g : none;
  return PowerFullFunction::apply(q, k, v, gates, none, none, plan)[0];
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
  POWER_ATTENTION_CHECK_ARG(path::supports(q.device()), "power_full: states are implemented on the CPU",
#ifdef POWER_ATTENTION_WITH_CUDA
                            " and CUDA",
#endif
                            " only in this build, got Q on ", q.device());
  ck.grad = ck.grad || (at::GradMode::is_enabled() && S0.defined() && (S0.requires_grad() || s0.requires_grad()));
  const Plan plan = make_plan(q, k, v, ck.p, ck.scale, ck.chunk, true, ck.grad);
  check_affordable(plan, q);
  check_state_gates(log_g, S0.defined(), plan.problem.precision.states);
  const at::Tensor none = at::empty({0}, q.options().dtype(at::kFloat));
  const at::Tensor gates = log_g.defined() ? log_g : none;
  const at::Tensor S = S0.defined() ? S0 : none, s = s0.defined() ? s0 : none;
  std::vector<at::Tensor> out = PowerFullFunction::apply(q, k, v, gates, S, s, plan);
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
