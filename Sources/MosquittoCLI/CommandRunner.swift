import ArgumentParser
import Dispatch
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto
import MosquittoSync

/// What the runner needs to know about a tool.
public protocol MosquittoTool: AsyncParsableCommand {
    /// The executable's name, for example `mqtt-pub`.
    static var toolName: String { get }
    /// The mosquitto client it mirrors, for example `mosquitto_pub` (also the options file's name).
    static var mosquittoName: String { get }
    /// The `--help` text.
    static var helpText: String { get }
    /// The connection options (for `--quiet`).
    var connection: ConnectionOptions { get }
}

/// Runs a tool the way mosquitto's clients run: options file first, then the command line, mosquitto's argument
/// forms (`-D command name value`), one-line `Error: …` messages, mosquitto's exit codes.
public enum CLIRunner {
    /// Options that take a value, in any of the tools (so that a value is never read as an option).
    static let valueOptions: Set<String> = [
        "-h", "--host", "-p", "--port", "--unix", "-L", "--url", "-A", "--proxy", "-i", "--id", "-I", "--id-prefix",
        "-u", "--username", "-P", "--pw", "--password-file", "--password-env", "-k", "--keepalive", "-x", "-V",
        "--protocol-version", "-M", "--will-topic", "--will-payload", "--will-qos", "--cafile", "--capath", "--cert",
        "--key", "--keyform", "--ciphers", "--tls-version", "--tls-alpn", "--tls-engine", "--tls-engine-kpass-sha1",
        "--psk", "--psk-identity", "-t", "--topic", "-m", "--message", "-f", "--file", "-q", "--qos", "--repeat",
        "--repeat-delay", "-T", "--filter-out", "-U", "--unsubscribe", "-C", "-W", "-F", "--random-filter", "-e",
        "--response-topic", "--max-reconnects",
    ]

    /// The argument-parser configuration shared by the three tools.
    ///
    /// `--help` is ours (``MosquittoTool/helpText``) and `-h` is the host, so only the long spelling is a help
    /// name. The super-command name (an experimental argument-parser setting) turns off its built-in
    /// `--generate-completion-script` check, which parses every command line twice more against two other
    /// commands: about 0.25 ms of a single `mqtt-pub` run (Benchmarks/cli-bench.sh measures that run against
    /// mosquitto_pub's). mosquitto's clients have no completion scripts either.
    public static func configuration(commandName: String, abstract: String) -> CommandConfiguration {
        var c = CommandConfiguration(commandName: commandName, abstract: abstract, helpNames: [.customLong("help")])
        c._superCommandName = ""
        return c
    }

    /// Parses and runs `T`, then exits the process with the tool's status. Called from a synchronous `main`.
    ///
    /// The command line is read and parsed on the main thread, while the concurrency pool starts its first thread
    /// on the other core (started on demand, it would cost a single `mqtt-pub` run about 0.4 ms of waiting); the
    /// tool itself then runs on the pool, and the main thread waits for its exit status.
    public static func main<T: MosquittoTool>(_ type: T.Type, arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        Task.detached {}
        let status: Int32
        switch parse(type, arguments: arguments) {
        case .finished(let s):
            status = s
        case .parsed(let command):
            let result = LockedValue<Int32>(1)
            let done = DispatchSemaphore(value: 0)
            Task.detached {
                let s = await execute(command)
                result.withLock { $0 = s }
                done.signal()
            }
            done.wait()
            status = result.withLock { $0 }
        }
        StandardOutput.shared.flush()
        fflush(nil)
        // Everything the tool owns is flushed and closed by now (the client joined its network thread): end
        // without the C and Swift runtimes' exit handlers, which have nothing left to do and cost a single
        // `mqtt-pub` run about 0.25 ms of wall time and 0.7 ms of CPU. Under scripts/sanitize.sh the handlers run,
        // so that the sanitizers' exit-time checks still happen.
        if getenv("MOSQUITTO_SANITIZER") != nil { exit(status) }
        _exit(status)
    }

    /// Parses and runs `T`; returns the exit status.
    public static func run<T: MosquittoTool>(_ type: T.Type, arguments: [String]) async -> Int32 {
        switch parse(type, arguments: arguments) {
        case .finished(let status): return status
        case .parsed(let command): return await execute(command)
        }
    }

    /// What reading the command line ended with.
    enum Parsed<T: MosquittoTool> {
        /// Nothing to run: `--help`, `--version` or an error (already reported); the exit status.
        case finished(Int32)
        /// The command to run.
        case parsed(T)
    }

    /// Reads the options file and the command line; reports errors as mosquitto does.
    static func parse<T: MosquittoTool>(_ type: T.Type, arguments: [String]) -> Parsed<T> {
        let tokens: [String]
        do {
            tokens = try prepare(OptionsFile.arguments(for: T.mosquittoName) + arguments, tool: T.self)
        } catch let e as CLIError {
            report(e, tool: T.toolName, quiet: false)
            return .finished(e.exitCode)
        } catch {
            return .finished(1)
        }
        if tokens == ["--help"] {
            StandardOutput.shared.writeLine(T.helpText)
            return .finished(1)
        }
        if tokens == ["--version"] {
            StandardOutput.shared.writeLine("\(T.toolName) version \(toolkitVersion) running on libmosquitto \(MQTTClient.libraryVersion).")
            return .finished(1)
        }
        do {
            guard let parsed = try T.parseAsRoot(tokens) as? T else { return .finished(1) }
            return .parsed(parsed)
        } catch let e as CLIError {
            report(e, tool: T.toolName, quiet: false)
            return .finished(e.exitCode)
        } catch {
            report(CLIError.usage(translate(T.message(for: error))), tool: T.toolName, quiet: false)
            return .finished(1)
        }
    }

    /// Runs a parsed command; returns the exit status.
    static func execute<T: MosquittoTool>(_ command: T) async -> Int32 {
        var command = command
        do {
            try await command.run()
            return 0
        } catch let e as CLIError {
            report(e, tool: T.toolName, quiet: command.connection.quiet)
            return e.exitCode
        } catch let e as ExitCode {
            return e.rawValue
        } catch {
            report(CLIError("Error: \(error)"), tool: T.toolName, quiet: command.connection.quiet)
            return 1
        }
    }

    /// The version printed by `--version`.
    public static let toolkitVersion = "2.0.11"

    static func report(_ e: CLIError, tool: String, quiet: Bool) {
        StandardOutput.shared.flush()
        if quiet && !e.showsUsageHint { return }
        if e.message.isEmpty { return }
        var text = e.message
        if e.showsUsageHint { text += "\n\nUse '\(tool) --help' to see usage." }
        printError(text)
    }

    /// Turns ArgumentParser's messages into mosquitto's.
    static func translate(_ message: String) -> String {
        let m = String(message.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
        let firstLine = m.split(separator: "\n").first.map(String.init) ?? m
        if firstLine.hasPrefix("Error: ") { return translate(String(firstLine.dropFirst(7))) }
        if let q = quoted(firstLine), firstLine.hasPrefix("Unknown option") || firstLine.hasPrefix("Unexpected argument") {
            return "Error: Unknown option '\(q)'."
        }
        if firstLine.hasPrefix("Missing value for"), let q = quoted(firstLine) {
            let parts = q.split(separator: " ", maxSplits: 1)
            let flag = String(parts.first ?? "")
            let noun = parts.count > 1 ? String(parts[1].filter { $0 != "<" && $0 != ">" }) : "value"
            return "Error: \(flag) argument given but no \(noun) specified."
        }
        return "Error: \(firstLine.hasSuffix(".") ? firstLine : firstLine + ".")"
    }

    private static func quoted(_ s: String) -> String? {
        guard let a = s.firstIndex(of: "'"), let b = s[s.index(after: a)...].firstIndex(of: "'") else { return nil }
        return String(s[s.index(after: a)..<b])
    }

    /// Rewrites mosquitto's argument forms into what the parser reads.
    ///
    /// - `-D command name value` (and `-D command user-property key value`) becomes one argument; as in mosquitto,
    ///   it also switches to MQTT 5 unless a later `-V` says otherwise.
    /// - `-P`/`--pw` as the very last argument asks for the password on the terminal.
    /// - `--help` and `--version` anywhere win.
    static func prepare<T: MosquittoTool>(_ arguments: [String], tool: T.Type) throws -> [String] {
        if arguments.contains("--help") { return ["--help"] }
        var out: [String] = []
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--version" { return ["--version"] }
            if a == "-D" || a == "--property" {
                guard i + 3 < arguments.count else {
                    throw CLIError.usage("Error: --property argument given but not enough arguments specified.")
                }
                var words = Array(arguments[(i + 1)...(i + 3)])
                if words[1].lowercased() == "user-property" {
                    guard i + 4 < arguments.count else {
                        throw CLIError.usage("Error: --property argument given but not enough arguments specified.")
                    }
                    words.append(arguments[i + 4])
                }
                out.append("-D")
                out.append(words.joined(separator: "\u{1F}"))
                out.append(contentsOf: ["-V", "5"])
                i += 1 + words.count
                continue
            }
            if (a == "-P" || a == "--pw") && i == arguments.count - 1 {
                if isatty(0) != 0 || isatty(2) != 0 {
                    out.append("--password-prompt")
                    i += 1
                    continue
                }
                throw CLIError.usage("Error: -P argument given but no password specified.")
            }
            out.append(a)
            if valueOptions.contains(a) && i + 1 < arguments.count {
                out.append(arguments[i + 1])
                i += 2
                continue
            }
            i += 1
        }
        return out
    }
}
