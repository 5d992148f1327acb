#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts a detached POSIX thread that runs `body` once.
///
/// For long-lived threads that block in C (libmosquitto's network loop, child-process waits), which must stay off
/// Swift's cooperative thread pool. Uses `pthread_create` directly, so the modules that need a thread do not
/// depend on Foundation, and ThreadSanitizer sees the hand-over of `body` to the new thread.
///
/// - Parameters:
///   - stackSize: The thread's stack size in bytes.
///   - body: The work; the thread ends when it returns.
/// - Returns: The `pthread_create` error number, or 0 when the thread started.
@discardableResult
package func startDetachedThread(stackSize: Int = 1 << 20, _ body: @escaping @Sendable () -> Void) -> Int32 {
    final class Start {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let start = Unmanaged.passRetained(Start(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setstacksize(&attributes, stackSize)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    #if canImport(Darwin)
    var thread: pthread_t?
    #else
    var thread = pthread_t()
    #endif
    let rc = pthread_create(&thread, &attributes, { argument in
        guard let argument else { return nil }
        Unmanaged<Start>.fromOpaque(argument).takeRetainedValue().body()
        return nil
    }, start)
    if rc != 0 { Unmanaged<Start>.fromOpaque(start).release() }
    return rc
}
