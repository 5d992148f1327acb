import Foundation
import MosquittoPOSIX

/// Sanitizer runs are 5-15x slower: scripts/sanitize.sh sets MOSQUITTO_TEST_TIME_SCALE so that waits for
/// something to happen stretch accordingly (the conditions themselves stay as strict).
package let testTimeScale: Int = Int(ProcessInfo.processInfo.environment["MOSQUITTO_TEST_TIME_SCALE"] ?? "") ?? 1

/// Set by scripts/test.sh and scripts/sanitize.sh for the tests that need a `swift test` process of their own.
package let processAlone = ProcessInfo.processInfo.environment["MOSQUITTO_PROCESS_ALONE"] == "1"

/// Polls `condition` every 20 ms until it holds or `timeout` (times ``testTimeScale``) passes.
package func eventually(timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout * testTimeScale
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// A lock-protected value that closures and tasks can share (a ``LockedValue`` whose reads are copies).
package final class Locked<T: Sendable>: Sendable {
    private let m: LockedValue<T>
    package init(_ value: T) { m = LockedValue(value) }
    @discardableResult
    package func withLock<R: Sendable>(_ body: (inout T) throws -> R) rethrows -> R { try m.withLock(body) }
    package var value: T { m.withLock { $0 } }
}

/// Runs `body` on a thread of its own and returns what it returns (or throws what it throws).
///
/// For tests that compute synchronously for seconds (tens of seconds under ThreadSanitizer): on the cooperative
/// pool, which has one thread per core, two such tests block every other test's tasks in the parallel suite, and
/// their waits then look like hangs. Record issues after this returns, not inside `body`.
package func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
        // 8 MiB, as a main thread has: the bodies recurse (the MessagePack fuzz replay), and under a sanitizer
        // frames are several times larger than in a normal build.
        let rc = startDetachedThread(stackSize: 8 << 20) { c.resume(with: Result { try body() }) }
        if rc != 0 { c.resume(throwing: POSIXError(POSIXErrorCode(rawValue: rc) ?? .EAGAIN)) }
    }
}
