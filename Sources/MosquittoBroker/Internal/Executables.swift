import Foundation

/// Finds the programs the broker needs: `mosquitto`, `mosquitto_passwd` and `openssl`.
enum Executables {
    private static var pathDirectories: [String] {
        (ProcessInfo.processInfo.environment["PATH"] ?? "")
            .split(separator: ":", omittingEmptySubsequences: true)
            .map(String.init)
    }

    /// Returns the first executable file named `name` in `$<environmentVariable>` (a full path),
    /// then in the `$PATH` directories, then in `extraDirectories`.
    static func locate(_ name: String, environmentVariable: String?, extraDirectories: [String]) -> String? {
        if let environmentVariable,
            let override = ProcessInfo.processInfo.environment[environmentVariable],
            !override.isEmpty
        {
            // An explicit override wins even if it is wrong, so the error names it.
            return override
        }
        for directory in pathDirectories + extraDirectories {
            let candidate = directory + "/" + name
            if POSIX.isExecutableFile(candidate) {
                return candidate
            }
        }
        return nil
    }

    static let brokerDirectories = ["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"]
    static let toolDirectories = ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"]

    static func mosquitto() -> String? {
        locate("mosquitto", environmentVariable: "MOSQUITTO_BINARY", extraDirectories: brokerDirectories)
    }

    static func mosquittoPasswd(nextTo broker: String?) -> String? {
        var extra = toolDirectories + brokerDirectories
        if let broker {
            // Homebrew keeps mosquitto_passwd in bin/ next to the sbin/ holding mosquitto.
            let sbin = (broker as NSString).deletingLastPathComponent
            extra.insert(sbin, at: 0)
            extra.insert(((sbin as NSString).deletingLastPathComponent as NSString).appendingPathComponent("bin"), at: 1)
        }
        return locate("mosquitto_passwd", environmentVariable: "MOSQUITTO_PASSWD_BINARY", extraDirectories: extra)
    }

    static func openssl() -> String? {
        locate(
            "openssl",
            environmentVariable: "OPENSSL_BINARY",
            extraDirectories: toolDirectories + ["/opt/homebrew/opt/openssl/bin", "/usr/local/opt/openssl/bin"]
        )
    }
}
