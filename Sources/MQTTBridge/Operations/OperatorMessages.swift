import Logging
import MosquittoPOSIX
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A failure of the bridge as a whole, worded for the operator: what failed, where, and what to do.
public struct BridgeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure.
    public enum Kind: Sendable, Hashable {
        /// A feed endpoint or the metrics listener could not bind its address.
        case cannotListen
        /// The broker refused ``BridgeConfiguration/authFailureLimit`` connection attempts in a row.
        case brokerRefused
    }
    /// What kind of failure.
    public var kind: Kind
    /// The sentence printed by `mqtt-bridge` (after `Error: `).
    public var message: String
    /// The `errno` of a failed `bind`, when there was one.
    public var systemErrno: Int32?

    /// Creates an error.
    public init(_ kind: Kind, _ message: String, systemErrno: Int32? = nil) {
        self.kind = kind
        self.message = message
        self.systemErrno = systemErrno
    }

    public var description: String { message }

    /// A `bind` that failed: `"<what>: cannot listen on <address>: <reason> (<what to do>)"` instead of NIO's
    /// `bind(descriptor:ptr:bytes:): Address already in use) (errno: 98)`.
    static func cannotListen(_ what: String, on address: SocketAddressSpec, protocol proto: String? = nil,
                             error: any Error) -> BridgeError {
        let place = proto.map { "\(address) (\($0))" } ?? address.description
        let reason: String
        var code: Int32?
        switch error {
        case let e as IOError:
            code = e.errnoCode
            switch e.errnoCode {
            case EADDRINUSE:
                reason = "address already in use (another process has this port; pick another port or stop it)"
            case EADDRNOTAVAIL:
                reason = "address not available (no network interface of this machine has that IP address; use 127.0.0.1, 0.0.0.0 or one of its own addresses)"
            case EACCES:
                reason = "permission denied (ports below 1024 need privileges; pick a port of 1024 or above)"
            default:
                reason = String(cString: strerror(e.errnoCode)).lowercased()
            }
        case is SocketAddressError:
            reason = "cannot resolve the host name '\(address.host)' (use an IP address, or a name this machine resolves)"
        default:
            reason = "\(error)"
        }
        return BridgeError(.cannotListen, "\(what): cannot listen on \(place): \(reason)", systemErrno: code)
    }
}

extension SocketAddress {
    /// `127.0.0.1:17010`, `[::1]:17010`, or a socket path: how the bridge writes an address in logs (NIO's own
    /// description is `[IPv4]127.0.0.1/127.0.0.1:17010`).
    var displayString: String {
        switch self {
        case .v4:
            return "\(ipAddress ?? "?"):\(port ?? 0)"
        case .v6:
            return "[\(ipAddress ?? "?")]:\(port ?? 0)"
        case .unixDomainSocket:
            return pathname ?? "unix socket"
        }
    }
}

extension DefaultStringInterpolation {
    /// Every `"\(address)"` of a `SocketAddress` in this module (log lines above all) reads `127.0.0.1:17010`,
    /// not NIO's `[IPv4]127.0.0.1/127.0.0.1:17010`. Use `address.description` for NIO's form.
    mutating func appendInterpolation(_ address: SocketAddress) {
        appendLiteral(address.displayString)
    }
}

/// Logs the first of a burst of similar events at once and sums up the rest: at most one summary per `window`.
///
/// `record(_:)` from any thread: the first event of a quiet period is logged as it comes (`first`); the ones in
/// the next `window` are only counted, and when the window ends a summary with their number is logged (`summary`)
/// and a new window starts. A window with nothing in it ends the burst.
final class BurstLogger: Sendable {
    private struct State {
        var windowOpen = false
        var suppressed = 0
        var lastDetail = ""
    }
    private let state = LockedValue(State())
    private let window: Duration
    private let eventLoop: any EventLoop
    private let first: @Sendable (_ detail: String) -> Void
    private let summary: @Sendable (_ count: Int, _ lastDetail: String) -> Void

    init(window: Duration = .seconds(10), eventLoop: any EventLoop, first: @escaping @Sendable (String) -> Void,
         summary: @escaping @Sendable (Int, String) -> Void) {
        self.window = window
        self.eventLoop = eventLoop
        self.first = first
        self.summary = summary
    }

    func record(_ detail: String) {
        let logNow = state.withLock { s -> Bool in
            if s.windowOpen {
                s.suppressed += 1
                s.lastDetail = detail
                return false
            }
            s.windowOpen = true
            return true
        }
        if logNow {
            first(detail)
            scheduleWindowEnd()
        }
    }

    /// Logs the summary of what is counted now, if anything (when the route stops).
    func flush() {
        let (count, detail) = state.withLock { s -> (Int, String) in
            defer { s.suppressed = 0 }
            return (s.suppressed, s.lastDetail)
        }
        if count > 0 { summary(count, detail) }
    }

    private func scheduleWindowEnd() {
        eventLoop.scheduleTask(in: TimeAmount(window)) { [self] in
            let (count, detail) = state.withLock { s -> (Int, String) in
                let c = s.suppressed
                s.suppressed = 0
                // Nothing happened in this window: the burst is over, the next event is logged at once.
                if c == 0 { s.windowOpen = false }
                return (c, s.lastDetail)
            }
            if count > 0 {
                summary(count, detail)
                scheduleWindowEnd()
            }
        }
    }
}
