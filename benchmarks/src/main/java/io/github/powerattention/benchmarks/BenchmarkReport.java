package io.github.powerattention.benchmarks;

import java.awt.BasicStroke;
import java.awt.Color;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Predicate;

import com.google.gson.Gson;
import com.google.gson.annotations.SerializedName;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.XYSeries;
import org.knowm.xchart.style.Styler;
import org.knowm.xchart.style.XYStyler;
import org.knowm.xchart.style.markers.SeriesMarkers;

/**
 * Draws the benchmarks as PNG plots: the JMH results of {@link AttentionJmh} and {@link DecodeJmh} (CPU) and the GPU
 * harness's {@code bench.json} ({@code src/test/cpp/gpu/harness.cpp}, mode {@code bench}).
 *
 * <pre>
 *   mvn -q -f benchmarks compile exec:java@report [-Dreport.args="gpu=path/to/bench.json cpu=LABEL"]
 * </pre>
 *
 * Arguments ({@code key=value}): {@code jmh} the JMH JSON results (the POM passes benchmarks/target/jmh-results.json;
 * {@code a.json,b.json}: several runs, the later one's result of the same benchmark and parameters counting);
 * {@code gpu} a harness bench.json (default {@code target/gpu-harness/bench.json} where it exists, else the H100
 * numbers of BENCHMARKS.md bundled with this module, which name their source); {@code out} the folder for the PNGs;
 * {@code cpu} a label for the CPU (default: the model name and the core count of this machine). Writes
 * {@code cpu-time.png}, {@code cpu-decode.png} (when the JMH results have them), {@code gpu-time.png} and
 * {@code speedup.png} (power attention against SDPA, fwd+bwd, CPU and GPU), and prints the numbers it drew.
 */
public final class BenchmarkReport {
    static final String BUNDLED_GPU = "gpu-h100-run11.json";
    static final int WIDTH = 760;
    static final int HEIGHT = 460;

    private BenchmarkReport() {}

    /** One JMH result: the benchmark's name, its parameters, the score (ms per call) and its error. */
    record JmhResult(String benchmark, Map<String, String> params, Metric primaryMetric) {
        String method() {
            return benchmark.substring(benchmark.lastIndexOf('.') + 1);
        }

        String className() {
            String cls = benchmark.substring(0, benchmark.lastIndexOf('.'));
            return cls.substring(cls.lastIndexOf('.') + 1);
        }

        long t() {
            return Long.parseLong(params.get("t"));
        }
    }

    record Metric(double score, double scoreError, String scoreUnit) {}

    /** The harness's JSON: the device and one row per (implementation, pass, t, chunk). */
    record GpuBench(String device, String source, List<GpuRow> rows) {}

    record GpuRow(String impl, @SerializedName("pass") String pass, long t, long b, long chunk, double ms,
                  @SerializedName("gpu_ms") Double gpuMs) {}

    public static void main(String[] args) throws IOException {
        Map<String, String> a = new HashMap<>();
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("arguments are key=value (jmh, gpu, out, cpu), got " + arg);
            }
            a.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        Path out = Path.of(a.getOrDefault("out", "target/plots"));
        Files.createDirectories(out);
        String cpu = a.getOrDefault("cpu", CpuBenchmark.cpuName() + ", "
                + Runtime.getRuntime().availableProcessors() + " cores");

        // jmh=A.json,B.json: several runs, a later one's result replacing an earlier one's of the same benchmark
        List<Path> jmh = new ArrayList<>();
        for (String f : a.getOrDefault("jmh", "benchmarks/target/jmh-results.json").split(",")) {
            jmh.add(Path.of(f));
        }
        if (jmh.stream().allMatch(Files::exists)) {
            List<JmhResult> results = readJmh(jmh);
            System.out.println("# CPU (JMH, " + jmh + "): " + cpu);
            cpuTime(results, cpu, out);
            cpuDecode(results, cpu, out);
            GpuBench gpu = readGpu(a.get("gpu"));
            speedup(results, gpu, out);
            gpuTime(gpu, out);
        } else {
            System.out.println("# no JMH results at " + jmh + " (run exec:exec@jmh first): GPU plot only");
            gpuTime(readGpu(a.get("gpu")), out);
        }
    }

    static List<JmhResult> readJmh(List<Path> files) throws IOException {
        Map<String, JmhResult> byKey = new java.util.LinkedHashMap<>();
        for (Path file : files) {
            try (Reader r = Files.newBufferedReader(file)) {
                for (JmhResult result : new Gson().fromJson(r, JmhResult[].class)) {
                    byKey.put(result.benchmark() + new TreeMap<>(result.params()), result);
                }
            }
        }
        return new ArrayList<>(byKey.values());
    }

    static GpuBench readGpu(String path) throws IOException {
        Path file = path != null ? Path.of(path) : Path.of("target", "gpu-harness", "bench.json");
        if (path != null || Files.exists(file)) {
            try (Reader r = Files.newBufferedReader(file)) {
                GpuBench b = new Gson().fromJson(r, GpuBench.class);
                return new GpuBench(b.device(), b.source() != null ? b.source() : file.toString(), b.rows());
            }
        }
        try (InputStream in = BenchmarkReport.class.getResourceAsStream(BUNDLED_GPU);
             Reader r = new InputStreamReader(in, StandardCharsets.UTF_8)) {
            return new Gson().fromJson(r, GpuBench.class);
        }
    }

    /** ms per call against t, log-log: power attention and SDPA, forward and forward + backward. */
    static void cpuTime(List<JmhResult> results, String cpu, Path out) throws IOException {
        XYChart chart = chart("CPU: time per call (" + cpu + ")", "t (tokens), b = 1, h = 8, d = 64, fp32",
                "ms per call");
        for (String kernel : new String[] {"power", "sdpa"}) {
            for (String method : new String[] {"forwardBackward", "forward"}) {
                TreeMap<Long, double[]> points = jmhPoints(results, r -> r.className().equals("AttentionJmh")
                        && r.method().equals(method) && kernel.equals(r.params().get("kernel")));
                String name = (kernel.equals("power") ? "power (deg 2, chunk 128)" : "SDPA (causal)") + ", "
                        + (method.equals("forward") ? "fwd" : "fwd+bwd");
                add(chart, name, points, kernel.equals("power") ? POWER : SDPA, method.equals("forward"));
                System.out.println("  " + name + " (ms): " + format(points));
            }
        }
        save(chart, out, "cpu-time.png");
    }

    /** One generated token against the context: the power decode step against a softmax step over a KV cache. */
    static void cpuDecode(List<JmhResult> results, String cpu, Path out) throws IOException {
        XYChart chart = chart("CPU: one decode step (" + cpu + ")", "context t (tokens), b = 1, h = 8, d = 64, fp32",
                "ms per token");
        TreeMap<Long, double[]> power = jmhPoints(results, r -> r.className().equals("DecodeJmh")
                && "power".equals(r.params().get("kernel")));
        TreeMap<Long, double[]> sdpa = jmhPoints(results, r -> r.className().equals("DecodeJmh")
                && "sdpa".equals(r.params().get("kernel")));
        if (power.isEmpty() && sdpa.isEmpty()) {
            return;
        }
        System.out.println("  decode step (ms): power " + format(power) + "; SDPA + KV cache " + format(sdpa));
        add(chart, "power decode step (state, deg 2)", power, POWER, false);
        add(chart, "SDPA step over a KV cache", sdpa, SDPA, false);
        save(chart, out, "cpu-decode.png");
    }

    /** SDPA's time over power attention's, fwd+bwd: above 1, power attention is faster. */
    static void speedup(List<JmhResult> results, GpuBench gpu, Path out) throws IOException {
        XYChart chart = chart("Power attention vs SDPA, fwd+bwd (above 1: power is faster)",
                "t (tokens)", "SDPA time / power attention time");
        chart.getStyler().setYAxisLogarithmic(false);
        chart.getStyler().setYAxisMin(0.0);
        chart.getStyler().setLegendPosition(Styler.LegendPosition.OutsideS);
        TreeMap<Long, double[]> power = jmhPoints(results, r -> r.className().equals("AttentionJmh")
                && r.method().equals("forwardBackward") && "power".equals(r.params().get("kernel")));
        TreeMap<Long, double[]> sdpa = jmhPoints(results, r -> r.className().equals("AttentionJmh")
                && r.method().equals("forwardBackward") && "sdpa".equals(r.params().get("kernel")));
        TreeMap<Long, double[]> cpuRatio = new TreeMap<>();
        for (Map.Entry<Long, double[]> e : power.entrySet()) {
            double[] s = sdpa.get(e.getKey());
            if (s != null) {
                cpuRatio.put(e.getKey(), new double[] {s[0] / e.getValue()[0], 0});
            }
        }
        System.out.println("# fwd+bwd, SDPA / power: CPU " + format(cpuRatio));
        add(chart, "CPU (chunk 128)", cpuRatio, POWER, false);

        TreeMap<Long, double[]> gpuRatio = new TreeMap<>();
        for (GpuRow s : gpu.rows()) {
            if (s.impl().startsWith("sdpa") && s.pass().equals("fwd+bwd")) {
                double best = gpu.rows().stream().filter(p -> p.impl().equals("power") && p.pass().equals("fwd+bwd")
                        && p.t() == s.t()).mapToDouble(GpuRow::ms).min().orElse(Double.NaN);
                gpuRatio.put(s.t(), new double[] {s.ms() / best, 0});
            }
        }
        System.out.println("# fwd+bwd, SDPA / power: GPU " + format(gpuRatio) + " (" + gpu.device() + ")");
        add(chart, "GPU, " + gpu.device() + " (bf16, best chunk)", gpuRatio, GPU, false);
        double[] xs = chart.getSeriesCollection().stream()
                .flatMapToDouble(s -> java.util.Arrays.stream(s.getXData())).toArray();
        if (xs.length > 0) {
            double lo = java.util.Arrays.stream(xs).min().getAsDouble();
            double hi = java.util.Arrays.stream(xs).max().getAsDouble();
            XYSeries even = chart.addSeries("level", new double[] {lo, hi}, new double[] {1, 1});
            even.setMarker(SeriesMarkers.NONE);
            even.setLineColor(Color.GRAY);
            even.setLineStyle(new BasicStroke(1f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_MITER, 10f,
                    new float[] {4f, 4f}, 0f));
        }
        save(chart, out, "speedup.png");
    }

    /** The GPU harness's fwd+bwd (and fwd) times against t. */
    static void gpuTime(GpuBench gpu, Path out) throws IOException {
        System.out.println("# GPU: " + gpu.device() + " (" + gpu.source() + ")");
        XYChart chart = chart("GPU: " + gpu.device() + ", from an idle GPU",
                "t (tokens), b·t = 65536, h = 8, d = 64, bf16", "ms per call");
        TreeMap<String, TreeMap<Long, double[]>> series = new TreeMap<>();
        for (GpuRow r : gpu.rows()) {
            String name = r.impl().startsWith("sdpa") ? "SDPA (flash), " + r.pass()
                    : "power, chunk " + r.chunk() + ", " + r.pass();
            series.computeIfAbsent(name, n -> new TreeMap<>()).put(r.t(), new double[] {r.ms(), 0});
        }
        Color[] powerShades = {POWER, POWER.darker(), new Color(120, 180, 230)};
        int shade = 0;
        for (Map.Entry<String, TreeMap<Long, double[]>> e : series.entrySet()) {
            boolean fwd = e.getKey().endsWith(", fwd");
            Color c = e.getKey().startsWith("SDPA") ? SDPA : fwd ? POWER : powerShades[shade++ % powerShades.length];
            add(chart, e.getKey(), e.getValue(), c, fwd);
            System.out.println("  " + e.getKey() + ": " + format(e.getValue()));
        }
        save(chart, out, "gpu-time.png");
    }

    static final Color POWER = new Color(31, 119, 180);
    static final Color SDPA = new Color(214, 39, 40);
    static final Color GPU = new Color(44, 160, 44);

    static XYChart chart(String title, String x, String y) {
        XYChart chart = new XYChartBuilder().width(WIDTH).height(HEIGHT).title(title).xAxisTitle(x).yAxisTitle(y)
                .build();
        XYStyler s = chart.getStyler();
        chart.getStyler().setXAxisLogarithmic(true);
        chart.getStyler().setYAxisLogarithmic(true);
        s.setLegendPosition(Styler.LegendPosition.InsideNW);
        s.setChartBackgroundColor(Color.WHITE);
        s.setPlotGridLinesColor(new Color(225, 225, 225));
        s.setLegendBorderColor(new Color(200, 200, 200));
        chart.getStyler().setMarkerSize(7);
        chart.getStyler().setDecimalPattern("#,##0.###");
        return chart;
    }

    /** The score (ms) and its error per t of the results that pass the filter. */
    static TreeMap<Long, double[]> jmhPoints(List<JmhResult> results, Predicate<JmhResult> filter) {
        TreeMap<Long, double[]> points = new TreeMap<>();
        for (JmhResult r : results) {
            if (filter.test(r)) {
                double scale = unitToMs(r.primaryMetric().scoreUnit());
                double err = Double.isNaN(r.primaryMetric().scoreError()) ? 0 : r.primaryMetric().scoreError();
                points.put(r.t(), new double[] {r.primaryMetric().score() * scale, err * scale});
            }
        }
        return points;
    }

    static double unitToMs(String unit) {
        return switch (unit) {
            case "ns/op" -> 1e-6;
            case "us/op" -> 1e-3;
            case "ms/op" -> 1;
            case "s/op" -> 1e3;
            default -> throw new IllegalArgumentException("JMH score unit " + unit + ": run the benchmarks in mode avgt");
        };
    }

    static void add(XYChart chart, String name, TreeMap<Long, double[]> points, Color color, boolean dashed) {
        if (points.isEmpty()) {
            return;
        }
        double[] x = points.keySet().stream().mapToDouble(Long::doubleValue).toArray();
        double[] y = points.values().stream().mapToDouble(p -> p[0]).toArray();
        XYSeries s = chart.addSeries(name, x, y);
        s.setLineColor(color);
        s.setMarkerColor(color);
        s.setMarker(dashed ? SeriesMarkers.DIAMOND : SeriesMarkers.CIRCLE);
        if (dashed) {
            s.setLineStyle(new BasicStroke(2f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_MITER, 10f,
                    new float[] {6f, 4f}, 0f));
        }
    }

    static String format(TreeMap<Long, double[]> points) {
        List<String> parts = new ArrayList<>();
        points.forEach((t, p) -> parts.add(String.format(Locale.ROOT, "t=%d %.3g", t, p[0])));
        return String.join(", ", parts);
    }

    static void save(XYChart chart, Path out, String name) throws IOException {
        Path file = out.resolve(name);
        BitmapEncoder.saveBitmap(chart, file.toString(), BitmapEncoder.BitmapFormat.PNG);
        System.out.println("# wrote " + file + " (" + Files.size(file) / 1024 + " KiB)");
    }
}
