#ifndef MOSQUITTO_IO_H
#define MOSQUITTO_IO_H
#include <stddef.h>

/// Batched socket I/O for libmosquitto (see mosquitto_io.c for how, and the Mosquitto module's article
/// "libmosquitto 2.0.11 workarounds", section "Socket batching", for why).
///
/// libmosquitto reads every packet with at least three `read` calls (one byte of command, the length bytes, the
/// body) and writes every packet with its own `write`, plus one byte to an internal socket pair per packet it
/// queues. Once installed, libmosquitto's own calls of `read`, `write` and `close` go through this file: for a
/// connection attached to a `mosq_io`, reads are served from a 64 KiB buffer filled by one `read`, writes collect
/// in a 64 KiB buffer that the network thread sends with one `send` per loop pass, and the socket pair's wake-up
/// byte, which nothing reads in this design, is not written. Descriptors that are not attached pass straight
/// through, so other libmosquitto users in the process are unaffected.
typedef struct mosq_io mosq_io;

/// Points libmosquitto's calls of read, write and close at this file's functions, once per process. Returns 0
/// when the redirection is in place and passed its self-check (every slot holds its interceptor, and a round trip
/// through a socket pair behaves), -1 when it is not (unsupported platform, libmosquitto linked statically,
/// unexpected layout, a slot that cannot be written, a failed self-check): every slot holds what it held before
/// then, and attached connections simply see no batching. Thread-safe. It does not look at libmosquitto's
/// version: the caller decides whether the version is one the redirection was tested against.
int mosq_io_install(void);

/// Why `mosq_io_install` returned -1 (a constant, readable sentence), or NULL once it returned 0. Call after it.
const char *mosq_io_install_failure(void);

/// A connection's buffers. Owned by one client; used by its network thread only, apart from create/destroy.
mosq_io *mosq_io_create(void);
void mosq_io_destroy(mosq_io *io);

/// Makes `io` the one the calling thread's libmosquitto calls use (the client's network thread, at its start);
/// NULL unbinds.
void mosq_io_bind_thread(mosq_io *io);

/// Tells `io` the descriptor of the connection libmosquitto just opened (excluded from socket-pair detection), and
/// empties the buffers. Call after every `mosquitto_connect*` on the network thread; -1 when there is none.
void mosq_io_set_connection(mosq_io *io, int fd);

/// Starts buffering the connection's reads and writes (after CONNACK, plain TCP or Unix socket only: TLS reads and
/// writes go through OpenSSL, not through these functions). Returns 0, or -1 when the redirection is not (or no
/// longer) in place, and the connection then runs unbuffered.
int mosq_io_attach(mosq_io *io);

/// How long libmosquitto's `close` of the connection waits for buffered output to leave a full socket (0, the
/// default, tries once without waiting). Set before a graceful DISCONNECT.
void mosq_io_set_linger(mosq_io *io, int milliseconds);

/// Stops buffering and drops whatever is buffered (the connection is gone). Idempotent.
void mosq_io_detach(mosq_io *io);

/// Sends buffered output without blocking. Returns 0 when nothing is left, 1 when the socket took only part
/// (wait for POLLOUT), -1 on a socket error (errno set; the buffered output is dropped: the connection is lost,
/// and libmosquitto's next read reports it).
int mosq_io_flush(mosq_io *io);

/// Bytes waiting to be sent, and bytes read from the socket that libmosquitto has not consumed yet.
size_t mosq_io_pending_output(const mosq_io *io);
size_t mosq_io_pending_input(const mosq_io *io);

/// Counters for tests, readable from any thread: socket-pair bytes not written, and the `read`s and `send`s made
/// on attached connections.
typedef struct {
    unsigned long long wakeups_skipped;
    unsigned long long socket_reads;
    unsigned long long socket_sends;
} mosq_io_counters;
mosq_io_counters mosq_io_get_counters(const mosq_io *io);

/// What `mosq_io_rehearse_install_for_testing` saw.
typedef struct {
    int result;                       // what an installation would have returned: 0, or -1
    int slots;                        // libmosquitto's slots for read, write and close (3 to 6)
    int patched;                      // slots patched before the patch stopped (all of them when it did not fail)
    int restored;                     // 1: afterwards every slot held exactly what it held before the rehearsal
    unsigned long long standin_calls; // calls that went through the stand-ins while they were in the slots
    const char *failure;              // why the rehearsed installation failed, NULL when it succeeded
} mosq_io_install_rehearsal;

/// TESTS ONLY. Runs the installation's steps once more on libmosquitto's slots, under the same lock and with the
/// same code (find the slots, patch all or nothing, self-check, roll back on failure), but with stand-ins that
/// call the installed functions, so that other threads' libmosquitto calls behave exactly as before meanwhile;
/// then it puts back whatever the slots held (also after a successful rehearsal). `fail_at_slot` >= 0 makes the
/// write of that slot (0-based) fail, as a refused `mprotect` would; -1 injects nothing. `sabotage`: 0 none,
/// 1 puts one slot back between the patch and the self-check (as a racing lazy-binding resolution would),
/// 2 makes reads through the stand-ins on the calling thread return a wrong first byte.
mosq_io_install_rehearsal mosq_io_rehearse_install_for_testing(int fail_at_slot, int sabotage);
#endif
