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

    @inline(__always)
    func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "pthread_mutex_lock failed (\(rc))")
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
