package io.github.powerattention.trainer;

import java.awt.Color;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.XYSeries;
import org.knowm.xchart.style.Styler;
import org.knowm.xchart.style.markers.SeriesMarkers;

/** The loss curve as a PNG (XChart, headless): train loss per log line, validation loss per evaluation. */
final class LossPlot {
    private static final int W = 900;
    private static final int H = 520;
    private static final Color TRAIN = new Color(31, 119, 180);
    private static final Color VAL = new Color(255, 127, 14);

    private LossPlot() {}

    static void write(Path file, String title, List<Checkpoint.Point> points) throws IOException {
        System.setProperty("java.awt.headless", "true");
        XYChart chart = new XYChartBuilder().width(W).height(H).title(title).xAxisTitle("step")
                .yAxisTitle("loss (nats/byte)").build();
        chart.getStyler().setChartBackgroundColor(Color.WHITE);
        chart.getStyler().setLegendPosition(Styler.LegendPosition.InsideNE);
        chart.getStyler().setDecimalPattern("0.###");
        boolean any = false;
        for (String split : new String[] {"train", "val"}) {
            List<Double> x = new ArrayList<>();
            List<Double> y = new ArrayList<>();
            for (Checkpoint.Point p : points) {
                if (p.split().equals(split) && Double.isFinite(p.loss())) {
                    x.add((double) p.step());
                    y.add(p.loss());
                }
            }
            if (x.isEmpty()) {
                continue;
            }
            XYSeries s = chart.addSeries(split.equals("train") ? "train" : "validation", x, y);
            Color c = split.equals("train") ? TRAIN : VAL;
            s.setLineColor(c);
            s.setMarkerColor(c);
            s.setMarker(split.equals("val") ? SeriesMarkers.CIRCLE : SeriesMarkers.NONE);
            any = true;
        }
        if (!any) {
            // no finite loss yet: an empty frame, so the file exists and says so
            chart.addSeries("no finite loss yet", new double[] {0, 1}, new double[] {0, 0}).setMarker(SeriesMarkers.NONE);
        }
        BitmapEncoder.saveBitmap(chart, file.toString(), BitmapEncoder.BitmapFormat.PNG);
    }
}
