package io.github.powerattention.trainer;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * Command-line flags in the nanoGPT style: {@code --name=value}, {@code --name value}, and {@code --name} alone for a
 * boolean. Typed getters name the flag, the expected form and the given text when a value does not parse;
 * {@link #requireAllUsed(Set)} rejects flags that no getter asked for.
 */
final class Flags {
    private final Map<String, String> values = new LinkedHashMap<>();
    private final Set<String> used = new LinkedHashSet<>();

    private Flags() {}

    /** Parses {@code args}; boolean flags may stand alone ({@code --disable_gating}). */
    static Flags parse(String[] args, Set<String> booleanFlags) {
        Flags f = new Flags();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("-")) {
                throw new UsageException("unexpected argument '" + a + "': flags look like --name=value");
            }
            String body = a.startsWith("--") ? a.substring(2) : a.substring(1);
            String name;
            String value;
            int eq = body.indexOf('=');
            if (eq >= 0) {
                name = body.substring(0, eq);
                value = body.substring(eq + 1);
            } else if (booleanFlags.contains(body)) {
                name = body;
                value = "true";
            } else if (i + 1 < args.length && !args[i + 1].startsWith("--")) {
                name = body;
                value = args[++i];
            } else {
                throw new UsageException("flag --" + body + " needs a value (--" + body + "=VALUE)");
            }
            name = name.replace('-', '_');
            if (name.isEmpty()) {
                throw new UsageException("empty flag name in '" + a + "'");
            }
            if (f.values.put(name, value) != null) {
                throw new UsageException("flag --" + name + " is given twice");
            }
        }
        return f;
    }

    boolean has(String name) {
        return values.containsKey(name);
    }

    Set<String> given() {
        return values.keySet();
    }

    String string(String name, String def) {
        used.add(name);
        return values.getOrDefault(name, def);
    }

    int integer(String name, int def, int min) {
        used.add(name);
        String v = values.get(name);
        if (v == null) {
            return def;
        }
        int x;
        try {
            x = Integer.parseInt(v.strip().replace("_", ""));
        } catch (NumberFormatException e) {
            throw new UsageException("--" + name + " expects an integer, got '" + v + "'");
        }
        if (x < min) {
            throw new UsageException("--" + name + " expects an integer >= " + min + ", got " + x);
        }
        return x;
    }

    double real(String name, double def, double min, boolean minInclusive) {
        used.add(name);
        String v = values.get(name);
        if (v == null) {
            return def;
        }
        double x;
        try {
            x = Double.parseDouble(v.strip());
        } catch (NumberFormatException e) {
            throw new UsageException("--" + name + " expects a number, got '" + v + "'");
        }
        if (!Double.isFinite(x) || x < min || (!minInclusive && x == min)) {
            throw new UsageException("--" + name + " expects a finite number " + (minInclusive ? ">= " : "> ") + min
                    + ", got " + v);
        }
        return x;
    }

    boolean bool(String name, boolean def) {
        used.add(name);
        String v = values.get(name);
        if (v == null) {
            return def;
        }
        switch (v.strip().toLowerCase(Locale.ROOT)) {
            case "true": case "1": case "yes": return true;
            case "false": case "0": case "no": return false;
            default: throw new UsageException("--" + name + " expects true or false, got '" + v + "'");
        }
    }

    /** One of {@code choices} (case-insensitive), returned in the case given in {@code choices}. */
    String choice(String name, String def, String... choices) {
        used.add(name);
        String v = values.get(name);
        if (v == null) {
            return def;
        }
        for (String c : choices) {
            if (c.equalsIgnoreCase(v.strip())) {
                return c;
            }
        }
        throw new UsageException("--" + name + " expects one of " + String.join("|", choices) + ", got '" + v + "'");
    }

    /** Fails on the first flag that no getter read, listing the known ones. */
    void requireAllUsed(Set<String> known) {
        List<String> unknown = new ArrayList<>();
        for (String n : values.keySet()) {
            if (!used.contains(n)) {
                unknown.add(n);
            }
        }
        if (!unknown.isEmpty()) {
            throw new UsageException("unknown flag --" + unknown.get(0) + "; known flags: --"
                    + String.join(" --", known));
        }
    }

    Set<String> usedNames() {
        return used;
    }
}
