/// An error thrown by ``MosquittoBroker`` while it prepares, starts or stops a broker.
///
/// The error carries a ``code`` you can match on, a human-readable ``message``, the tail of the
/// broker's log when there is one, and a ``hint`` that says what to do about it. Its
/// ``description`` puts all of them together, so a failed test prints everything needed to
/// diagnose the problem:
///
/// ```swift
/// do {
///     try await broker.start()
/// } catch let error as MosquittoBrokerError where error.code == .executableNotFound {
///     print(error) // "... install mosquitto: apt-get install mosquitto ..."
/// }
/// ```
public struct MosquittoBrokerError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure happened.
    ///
    /// This is a struct rather than an enum so that new codes can be added without breaking
    /// source compatibility. Compare it with `==` against the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case executableNotFound
            case invalidConfiguration
            case fileSystem
            case toolFailed
            case launchFailed
            case exitedDuringStartup
            case startTimedOut
            case alreadyRunning
            case shutDown
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The `mosquitto` executable (or a helper such as `mosquitto_passwd` or `openssl`) was not found.
        public static let executableNotFound = Code(.executableNotFound)
        /// The ``MosquittoBroker/Configuration`` cannot be turned into a broker configuration,
        /// for example because a username contains a colon.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// Creating, writing or removing a file or directory failed.
        public static let fileSystem = Code(.fileSystem)
        /// A helper tool (`openssl`, `mosquitto_passwd`) ran but failed.
        public static let toolFailed = Code(.toolFailed)
        /// The broker process could not be launched at all.
        public static let launchFailed = Code(.launchFailed)
        /// The broker process exited before it accepted connections, typically because of a bad
        /// configuration line or a port that is already in use. The log tail says which.
        public static let exitedDuringStartup = Code(.exitedDuringStartup)
        /// The broker process kept running but did not accept connections in time.
        public static let startTimedOut = Code(.startTimedOut)
        /// ``MosquittoBroker/start()`` was called while the broker is running or another
        /// start is in progress.
        public static let alreadyRunning = Code(.alreadyRunning)
        /// The broker was shut down with ``MosquittoBroker/shutdown()`` and its directory is gone.
        public static let shutDown = Code(.shutDown)

        /// The name of the code, for example `exitedDuringStartup`.
        public var description: String { base.rawValue }
    }

    /// What kind of failure happened.
    public var code: Code
    /// A one-line explanation of what failed.
    public var message: String
    /// The last lines of the broker's log file and captured standard output and error, if any.
    public var logTail: String?
    /// What to do about the failure, for example how to install mosquitto.
    public var hint: String?

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - code: What kind of failure happened.
    ///   - message: A one-line explanation of what failed.
    ///   - logTail: The last lines of the broker's log, if any.
    ///   - hint: What to do about the failure, if anything useful can be said.
    public init(code: Code, message: String, logTail: String? = nil, hint: String? = nil) {
        self.code = code
        self.message = message
        self.logTail = logTail
        self.hint = hint
    }

    /// The message, followed by the hint and the log tail when they are present.
    public var description: String {
        var text = "MosquittoBrokerError.\(code): \(message)"
        if let hint, !hint.isEmpty {
            text += "\nWhat to do: \(hint)"
        }
        if let logTail, !logTail.isEmpty {
            text += "\n--- broker log (tail) ---\n\(logTail)"
            if !logTail.hasSuffix("\n") {
                text += "\n"
            }
            text += "--- end of broker log ---"
        }
        return text
    }
}

extension MosquittoBrokerError {
    static let installHint =
        "install mosquitto: apt-get install mosquitto (Debian/Ubuntu) or brew install mosquitto (macOS), "
        + "or set MOSQUITTO_BINARY to the path of the mosquitto executable"
}
