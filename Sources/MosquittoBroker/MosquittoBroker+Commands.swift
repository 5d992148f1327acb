import Foundation

extension MosquittoBroker {
    /// The outcome of a program run with ``runCommand(_:_:timeout:)``.
    public struct CommandResult: Sendable, Hashable, CustomStringConvertible {
        /// The exit code, or the signal number when ``wasSignalled`` is `true`.
        public var exitCode: Int32
        /// Whether the program was ended by a signal (including the `SIGKILL` sent at the time limit).
        public var wasSignalled: Bool
        /// Whether the program was killed because it ran past its time limit.
        public var timedOut: Bool
        /// Everything the program wrote to standard output and standard error, interleaved.
        public var output: String

        /// Creates a result.
        ///
        /// - Parameters:
        ///   - exitCode: The exit code or signal number.
        ///   - wasSignalled: Whether a signal ended the program.
        ///   - timedOut: Whether the program ran past its time limit.
        ///   - output: The combined standard output and standard error.
        public init(exitCode: Int32, wasSignalled: Bool, timedOut: Bool, output: String) {
            self.exitCode = exitCode
            self.wasSignalled = wasSignalled
            self.timedOut = timedOut
            self.output = output
        }

        /// Whether the program exited normally with code 0.
        public var succeeded: Bool {
            !wasSignalled && exitCode == 0
        }

        /// A summary such as `exit code 5: Connection error: Connection Refused: not authorised.`
        public var description: String {
            let how = timedOut ? "timed out" : (wasSignalled ? "killed by signal \(exitCode)" : "exit code \(exitCode)")
            return "\(how): \(output.trimmingCharacters(in: .whitespacesAndNewlines))"
        }
    }

    /// Runs a command-line program, such as `mosquitto_pub` or `mosquitto_sub`, and waits for it.
    ///
    /// Use this rather than a bare `Process` in async tests. A program spawned from a Swift
    /// concurrency thread inherits that thread's signal mask, in which `SIGALRM`, `SIGTERM` and
    /// `SIGINT` are blocked; `mosquitto_sub -W` then never times out. This function spawns from a
    /// thread with an empty mask. Standard input is `/dev/null`.
    ///
    /// ```swift
    /// let result = try await MosquittoBroker.runCommand(
    ///     "mosquitto_sub", ["-h", broker.host, "-p", "\(broker.port)", "-t", "a/b", "-C", "1", "-W", "5"]
    /// )
    /// #expect(result.output == "hello\n")
    /// ```
    ///
    /// - Parameters:
    ///   - command: A program name, looked up in `$PATH`, `/usr/bin`, `/usr/local/bin`,
    ///     `/opt/homebrew/bin` and the `sbin` directories searched for mosquitto; or a path containing `/`.
    ///   - arguments: The arguments, without the program name.
    ///   - timeout: How long to let the program run before killing it with `SIGKILL`.
    /// - Returns: The exit status and combined output.
    /// - Throws: ``MosquittoBrokerError`` when the program is not found or cannot be launched.
    public static func runCommand(
        _ command: String,
        _ arguments: [String],
        timeout: Duration = .seconds(30)
    ) async throws -> CommandResult {
        let executable: String
        if command.contains("/") {
            executable = command
        } else if let found = Executables.locate(
            command,
            environmentVariable: nil,
            extraDirectories: Executables.toolDirectories + Executables.brokerDirectories
        ) {
            executable = found
        } else {
            throw MosquittoBrokerError(
                code: .executableNotFound,
                message: "\(command) was not found in $PATH or "
                    + (Executables.toolDirectories + Executables.brokerDirectories).joined(separator: ", "),
                hint: command.hasPrefix("mosquitto_")
                    ? "install the mosquitto clients: apt-get install mosquitto-clients (Debian/Ubuntu) "
                        + "or brew install mosquitto (macOS)"
                    : nil
            )
        }

        var temporary = FileManager.default.temporaryDirectory.path
        while temporary.count > 1 && temporary.hasSuffix("/") {
            temporary.removeLast()
        }
        let directory = try POSIX.makeTemporaryDirectory(in: temporary, prefix: "mosquitto-command.")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let outputFile = directory + "/output"

        let child = try await ChildProcess.launch(
            executable: executable,
            arguments: arguments,
            directory: FileManager.default.currentDirectoryPath,
            outputFile: outputFile
        )
        let exited = await child.monitor.waitForExit(timeout: timeout)
        if !exited {
            await child.forceKill()
        }
        let status = child.monitor.status!
        return CommandResult(
            exitCode: status.code,
            wasSignalled: status.wasSignalled,
            timedOut: !exited,
            output: POSIX.readFile(outputFile)
        )
    }
}
