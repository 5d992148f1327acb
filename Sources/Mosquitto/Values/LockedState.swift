#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a `pthread_mutex_t`.
///
/// The library uses this instead of `Synchronization.Mutex` so that ThreadSanitizer sees every acquire and
/// release (it does not see the futex-based `Mutex` of the non-instrumented standard library, and reports
/// false races through it), which keeps `swift test --sanitize=thread` meaningful for the callback boundary.
/// Never call into libmosquitto, resume a continuation or block inside `withLock`.
final class LockedState<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ERRORCHECK))
        let rc = pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "re-entrant or failed lock (\(rc)): a lock was taken again inside withLock")
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
