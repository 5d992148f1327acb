import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// mosquitto's per-tool options file: `$XDG_CONFIG_HOME/mosquitto_pub` or `~/.config/mosquitto_pub`
/// (`mosquitto_sub`, `mosquitto_rr` likewise), read before the command line.
///
/// One option per line; lines starting with `#` are comments; CR and LF are stripped; a line is split at its
/// first space into the option and *one* argument holding the rest of the line (spaces kept, no quotes removed).
/// A missing file is not an error.
public enum OptionsFile {
    /// The path mosquitto reads for `toolName` (for example `mosquitto_sub`), or nil when neither
    /// `XDG_CONFIG_HOME` nor `HOME` is set.
    public static func path(for toolName: String, environment: [String: String]? = nil) -> String? {
        if let xdg = environmentValue("XDG_CONFIG_HOME", in: environment) { return xdg + "/" + toolName }
        if let home = environmentValue("HOME", in: environment) { return home + "/.config/" + toolName }
        return nil
    }

    /// The arguments in the options file for `toolName`, or none.
    public static func arguments(for toolName: String, environment: [String: String]? = nil) -> [String] {
        guard let path = path(for: toolName, environment: environment),
              let data = FileManager.default.contents(atPath: path) else { return [] }
        return parse(String(decoding: data, as: UTF8.self))
    }

    /// Splits the text of an options file into arguments.
    public static func parse(_ text: String) -> [String] {
        var out: [String] = []
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = rawLine.filter { $0 != "\r" }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if let space = line.firstIndex(of: " ") {
                out.append(String(line[..<space]))
                out.append(String(line[line.index(after: space)...]))
            } else {
                out.append(String(line))
            }
        }
        return out
    }
}

/// `environment[name]` when an environment is given (tests), otherwise the process's own variable, read with
/// `getenv` (building the whole environment dictionary costs more than the rest of a short run's start-up).
func environmentValue(_ name: String, in environment: [String: String]?) -> String? {
    if let environment { return environment[name] }
    return getenv(name).map { String(cString: $0) }
}
