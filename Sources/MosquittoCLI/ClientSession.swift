import MosquittoSync
import Dispatch
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// Connecting, and turning the library's errors into mosquitto's messages and exit codes.
enum ClientSession {
    /// Creates a client and connects; every failure becomes a ``CLIError`` with mosquitto's exit code.
    /// - Parameter prepare: runs on the client before it connects (to open a stream that must see the very
    ///   first messages, such as those a resumed session delivers right after the CONNACK).
    static func connect(_ configuration: MQTTConfiguration, prepare: (MQTTClient) -> Void = { _ in }) async throws -> MQTTClient {
        let client: MQTTClient
        do {
            client = try MQTTClient(configuration: configuration)
        } catch {
            throw setupError(error)
        }
        prepare(client)
        do {
            try await client.connect()
        } catch {
            await client.shutdown()
            throw connectError(error, configuration: configuration)
        }
        return client
    }

    /// An error while creating the client (TLS files, options).
    static func setupError(_ error: any Error) -> CLIError {
        guard let e = error as? MQTTError else { return CLIError("Error: \(error)") }
        switch e.code {
        // The engine messages are mosquitto's own words, printed as they are.
        case .tls where e.message.hasPrefix("Problem setting TLS engine") || e.message.hasPrefix("Problem setting key form"):
            return CLIError("Error: \(e.message)")
        case .tls: return CLIError("Error: Problem setting TLS options: \(e.message)")
        default: return CLIError("Error: \(e.message)")
        }
    }

    /// An error from `connect()`: the CONNACK code for refusals, 1 for everything that failed before.
    static func connectError(_ error: any Error, configuration: MQTTConfiguration) -> CLIError {
        guard let e = error as? MQTTError else { return CLIError("Error: \(error)") }
        if let reason = e.reasonCode, [.connectionRefused, .badCredentials, .notAuthorized].contains(e.code) {
            return CLIError("Connection error: \(connackText(reason, v5: configuration.protocolVersion == .v5))", exitCode: Int32(reason))
        }
        switch e.code {
        case .connectionFailed:
            if e.systemErrno == ECONNREFUSED {
                return CLIError("Error: Connection refused: nothing listens on \(configuration.endpoint); check -h/-p (or --unix) and that the broker runs.")
            }
            return CLIError("Error: \(e.message)")
        case .tls:
            return CLIError("Error: A TLS error occurred: check --cafile/--capath, --cert/--key and that the broker's certificate matches -h. (\(e.message))")
        default:
            return CLIError("Error: \(e.message)")
        }
    }

    /// The text mosquitto prints for a refused CONNACK.
    static func connackText(_ code: UInt8, v5: Bool) -> String {
        if !v5 {
            switch code {
            case 1: return "Connection Refused: unacceptable protocol version."
            case 2: return "Connection Refused: identifier rejected."
            case 3: return "Connection Refused: broker unavailable."
            case 4: return "Connection Refused: bad user name or password."
            case 5: return "Connection Refused: not authorised."
            default: return "Connection Refused: unknown reason."
            }
        }
        let text = reasonString(code)
        if code == 132 { return text + ". Try connecting to an MQTT v5 broker, or use MQTT v3.x mode." }
        return text
    }

    /// libmosquitto's `mosquitto_reason_string` for the codes a broker sends.
    static func reasonString(_ code: UInt8) -> String {
        switch code {
        case 0: return "Success"
        case 128: return "Unspecified error"
        case 129: return "Malformed Packet"
        case 130: return "Protocol Error"
        case 131: return "Implementation specific error"
        case 132: return "Unsupported Protocol Version"
        case 133: return "Client Identifier not valid"
        case 134: return "Bad User Name or Password"
        case 135: return "Not authorized"
        case 136: return "Server unavailable"
        case 137: return "Server busy"
        case 138: return "Banned"
        case 139: return "Server shutting down"
        case 140: return "Bad authentication method"
        case 141: return "Keep Alive timeout"
        case 142: return "Session taken over"
        case 143: return "Topic Filter invalid"
        case 144: return "Topic Name invalid"
        case 145: return "Packet Identifier in use"
        case 146: return "Packet Identifier not found"
        case 147: return "Receive Maximum exceeded"
        case 148: return "Topic Alias invalid"
        case 149: return "Packet too large"
        case 150: return "Message rate too high"
        case 151: return "Quota exceeded"
        case 152: return "Administrative action"
        case 153: return "Payload format invalid"
        case 154: return "Retain not supported"
        case 155: return "QoS not supported"
        case 156: return "Use another server"
        case 157: return "Server moved"
        case 158: return "Shared Subscriptions not supported"
        case 159: return "Connection rate exceeded"
        case 160: return "Maximum connect time"
        case 161: return "Subscription identifiers not supported"
        case 162: return "Wildcard Subscriptions not supported"
        default: return "Unknown reason"
        }
    }

    /// mosquitto's exit code (a `mosq_err_t`) for an error after the connection was made.
    static func exitCode(for e: MQTTError) -> Int32 {
        switch e.code {
        case .protocolError: return 2
        case .invalidArgument, .invalidTopic, .invalidFilter: return 3
        case .notConnected: return 4
        case .connectionRefused, .badCredentials, .notAuthorized:
            if let r = e.reasonCode { return Int32(r) }
            return 5
        case .connectionLost, .gaveUp, .shutDown, .connectionFailed: return 7
        case .tls: return 8
        case .payloadTooLarge: return 9
        case .timeout: return 27
        case .library(let rc): return rc
        default: return 13
        }
    }

    /// The error that ended a client that gave up, as a ``CLIError``.
    static func runtimeError(_ error: any Error) -> CLIError {
        guard let e = error as? MQTTError else { return CLIError("Error: \(error)") }
        return CLIError("Error: \(e.message)", exitCode: exitCode(for: e))
    }
}

/// SIGINT/SIGTERM as an async event that any number of tasks can wait for.
final class SignalWatcher: @unchecked Sendable {  // `sources` is written once in init and only cancelled after.
    private struct State {
        var received: Int32?
        var waiters: [UInt64: CheckedContinuation<Int32?, Never>] = [:]
        var nextID: UInt64 = 0
        var cancelled = false
    }
    private let state = LockedValue(State())
    private var sources: [any DispatchSourceSignal] = []

    init(_ signals: [Int32]) {
        for sig in signals {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [weak self] in self?.fire(sig) }
            source.resume()
            sources.append(source)
        }
    }

    private func fire(_ sig: Int32) {
        let waiters = state.withLock { s -> [CheckedContinuation<Int32?, Never>] in
            if s.received == nil { s.received = sig }
            let w = Array(s.waiters.values)
            s.waiters.removeAll()
            return w
        }
        for w in waiters { w.resume(returning: sig) }
    }

    /// Waits for a signal; nil when the waiting task is cancelled or the watcher is cancelled.
    func next() async -> Int32? {
        let id = state.withLock { s -> UInt64 in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Int32?, Never>) in
                let immediate = state.withLock { s -> Int32?? in
                    if let r = s.received { return .some(r) }
                    if s.cancelled || Task.isCancelled { return .some(nil) }
                    s.waiters[id] = c
                    return .none
                }
                if case .some(let r) = immediate { c.resume(returning: r) }
            }
        } onCancel: {
            let c = state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume(returning: nil)
        }
    }

    func cancel() {
        for s in sources { s.cancel() }
        let waiters = state.withLock { s -> [CheckedContinuation<Int32?, Never>] in
            s.cancelled = true
            let w = Array(s.waiters.values)
            s.waiters.removeAll()
            return w
        }
        for w in waiters { w.resume(returning: nil) }
    }
}
