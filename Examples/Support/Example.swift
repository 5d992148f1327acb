#if canImport(Glibc)
@preconcurrency import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
@preconcurrency import Darwin
#endif

import Foundation
import Logging
import Mosquitto
import MosquittoBroker

/// What every example shares, so that each example's own file is only about its messaging pattern:
/// `--broker HOST:PORT` and `--help`, a private mosquitto when no broker is given, quiet logging, and a
/// clear exit status (0 when the example's own check passed, 1 with a `FAILED:` line when it did not).
public enum Example {
    /// Where the broker listens.
    public struct Broker: Sendable {
        public var host: String
        public var port: Int

        /// A client configuration for this broker with a short keepalive and quiet logging.
        public func configuration(clientID: String? = nil) -> MQTTConfiguration {
            var c = MQTTConfiguration(host: host, port: port, clientID: clientID)
            c.keepAlive = 10
            var logger = Logger(label: "example.client")
            logger.logLevel = .warning
            c.logger = logger
            return c
        }

        /// `HOST:PORT`, as the examples print it and as `--broker` takes it.
        public var address: String { "\(host):\(port)" }
    }

    /// Runs an example: parses `--broker HOST:PORT` and `--help`, starts a private broker unless one was given,
    /// runs `body` with the broker and the remaining arguments, stops the broker, and exits.
    ///
    /// - Parameters:
    ///   - name: the executable's name, for messages.
    ///   - summary: one paragraph for `--help`.
    ///   - body: the example. Throw ``CheckFailed`` (or any error) to exit with status 1.
    public static func main(_ name: String, summary: String,
                            _ body: @Sendable (Broker, [String]) async throws -> Void) async -> Never {
        var external: Broker?
        var rest: [String] = []
        var args = Array(CommandLine.arguments.dropFirst())[...]
        while let a = args.popFirst() {
            switch a {
            case "--broker":
                guard let value = args.popFirst(), let b = parseBroker(value) else {
                    fail(name, "--broker takes HOST:PORT, for example --broker 127.0.0.1:1883")
                }
                external = b
            case "-h", "--help":
                print("""
                \(name): \(summary)

                Usage: swift run \(name) [--broker HOST:PORT]

                  --broker HOST:PORT   use this broker instead of starting a private mosquitto
                """)
                exit(0)
            default:
                rest.append(a)
            }
        }
        setvbuf(stdout, nil, _IOLBF, 0)  // line-buffered even when piped, so output interleaves in order
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .warning
            return h
        }

        var broker: MosquittoBroker?
        let address: Broker
        do {
            if let external {
                address = external
                print("Using the broker at \(external.address)")
            } else {
                let b = try MosquittoBroker()
                try await b.start()
                broker = b
                address = Broker(host: b.host, port: b.port)
                print("Started a private mosquitto on \(address.address)")
            }
        } catch {
            fail(name, "could not start a private mosquitto: \(error)")
        }

        var failure: (any Error)?
        do {
            try await body(address, rest)
        } catch {
            failure = error
        }
        if let broker {
            await broker.shutdown()
            print("Stopped the private broker.")
        }
        if let failure {
            fail(name, "\(failure)")
        }
        exit(0)
    }

    /// Prints `FAILED: <message>` to standard output and standard error and exits with status 1.
    public static func fail(_ name: String, _ message: String) -> Never {
        print("FAILED: \(message)")
        FileHandle.standardError.write(Data("\(name): \(message)\n".utf8))
        exit(1)
    }

    static func parseBroker(_ value: String) -> Broker? {
        guard let colon = value.lastIndex(of: ":"), let port = Int(value[value.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        let host = String(value[..<colon])
        return Broker(host: host.isEmpty ? "127.0.0.1" : host, port: port)
    }

    /// A built executable of this package (`mqtt-bridge`, `mqtt-rr`, or an example), found next to the running
    /// executable. `swift build` builds them all.
    public static func sibling(_ executable: String) throws -> String {
        var directories: [String] = []
        if let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            directories.append((me as NSString).deletingLastPathComponent)
        }
        let argv0 = CommandLine.arguments[0]
        if argv0.contains("/") {
            let absolute = argv0.hasPrefix("/") ? argv0 : FileManager.default.currentDirectoryPath + "/" + argv0
            directories.append((absolute as NSString).deletingLastPathComponent)
        }
        for d in directories where FileManager.default.isExecutableFile(atPath: d + "/" + executable) {
            return d + "/" + executable
        }
        throw CheckFailed("\(executable) was not found next to this example (\(directories.first ?? argv0)). "
                          + "Build every executable first with `swift build`, then run the example again.")
    }
}

/// An example's own check failed: the message says what was expected and what happened.
public struct CheckFailed: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Throws ``CheckFailed`` with `message` unless `condition` holds.
public func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw CheckFailed(message()) }
}

/// Waits until `condition` holds, polling every 20 ms; false when `timeout` passed first.
public func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Pads `text` on the right to `width` characters, for aligned columns.
public func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

/// A value that tasks share, guarded by a lock.
public final class Locked<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    public init(_ value: Value) { stored = value }
    /// A copy of the value.
    public var value: Value { lock.withLock { stored } }
    /// Reads or changes the value under the lock.
    @discardableResult
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        try lock.withLock { try body(&stored) }
    }
}
