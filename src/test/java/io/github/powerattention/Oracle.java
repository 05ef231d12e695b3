package io.github.powerattention;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.ones;

import org.bytedeco.pytorch.LongOptional;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.ScalarTypeOptional;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.global.torch;

/**
 * The tests' oracle: SPEC §2 evaluated directly in fp64 with plain tensor ops, written independently of the
 * library (no log space, no chunks): {@code w_ij = s_ij^p * exp(G_i - G_j) * [j <= i]}, {@code Y = w V / sum w}.
 * Differentiable by autograd, so it also gives the reference gradients.
 */
final class Oracle {
    private Oracle() {}

    /** q [b, t, hq, d], k [b, t, h, d], v [b, t, h, e], logG [b, t, h] or null; returns [b, t, hq, e] fp64. */
    static Tensor powerFull(Tensor q, Tensor k, Tensor v, Tensor logG, int p, double scale) {
        long t = q.size(1), hq = q.size(2), h = k.size(2), g = hq / h;
        Tensor qh = q.to(ScalarType.Double).permute(0, 2, 1, 3);                                   // [b, hq, t, d]
        Tensor kh = repeatHeads(k.to(ScalarType.Double), g).permute(0, 2, 1, 3);                    // [b, hq, t, d]
        Tensor vh = repeatHeads(v.to(ScalarType.Double), g).permute(0, 2, 1, 3);                    // [b, hq, t, e]
        Tensor s = qh.matmul(kh.transpose(2, 3)).mul(new Scalar(scale));                            // [b, hq, t, t]
        Tensor causal = ones(new long[] {t, t}, new TensorOptions(ScalarType.Double)).tril();
        Tensor w = s.pow(new Scalar(p));
        if (logG != null) {
            Tensor G = repeatHeads(logG.to(ScalarType.Double).cumsum(1), g).permute(0, 2, 1);       // [b, hq, t]
            // G_i - G_j, zeroed above the diagonal before exp so nothing masked can overflow
            Tensor diff = G.unsqueeze(3).sub(G.unsqueeze(2)).mul(causal);
            w = w.mul(diff.exp());
        }
        w = w.mul(causal);
        Tensor norm = w.sum(new long[] {3}, true, new ScalarTypeOptional());
        return w.matmul(vh).div(norm).permute(0, 2, 1, 3);
    }

    /**
     * SPEC §2 again, for inputs whose weights leave the fp64 range (log gates of tens of nats a token, huge scores):
     * {@code log|w_ij| = p log|s_ij| + G_i - G_j} less its row maximum, then exponentiated; the row maximum is a
     * constant (the weights' common factor cancels in Y). Same shapes as {@link #powerFull}.
     */
    static Tensor powerFullLogSpace(Tensor q, Tensor k, Tensor v, Tensor logG, int p, double scale) {
        long t = q.size(1), hq = q.size(2), h = k.size(2), g = hq / h;
        Tensor qh = q.to(ScalarType.Double).permute(0, 2, 1, 3);
        Tensor kh = repeatHeads(k.to(ScalarType.Double), g).permute(0, 2, 1, 3);
        Tensor vh = repeatHeads(v.to(ScalarType.Double), g).permute(0, 2, 1, 3);
        Tensor s = qh.matmul(kh.transpose(2, 3)).mul(new Scalar(scale));                            // [b, hq, t, t]
        Tensor causal = ones(new long[] {t, t}, new TensorOptions(ScalarType.Double)).tril();
        Tensor visible = causal.gt(new Scalar(0.5)).logical_and(s.ne(new Scalar(0.0)));
        // log|s| where s != 0 (masked there anyway): keeps log's backward finite at exact zeros
        Tensor nonzero = torch.where(visible, s.abs(), torch.ones_like(s));
        Tensor logw = nonzero.log().mul(new Scalar((double) p));
        if (logG != null) {
            Tensor G = repeatHeads(logG.to(ScalarType.Double).cumsum(1), g).permute(0, 2, 1);
            logw = logw.add(G.unsqueeze(3).sub(G.unsqueeze(2)));
        }
        Tensor minusInf = torch.full(new long[] {}, new Scalar(Double.NEGATIVE_INFINITY),
                new TensorOptions(ScalarType.Double));
        logw = torch.where(visible, logw, minusInf);
        Tensor rowMax = logw.amax(new long[] {3}, true).detach();
        rowMax = torch.where(rowMax.isinf(), torch.zeros_like(rowMax), rowMax);
        Tensor w = logw.sub(rowMax).exp();
        if (p % 2 == 1) {
            w = w.mul(s.sign());
        }
        Tensor norm = w.sum(new long[] {3}, true, new ScalarTypeOptional());
        return w.matmul(vh).div(norm).permute(0, 2, 1, 3);
    }

    /**
     * {@link #powerFullLogSpace}'s Y and gradients {Y, dQ, dK, dV, dlogG} for the cotangent dy, on the inputs
     * multiplied elementwise by (1 + eps N(0, 1)) (eps = 0: the inputs themselves). The relative change between the
     * two is the problem's own conditioning at that precision: no algorithm of it can promise less.
     */
    static Tensor[] logSpaceWithGradients(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor dy, int p, double scale,
            double eps) {
        Tensor rq = jitter(q, eps).detach().requires_grad_(true), rk = jitter(k, eps).detach().requires_grad_(true);
        Tensor rv = jitter(v, eps).detach().requires_grad_(true);
        Tensor rg = logG != null ? jitter(logG, eps).detach().requires_grad_(true) : null;
        Tensor y = powerFullLogSpace(rq, rk, rv, rg, p, scale);
        y.mul(dy).sum().backward();
        return new Tensor[] {y.detach(), rq.grad(), rk.grad(), rv.grad(), rg != null ? rg.grad() : null};
    }

    private static Tensor jitter(Tensor x, double eps) {
        Tensor d = x.to(ScalarType.Double);
        if (eps == 0) {
            return d;
        }
        Tensor noise = torch.randn(d.sizes().vec().get(), new TensorOptions(ScalarType.Double));
        return d.mul(noise.mul(new Scalar(eps)).add(new Scalar(1.0)));
    }

    /** [b, t, h, ...] -> [b, t, h * g, ...], each head repeated g times in place (query head i uses head i / g). */
    private static Tensor repeatHeads(Tensor x, long g) {
        return g == 1 ? x : x.repeat_interleave(g, new LongOptional(2), new LongOptional());
    }
}
