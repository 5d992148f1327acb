#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a `pthread_mutex_t`, for every module of the toolkit.
///
/// Used instead of `Synchronization.Mutex` so that ThreadSanitizer sees every acquire and release: it does not
/// see the futex-based `Mutex` inside the uninstrumented standard library and reports false races through it,
/// which would make `swift test --sanitize=thread` useless. Keep critical sections short: never call into
/// libmosquitto, resume a continuation or block inside `withLock`.
package final class LockedValue<Value>: @unchecked Sendable {
    @usableFromInline var value: Value
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    /// Creates the lock holding `value`.
    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        #if os(Linux)
        // Adaptive: spin briefly before sleeping. The critical sections are a few dictionary operations, and the
        // publisher and the network thread take this lock for every message; sleeping and waking cost a futex
        // system call each time.
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        #endif
        let rc = pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    @inlinable
    package func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "pthread_mutex_lock failed (\(rc))")
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
