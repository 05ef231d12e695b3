package io.github.powerattention.trainer;

import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.Font;
import java.awt.Graphics2D;
import java.awt.RenderingHints;
import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;

import javax.imageio.ImageIO;

/** The loss curve as a PNG (java.awt, headless): train loss per log line, validation loss per evaluation. */
final class LossPlot {
    private static final int W = 900;
    private static final int H = 520;
    private static final int LEFT = 70;
    private static final int RIGHT = 20;
    private static final int TOP = 40;
    private static final int BOTTOM = 50;
    private static final Color TRAIN = new Color(31, 119, 180);
    private static final Color VAL = new Color(255, 127, 14);

    private LossPlot() {}

    static void write(Path file, String title, List<Checkpoint.Point> points) throws IOException {
        System.setProperty("java.awt.headless", "true");
        BufferedImage img = new BufferedImage(W, H, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = img.createGraphics();
        g.setRenderingHint(RenderingHints.KEY_ANTIALIASING, RenderingHints.VALUE_ANTIALIAS_ON);
        g.setColor(Color.WHITE);
        g.fillRect(0, 0, W, H);
        double minX = Double.MAX_VALUE;
        double maxX = -Double.MAX_VALUE;
        double minY = Double.MAX_VALUE;
        double maxY = -Double.MAX_VALUE;
        for (Checkpoint.Point p : points) {
            if (Double.isFinite(p.loss())) {
                minX = Math.min(minX, p.step());
                maxX = Math.max(maxX, p.step());
                minY = Math.min(minY, p.loss());
                maxY = Math.max(maxY, p.loss());
            }
        }
        if (minX > maxX) {
            minX = 0;
            maxX = 1;
            minY = 0;
            maxY = 1;
        }
        if (maxX == minX) {
            maxX = minX + 1;
        }
        double pad = Math.max(1e-3, (maxY - minY) * 0.05);
        minY = Math.max(0, minY - pad);
        maxY += pad;
        int pw = W - LEFT - RIGHT;
        int ph = H - TOP - BOTTOM;
        g.setFont(new Font(Font.SANS_SERIF, Font.PLAIN, 12));
        // grid and axis labels
        for (int i = 0; i <= 5; i++) {
            int y = TOP + ph - i * ph / 5;
            g.setColor(new Color(230, 230, 230));
            g.drawLine(LEFT, y, LEFT + pw, y);
            g.setColor(Color.DARK_GRAY);
            g.drawString(String.format(Locale.ROOT, "%.3f", minY + i * (maxY - minY) / 5), 8, y + 4);
            int x = LEFT + i * pw / 5;
            g.drawString(String.format(Locale.ROOT, "%.0f", minX + i * (maxX - minX) / 5), x - 10, TOP + ph + 18);
        }
        g.setColor(Color.BLACK);
        g.drawRect(LEFT, TOP, pw, ph);
        g.drawString("step", LEFT + pw / 2 - 10, H - 12);
        g.drawString("loss (nats/byte)", 8, TOP - 10);
        g.setFont(new Font(Font.SANS_SERIF, Font.BOLD, 14));
        g.drawString(title, LEFT + 120, 22);
        g.setStroke(new BasicStroke(1.8f));
        for (String split : new String[] {"train", "val"}) {
            g.setColor(split.equals("train") ? TRAIN : VAL);
            int px = -1;
            int py = -1;
            for (Checkpoint.Point p : points) {
                if (!p.split().equals(split) || !Double.isFinite(p.loss())) {
                    continue;
                }
                int x = LEFT + (int) Math.round((p.step() - minX) / (maxX - minX) * pw);
                int y = TOP + ph - (int) Math.round((p.loss() - minY) / (maxY - minY) * ph);
                if (px >= 0) {
                    g.drawLine(px, py, x, y);
                }
                if (split.equals("val")) {
                    g.fillOval(x - 3, y - 3, 7, 7);
                }
                px = x;
                py = y;
            }
        }
        g.setFont(new Font(Font.SANS_SERIF, Font.PLAIN, 12));
        g.setColor(TRAIN);
        g.drawString("train", LEFT + pw - 90, TOP + 18);
        g.setColor(VAL);
        g.drawString("validation", LEFT + pw - 90, TOP + 34);
        g.dispose();
        ImageIO.write(img, "png", file.toFile());
    }
}
