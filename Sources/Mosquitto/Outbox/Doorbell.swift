import MosquittoPOSIX

/// A wake-up signal: `ring()` from any thread, `wait()` from one task (a ring before the wait is not lost).
package final class Doorbell: Sendable {
    private let state = LockedValue<(rung: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    package init() {}

    package func ring() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.rung = true
            return nil
        }
        w?.resume()
    }

    /// Returns when rung since the last wait (at once if it was).
    package func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.rung {
                    s.rung = false
                    return true
                }
                s.waiter = c
                return false
            }
            if now { c.resume() }
        }
    }
}
