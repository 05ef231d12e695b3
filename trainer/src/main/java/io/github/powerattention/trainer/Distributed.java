package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.cat;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.javacpp.SizeTPointer;
import org.bytedeco.javacpp.chrono.Milliseconds;
import org.bytedeco.pytorch.AllreduceOptions;
import org.bytedeco.pytorch.Backend;
import org.bytedeco.pytorch.BroadcastOptions;
import org.bytedeco.pytorch.GlooDeviceVector;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.ProcessGroupGloo;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.TCPStore;
import org.bytedeco.pytorch.TCPStoreOptions;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.bytedeco.pytorch.Work;

/**
 * Data parallelism with LibTorch's c10d: a {@link TCPStore} rendezvous at {@code MASTER_ADDR:MASTER_PORT} (rank 0
 * hosts it) and a process group: Gloo on CPU, NCCL on CUDA. Launched the torchrun way: {@code RANK},
 * {@code WORLD_SIZE}, {@code LOCAL_RANK}, {@code MASTER_ADDR}, {@code MASTER_PORT} in the environment.
 *
 * <p>There is no DistributedDataParallel module in LibTorch's C++ API, so gradients are averaged here: after the
 * last micro-step's backward, the gradients are packed into buckets of about {@value #BUCKET_BYTES} bytes (in
 * parameter order), every bucket's all-reduce is started, then each is waited for and unpacked. Every collective
 * has the {@code --dist_timeout}; a rank that dies makes the others fail with {@link DistributedException} (Gloo
 * notices the closed connection at once; a stuck rank is noticed at the timeout).
 */
final class Distributed implements AutoCloseable {
    static final long BUCKET_BYTES = 25L << 20;

    final int rank;
    final int worldSize;
    final int localRank;
    private final TCPStore store;
    private final Backend group;
    private final long timeoutMs;
    private final boolean cuda;

    private Distributed(int rank, int worldSize, int localRank, TCPStore store, Backend group, long timeoutMs,
            boolean cuda) {
        this.cuda = cuda;
        this.rank = rank;
        this.worldSize = worldSize;
        this.localRank = localRank;
        this.store = store;
        this.group = group;
        this.timeoutMs = timeoutMs;
    }

    /** True when the torchrun variables ask for more than one process. */
    static boolean requested(Map<String, String> env) {
        return env.containsKey("WORLD_SIZE") && intVar(env, "WORLD_SIZE", 1) > 1;
    }

    /** Joins the process group described by the environment. */
    static Distributed fromEnvironment(Map<String, String> env, boolean cuda, int timeoutSeconds) {
        int world = intVar(env, "WORLD_SIZE", 1);
        int rank = intVar(env, "RANK", 0);
        int localRank = env.containsKey("LOCAL_RANK") ? intVar(env, "LOCAL_RANK", 0) : rank;
        if (rank >= world) {
            throw new UsageException("environment: RANK must be in [0, WORLD_SIZE) = [0, " + world + "), got " + rank);
        }
        if (cuda) {
            int gpus = org.bytedeco.pytorch.global.torch.cuda_device_count();
            if (localRank >= gpus) {
                throw new UsageException("environment: LOCAL_RANK=" + localRank + " needs GPU " + localRank
                        + " (--device=cuda runs one process per GPU), but LibTorch sees " + gpus + " CUDA device(s) "
                        + "here: start at most " + gpus + " process(es) on this machine");
            }
        }
        String addr = env.get("MASTER_ADDR");
        String portText = env.get("MASTER_PORT");
        if (addr == null || portText == null) {
            throw new UsageException("environment: WORLD_SIZE=" + world + " needs MASTER_ADDR and MASTER_PORT "
                    + "(the rendezvous address of rank 0), got MASTER_ADDR=" + addr + ", MASTER_PORT=" + portText);
        }
        int port = intVar(env, "MASTER_PORT", 0);
        if (port < 1 || port > 65535) {
            throw new UsageException("environment: MASTER_PORT must be in 1..65535, got " + portText);
        }
        long timeoutMs = timeoutSeconds * 1000L;
        TCPStoreOptions so = new TCPStoreOptions();
        so.port((short) port);
        so.isServer(rank == 0);
        so.numWorkers(new SizeTPointer(1).put(world));
        so.waitWorkers(true);
        so.timeout(new Milliseconds(timeoutMs));
        TCPStore store;
        try {
            store = new TCPStore(addr, so);
        } catch (RuntimeException e) {
            throw new DistributedException("rank " + rank + ": rendezvous at " + addr + ":" + port + " failed within "
                    + timeoutSeconds + " s (is rank 0 running, are MASTER_ADDR/MASTER_PORT right?): " + firstLine(e));
        }
        Backend group;
        try {
            if (cuda) {
                group = Nccl.create(store, rank, world, timeoutMs);
            } else {
                ProcessGroupGloo.Options o = ProcessGroupGloo.Options.create(new Milliseconds(timeoutMs));
                GlooDeviceVector devices = new GlooDeviceVector(1);
                String iface = env.get("GLOO_SOCKET_IFNAME");
                if (iface != null) {
                    devices.put(0, ProcessGroupGloo.createDeviceForInterface(iface));
                } else if (addr.equals("127.0.0.1") || addr.equals("localhost")) {
                    devices.put(0, ProcessGroupGloo.createDeviceForHostname("127.0.0.1"));
                } else {
                    devices.put(0, ProcessGroupGloo.createDefaultDevice());
                }
                o.devices(devices);
                group = new ProcessGroupGloo(store, rank, world, o);
            }
        } catch (RuntimeException e) {
            throw new DistributedException("rank " + rank + ": creating the " + (cuda ? "NCCL" : "Gloo")
                    + " process group failed: " + firstLine(e));
        }
        return new Distributed(rank, world, localRank, store, group, timeoutMs, cuda);
    }

    /** Copies rank 0's values into every rank's tensors (initial parameters). */
    void broadcast(List<Tensor> tensors, String what) {
        for (Tensor t : tensors) {
            try (PointerScope s = new PointerScope(); NoGradGuard g = new NoGradGuard()) {
                BroadcastOptions o = new BroadcastOptions();
                o.rootRank(0);
                o.timeout(new Milliseconds(timeoutMs));
                Work w = group.broadcast(new TensorVector(t), o);
                await(w, "broadcast of " + what);
            }
        }
    }

    /** Replaces every gradient by its average over ranks, in buckets of about {@link #BUCKET_BYTES}. */
    void averageGradients(List<Tensor> params, int step) {
        List<List<Tensor>> buckets = new ArrayList<>();
        List<Tensor> current = new ArrayList<>();
        long bytes = 0;
        for (Tensor p : params) {
            current.add(p);
            bytes += p.numel() * p.element_size();
            if (bytes >= BUCKET_BYTES) {
                buckets.add(current);
                current = new ArrayList<>();
                bytes = 0;
            }
        }
        if (!current.isEmpty()) {
            buckets.add(current);
        }
        try (PointerScope s = new PointerScope(); NoGradGuard g = new NoGradGuard()) {
            List<Tensor> flats = new ArrayList<>();
            List<Work> works = new ArrayList<>();
            for (List<Tensor> bucket : buckets) {
                TensorVector grads = new TensorVector();
                for (Tensor p : bucket) {
                    grads.push_back(p.grad().reshape(-1));
                }
                Tensor flat = cat(grads, 0);
                flats.add(flat);
                works.add(group.allreduce(new TensorVector(flat), allreduceOptions()));
            }
            for (int b = 0; b < buckets.size(); b++) {
                await(works.get(b), "all-reduce of gradient bucket " + (b + 1) + "/" + buckets.size() + " at step "
                        + step);
                Tensor flat = flats.get(b).div_(new Scalar((double) worldSize));
                long offset = 0;
                for (Tensor p : buckets.get(b)) {
                    long n = p.numel();
                    p.grad().copy_(flat.narrow(0, offset, n).view_as(p));
                    offset += n;
                }
            }
        }
    }

    /** Sums {@code values} over ranks (fp64). */
    double[] sum(double[] values, String what) {
        try (PointerScope s = new PointerScope()) {
            Tensor t = Tensor.create(values.clone(), values.length);
            if (cuda) {     // NCCL reduces device tensors only
                t = t.to(new org.bytedeco.pytorch.Device("cuda:" + localRank), t.scalar_type());
            }
            await(group.allreduce(new TensorVector(t), allreduceOptions()), what);
            double[] out = new double[values.length];
            t.to(new org.bytedeco.pytorch.Device("cpu"), t.scalar_type()).contiguous().data_ptr_double().get(out);
            return out;
        }
    }

    /** Waits until every rank reaches this point. */
    void barrier(String what) {
        sum(new double[] {0}, "barrier (" + what + ")");
    }

    private AllreduceOptions allreduceOptions() {
        AllreduceOptions o = new AllreduceOptions();
        o.timeout(new Milliseconds(timeoutMs));
        return o;
    }

    private void await(Work w, String what) {
        try {
            w._wait(new Milliseconds(timeoutMs));
        } catch (RuntimeException e) {
            throw new DistributedException("rank " + rank + " of " + worldSize + ": " + what + " failed: another rank "
                    + "has probably died or is stuck (collective timeout " + timeoutMs / 1000 + " s, --dist_timeout). "
                    + "Cause: " + firstLine(e));
        }
    }

    static String firstLine(Throwable e) {
        String m = e.getMessage() == null ? e.toString() : e.getMessage();
        int cut = m.indexOf("\nException raised from");
        if (cut >= 0) {
            m = m.substring(0, cut);
        }
        return m.strip().replace('\n', ' ');
    }

    private static int intVar(Map<String, String> env, String name, int def) {
        String v = env.get(name);
        if (v == null) {
            return def;
        }
        try {
            int x = Integer.parseInt(v.strip());
            if (x < 0) {
                throw new NumberFormatException();
            }
            return x;
        } catch (NumberFormatException e) {
            throw new UsageException("environment: " + name + " expects a non-negative integer, got '" + v + "'");
        }
    }

    @Override
    public void close() {
        // The process group and the store are shut down with the process; LibTorch's destructors would block
        // waiting on a dead peer, so they are not called explicitly.
    }

    /** A collective or rendezvous failure: another rank died, hung, or could not be reached. */
    static final class DistributedException extends RuntimeException {
        DistributedException(String message) {
            super(message);
        }
    }

    /** NCCL, loaded only for CUDA runs (its classes need LibTorch's -gpu natives). */
    private static final class Nccl {
        static Backend create(TCPStore store, int rank, int world, long timeoutMs) {
            org.bytedeco.pytorch.nccl.ProcessGroupNCCL.Options o =
                    org.bytedeco.pytorch.nccl.ProcessGroupNCCL.Options.create();
            return new org.bytedeco.pytorch.nccl.ProcessGroupNCCL(store, rank, world, o);
        }
    }
}
