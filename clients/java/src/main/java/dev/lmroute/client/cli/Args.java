package dev.lmroute.client.cli;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;

/** Command-line options of one subcommand: {@code --name value} / {@code --name=value} and positionals. */
final class Args {

  /** A bad command line; the message says what was wrong. Exit status 2. */
  static final class UsageError extends Exception {
    private static final long serialVersionUID = 1L;

    UsageError(String message) {
      super(message);
    }
  }

  private final Map<String, List<String>> options;
  private final List<String> positionals;

  private Args(Map<String, List<String>> options, List<String> positionals) {
    this.options = options;
    this.positionals = positionals;
  }

  /** Parses {@code argv[from..]}; every option takes a value and must be one of {@code known}. */
  static Args parse(String[] argv, int from, Set<String> known) throws UsageError {
    Map<String, List<String>> options = new LinkedHashMap<>();
    List<String> positionals = new ArrayList<>();
    boolean onlyPositionals = false;
    for (int i = from; i < argv.length; i++) {
      String a = argv[i];
      if (onlyPositionals || !a.startsWith("--")) {
        positionals.add(a);
        continue;
      }
      if (a.equals("--")) {
        onlyPositionals = true;
        continue;
      }
      String name;
      String value;
      int eq = a.indexOf('=');
      if (eq >= 0) {
        name = a.substring(2, eq);
        value = a.substring(eq + 1);
      } else {
        name = a.substring(2);
        if (i + 1 >= argv.length) {
          throw new UsageError("--" + name + ": missing value");
        }
        value = argv[++i];
      }
      if (!known.contains(name)) {
        throw new UsageError("unknown option --" + name + " (known: --" + String.join(", --", known) + ")");
      }
      options.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
    }
    return new Args(options, positionals);
  }

  /** The value of an option given at most once. */
  Optional<String> get(String name) throws UsageError {
    List<String> values = options.getOrDefault(name, List.of());
    if (values.size() > 1) {
      throw new UsageError("--" + name + ": given " + values.size() + " times, expected at most once");
    }
    return values.isEmpty() ? Optional.empty() : Optional.of(values.get(0));
  }

  String require(String name) throws UsageError {
    return get(name).orElseThrow(() -> new UsageError("--" + name + ": required"));
  }

  /** Every value of a repeatable option, in order. */
  List<String> all(String name) {
    return List.copyOf(options.getOrDefault(name, List.of()));
  }

  boolean has(String name) {
    return options.containsKey(name);
  }

  Optional<Double> getDouble(String name) throws UsageError {
    Optional<String> v = get(name);
    if (v.isEmpty()) {
      return Optional.empty();
    }
    if (!DECIMAL.matcher(v.get()).matches()) { // parseDouble also takes 0.5f, 0x1p-1, NaN, Infinity, " 1 "
      throw new UsageError("--" + name + ": not a number: " + v.get() + " (a decimal such as 0.25 or 1e-3)");
    }
    return Optional.of(Double.parseDouble(v.get()));
  }

  private static final java.util.regex.Pattern DECIMAL =
      java.util.regex.Pattern.compile("[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?");

  int getInt(String name, int fallback, int min) throws UsageError {
    Optional<String> v = get(name);
    if (v.isEmpty()) {
      return fallback;
    }
    int n;
    try {
      n = Integer.parseInt(v.get());
    } catch (NumberFormatException e) {
      throw new UsageError("--" + name + ": not an integer: " + v.get());
    }
    if (n < min) {
      throw new UsageError("--" + name + ": must be >= " + min + " (got " + n + ")");
    }
    return n;
  }

  List<String> positionals() {
    return List.copyOf(positionals);
  }
}
