#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `environment[name]` when an environment is given (tests), otherwise the process's own variable, read with
/// `getenv` (building the whole environment dictionary costs more than the rest of a short run's start-up).
func environmentValue(_ name: String, in environment: [String: String]?) -> String? {
    if let environment { return environment[name] }
    return getenv(name).map { String(cString: $0) }
}
