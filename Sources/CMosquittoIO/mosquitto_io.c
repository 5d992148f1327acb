// Batched socket I/O for libmosquitto. See include/mosquitto_io.h for the interface, and the Mosquitto module's
// article "libmosquitto 2.0.11 workarounds" (LibmosquittoWorkarounds.md), section "Socket batching", for why.
//
// How: libmosquitto 2.0 has no I/O hooks, but it reaches `read`, `write` and `close` through its own global
// offset table. `mosq_io_install` finds the library in memory (`dl_iterate_phdr`, by its name libmosquitto.so.*),
// walks its dynamic relocations and points those three slots at the functions below: every slot or none (a slot
// that cannot be written puts the ones already patched back), and only after a self-check of the result (each
// slot holds its interceptor, and a round trip through a socket pair behaves) does it report success; a failed
// check puts every slot back too. Only libmosquitto's calls are affected: every other object in the process keeps
// its own slots. The Swift side (`SocketBatching`) calls it only for the libmosquitto versions it was tested
// against.
//
// Who uses what (the invariants, by name):
// - One owner thread. A `mosq_io` belongs to one client and is touched only by that client's network thread,
//   which binds it with `mosq_io_bind_thread` (thread-local). The client calls libmosquitto's socket functions
//   (loop_read, loop_write, loop_misc, connect, destroy) only there, and it sets threaded mode
//   (`mosquitto_threaded_set`), so a packet queued on another thread is never written by that thread.
// - Pass-through elsewhere. On a thread with no bound `mosq_io`, and for any descriptor other than the bound one's
//   connection and socket pair, the interceptors call the real functions (apart from skipping a known socket
//   pair's wake-up byte, see "The socket pair"): nothing changes for other libmosquitto users.
// - Buffered reads only while attached (between CONNACK and the end of the connection). A read served from the
//   buffer leaves errno alone, as libmosquitto's loop_read expects of a successful read.
// - Buffered writes only while attached. The network thread sends the buffer at the end of each pass and before
//   it sleeps; `close` of the connection sends what is left (waiting up to the linger time for a full socket: set
//   for a graceful DISCONNECT, zero after an error), so a DISCONNECT written last still leaves.
// - The socket pair. libmosquitto writes one byte to it for every packet it queues, to wake `mosquitto_loop`'s
//   select. This client never calls mosquitto_loop or loop_start, so nothing reads the pair; on the network
//   thread the byte is dropped once the descriptor is confirmed to be a Unix stream socket other than the
//   connection, and the descriptor is remembered process-wide so that other threads drop it too. libmosquitto's
//   `close` of the descriptor forgets it first. Pairs of libmosquitto handles that are not this client's are never
//   learnt, so their bytes are written as usual.
// - Slots change only under `patch_lock`: the installation, the rehearsals of the tests, and `mosq_io_attach`'s
//   check that the slots still hold the interceptors all take it, so a connection never starts buffering while
//   the slots are being rewritten.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "mosquitto_io.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#define MOSQ_IO_SUPPORTED 1
#else
#define MOSQ_IO_SUPPORTED 0
#endif

enum { IO_BUFFER = 65536 };

struct mosq_io {
    int conn_fd;       // libmosquitto's connection socket, -1 if none
    int pair_fd;       // confirmed socket-pair write end, -1 if not known yet
    int attached;      // buffering conn_fd
    int linger_ms;     // how long close waits for buffered output to leave
    size_t in_pos, in_len;
    size_t out_len;
    mosq_io_counters counters;
    unsigned char in[IO_BUFFER];
    unsigned char out[IO_BUFFER];
};

static __thread mosq_io *bound_io;

// Socket-pair write ends confirmed by the network threads, so that a packet queued on another thread (a publish
// from a task on the cooperative pool) skips the wake-up byte too: `pair_owner[fd]` is the client whose pair `fd`
// is (for its counters), NULL for any other descriptor. Allocated at the first pair; descriptors from
// PAIR_TABLE_SIZE up are not remembered (their byte is written, as without batching). An entry is cleared by
// libmosquitto's `close` of that descriptor, before the descriptor is released. The client outlives its entry:
// libmosquitto closes the pair in mosquitto_destroy, and the client destroys the handle only once no other thread
// is inside a libmosquitto call (ClientCore's gate).
enum { PAIR_TABLE_SIZE = 65536 };
static mosq_io **pair_owner;

static void remember_pair(int fd, mosq_io *io) {
    if (fd < 0 || fd >= PAIR_TABLE_SIZE) return;
    mosq_io **table = __atomic_load_n(&pair_owner, __ATOMIC_ACQUIRE);
    if (!table) {
        mosq_io **fresh = calloc(PAIR_TABLE_SIZE, sizeof(mosq_io *));  // untouched pages cost no memory
        if (!fresh) return;
        mosq_io **expected = NULL;
        if (__atomic_compare_exchange_n(&pair_owner, &expected, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            table = fresh;
        } else {
            free(fresh);
            table = expected;
        }
    }
    __atomic_store_n(&table[fd], io, __ATOMIC_SEQ_CST);
}

static void forget_pair(int fd) {
    mosq_io **table = __atomic_load_n(&pair_owner, __ATOMIC_ACQUIRE);
    if (table && fd >= 0 && fd < PAIR_TABLE_SIZE && __atomic_load_n(&table[fd], __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&table[fd], NULL, __ATOMIC_SEQ_CST);
    }
}

/// The client whose socket pair `fd` is, or NULL.
static mosq_io *known_pair_owner(int fd) {
    mosq_io **table = __atomic_load_n(&pair_owner, __ATOMIC_ACQUIRE);
    if (!table || fd < 0 || fd >= PAIR_TABLE_SIZE) return NULL;
    return __atomic_load_n(&table[fd], __ATOMIC_SEQ_CST);
}

mosq_io *mosq_io_create(void) {
    mosq_io *io = malloc(sizeof(mosq_io));
    if (!io) return NULL;
    io->conn_fd = -1;
    io->pair_fd = -1;
    io->attached = 0;
    io->linger_ms = 0;
    io->in_pos = io->in_len = 0;
    io->out_len = 0;
    memset(&io->counters, 0, sizeof io->counters);
    return io;
}

void mosq_io_destroy(mosq_io *io) {
    // libmosquitto's close of the pair has cleared its entry already; this only guards against a pair closed some
    // other way.
    mosq_io **table = __atomic_load_n(&pair_owner, __ATOMIC_ACQUIRE);
    if (table && io->pair_fd >= 0 && io->pair_fd < PAIR_TABLE_SIZE) {
        mosq_io *expected = io;
        __atomic_compare_exchange_n(&table[io->pair_fd], &expected, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    free(io);
}

void mosq_io_bind_thread(mosq_io *io) { bound_io = io; }

void mosq_io_set_connection(mosq_io *io, int fd) {
    // A new connection starts with empty buffers, whatever happened to the last one.
    mosq_io_detach(io);
    io->conn_fd = fd;
    if (io->pair_fd == fd) io->pair_fd = -1;
}

void mosq_io_set_linger(mosq_io *io, int milliseconds) { io->linger_ms = milliseconds; }

static int slots_intact(void);

int mosq_io_attach(mosq_io *io) {
    io->in_pos = io->in_len = 0;
    io->out_len = 0;
    io->attached = io->conn_fd >= 0 && slots_intact();
    return io->attached ? 0 : -1;
}

void mosq_io_detach(mosq_io *io) {
    io->attached = 0;
    io->in_pos = io->in_len = 0;
    io->out_len = 0;
}

size_t mosq_io_pending_output(const mosq_io *io) { return io->out_len; }
size_t mosq_io_pending_input(const mosq_io *io) { return io->in_len - io->in_pos; }
mosq_io_counters mosq_io_get_counters(const mosq_io *io) {
    mosq_io_counters c;
    c.wakeups_skipped = __atomic_load_n(&io->counters.wakeups_skipped, __ATOMIC_RELAXED);
    c.socket_reads = __atomic_load_n(&io->counters.socket_reads, __ATOMIC_RELAXED);
    c.socket_sends = __atomic_load_n(&io->counters.socket_sends, __ATOMIC_RELAXED);
    return c;
}

int mosq_io_flush(mosq_io *io) {
    if (io->out_len == 0) return 0;  // always the case while detached (detaching empties the buffers)
    for (;;) {
        ssize_t n = send(io->conn_fd, io->out, io->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            __atomic_fetch_add(&io->counters.socket_sends, 1, __ATOMIC_RELAXED);
            size_t left = io->out_len - (size_t)n;
            if (left > 0) memmove(io->out, io->out + n, left);
            io->out_len = left;
            return left > 0 ? 1 : 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
        io->out_len = 0;
        return -1;
    }
}

/// Sends what is left before the connection closes, waiting for a full socket up to `timeout_ms` in total.
static void flush_before_close(mosq_io *io, int timeout_ms) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (io->out_len > 0) {
        int rc = mosq_io_flush(io);
        if (rc <= 0 || timeout_ms <= 0) return;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= timeout_ms) return;
        struct pollfd p = { .fd = io->conn_fd, .events = POLLOUT, .revents = 0 };
        if (poll(&p, 1, (int)(timeout_ms - elapsed)) <= 0) return;
    }
}

// MARK: The interceptors (reached only from libmosquitto)

static ssize_t mosq_io_read(int fd, void *buf, size_t count) {
    mosq_io *io = bound_io;
    if (!io || !io->attached || fd != io->conn_fd) return read(fd, buf, count);
    if (io->in_pos < io->in_len) {
        size_t n = io->in_len - io->in_pos;
        if (n > count) n = count;
        memcpy(buf, io->in + io->in_pos, n);
        io->in_pos += n;
        if (io->in_pos == io->in_len) io->in_pos = io->in_len = 0;
        return (ssize_t)n;
    }
    __atomic_fetch_add(&io->counters.socket_reads, 1, __ATOMIC_RELAXED);
    // A large body goes straight to libmosquitto's buffer.
    if (count >= IO_BUFFER) return read(fd, buf, count);
    ssize_t n = read(fd, io->in, IO_BUFFER);
    if (n <= 0) return n;
    size_t give = (size_t)n < count ? (size_t)n : count;
    memcpy(buf, io->in, give);
    io->in_pos = give;
    io->in_len = (size_t)n;
    if (io->in_pos == io->in_len) io->in_pos = io->in_len = 0;
    return (ssize_t)give;
}

static int is_unix_stream_socket(int fd) {
    int domain = 0, type = 0;
    socklen_t len = sizeof domain;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) return 0;
    len = sizeof type;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM;
}

static ssize_t mosq_io_write(int fd, const void *buf, size_t count) {
    mosq_io *io = bound_io;
    if (!io) {
        // Another thread: only a known socket pair's wake-up byte is skipped.
        mosq_io *owner = count == 1 ? known_pair_owner(fd) : NULL;
        if (owner) {
            __atomic_fetch_add(&owner->counters.wakeups_skipped, 1, __ATOMIC_RELAXED);
            return 1;
        }
        return write(fd, buf, count);
    }
    if (fd == io->conn_fd) {
        if (!io->attached) return write(fd, buf, count);
        size_t space = IO_BUFFER - io->out_len;
        if (space == 0) {
            // Make room; a socket that takes nothing leaves libmosquitto to retry on POLLOUT.
            if (mosq_io_flush(io) < 0) return -1;
            space = IO_BUFFER - io->out_len;
            if (space == 0) {
                errno = EAGAIN;
                return -1;
            }
        }
        if (io->out_len == 0 && count >= IO_BUFFER) {
            __atomic_fetch_add(&io->counters.socket_sends, 1, __ATOMIC_RELAXED);
            return send(fd, buf, count, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        size_t n = count < space ? count : space;
        memcpy(io->out + io->out_len, buf, n);
        io->out_len += n;
        return (ssize_t)n;
    }
    // Not the connection: on this thread that can only be libmosquitto's socket-pair wake-up (one byte).
    if (count == 1) {
        if (fd == io->pair_fd) {
            __atomic_fetch_add(&io->counters.wakeups_skipped, 1, __ATOMIC_RELAXED);
            return 1;
        }
        if (io->pair_fd < 0 && is_unix_stream_socket(fd)) {
            io->pair_fd = fd;
            remember_pair(fd, io);
            __atomic_fetch_add(&io->counters.wakeups_skipped, 1, __ATOMIC_RELAXED);
            return 1;
        }
    }
    return write(fd, buf, count);
}

static int mosq_io_close(int fd) {
    forget_pair(fd);
    mosq_io *io = bound_io;
    if (io) {
        if (fd == io->conn_fd) {
            if (io->attached) flush_before_close(io, io->linger_ms);
            mosq_io_detach(io);
            io->conn_fd = -1;
        } else if (fd == io->pair_fd) {
            io->pair_fd = -1;
        }
    }
    return close(fd);
}

// MARK: Installing

#if MOSQ_IO_SUPPORTED
// Why the installation failed (a constant string), NULL once it succeeded. Written once, by `install`.
static const char *install_failure = "mosq_io_install was not called";

// read, write and close, each through its PLT slot and, where the library also takes the function's address, a
// GLOB_DAT slot.
enum { FUNCTIONS = 3, MAX_SLOTS = 2 * FUNCTIONS };
enum { FN_READ, FN_WRITE, FN_CLOSE };
static const char *const function_names[FUNCTIONS] = { "read", "write", "close" };

typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef int (*close_fn)(int);

struct slot {
    void **addr;
    int function;    // FN_READ, FN_WRITE or FN_CLOSE
    int in_relro;    // inside PT_GNU_RELRO: read-only once relocation is done (full RELRO)
    void *original;  // what the slot held before it was patched
};

/// libmosquitto's slots for the three functions, found by `find_slots`.
struct slot_plan {
    const char *failure;  // NULL when every function's slot was found
    int count;
    struct slot slots[MAX_SLOTS];
};

static pthread_mutex_t patch_lock = PTHREAD_MUTEX_INITIALIZER;
// The installation: the patched slots and what they hold, for `slots_intact`. Under patch_lock.
static struct slot installed[MAX_SLOTS];
static void *installed_values[MAX_SLOTS];
static int installed_count;

static int slots_intact(void) {
    // Under the lock: a rehearsal (tests) rewrites the slots for a moment, and a connection must not start
    // buffering then, nor be refused the buffering because of it.
    pthread_mutex_lock(&patch_lock);
    int intact = installed_count > 0;
    for (int i = 0; i < installed_count; i++) {
        if (__atomic_load_n(installed[i].addr, __ATOMIC_SEQ_CST) != installed_values[i]) intact = 0;
    }
    pthread_mutex_unlock(&patch_lock);
    return intact;
}

static uintptr_t absolute(uintptr_t value, uintptr_t base) {
    // glibc relocates most d_ptr values in place; some platforms leave them relative to the load address.
    return value < base ? value + base : value;
}

static int find_slots(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct slot_plan *plan = data;
    // The shared library itself (libmosquitto.so.1), never the program: a program's slots are its own calls.
    const char *name = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
    name = name ? name + 1 : info->dlpi_name;
    if (!name || strncmp(name, "libmosquitto.so", 15) != 0) return 0;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    }
    plan->failure = "libmosquitto has an unexpected layout (no dynamic section, symbol table or RELA relocations)";
    if (!dyn) return 1;
    const ElfW(Sym) *symtab = NULL;
    const char *strtab = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t jmprel_size = 0, rela_size = 0;
    long pltrel = 0;
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: symtab = (const ElfW(Sym) *)absolute(d->d_un.d_ptr, info->dlpi_addr); break;
        case DT_STRTAB: strtab = (const char *)absolute(d->d_un.d_ptr, info->dlpi_addr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)absolute(d->d_un.d_ptr, info->dlpi_addr); break;
        case DT_PLTRELSZ: jmprel_size = d->d_un.d_val; break;
        case DT_PLTREL: pltrel = (long)d->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela) *)absolute(d->d_un.d_ptr, info->dlpi_addr); break;
        case DT_RELASZ: rela_size = d->d_un.d_val; break;
        default: break;
        }
    }
    if (!symtab || !strtab || (jmprel && pltrel != DT_RELA)) return 1;
#if defined(__x86_64__)
    const unsigned long slot_types[] = { R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT };
#else
    const unsigned long slot_types[] = { R_AARCH64_JUMP_SLOT, R_AARCH64_GLOB_DAT };
#endif
    const struct { const ElfW(Rela) *table; size_t size; } sections[] = { { jmprel, jmprel_size }, { rela, rela_size } };
    int per_function[FUNCTIONS] = { 0, 0, 0 };
    for (int s = 0; s < 2; s++) {
        if (!sections[s].table) continue;
        size_t count = sections[s].size / sizeof(ElfW(Rela));
        for (size_t i = 0; i < count; i++) {
            const ElfW(Rela) *r = &sections[s].table[i];
            unsigned long type = ELF64_R_TYPE(r->r_info);
            if (type != slot_types[0] && type != slot_types[1]) continue;
            const char *symbol = strtab + symtab[ELF64_R_SYM(r->r_info)].st_name;
            for (int f = 0; f < FUNCTIONS; f++) {
                if (strcmp(symbol, function_names[f]) != 0) continue;
                void **addr = (void **)(info->dlpi_addr + r->r_offset);
                int known = 0;
                for (int k = 0; k < plan->count; k++) known |= plan->slots[k].addr == addr;
                if (known || per_function[f] == 2) continue;
                int in_relro = 0;
                for (int p = 0; p < info->dlpi_phnum; p++) {
                    const ElfW(Phdr) *ph = &info->dlpi_phdr[p];
                    if (ph->p_type != PT_GNU_RELRO) continue;
                    uintptr_t start = info->dlpi_addr + ph->p_vaddr;
                    if ((uintptr_t)addr >= start && (uintptr_t)addr < start + ph->p_memsz) in_relro = 1;
                }
                plan->slots[plan->count++] = (struct slot){ .addr = addr, .function = f, .in_relro = in_relro, .original = NULL };
                per_function[f]++;
            }
        }
    }
    for (int f = 0; f < FUNCTIONS; f++) {
        if (per_function[f] == 0) {
            plan->failure = "libmosquitto has no relocation for read, write or close (linked or built differently)";
            return 1;
        }
    }
    plan->failure = NULL;
    return 1;
}

static void find_libmosquitto(struct slot_plan *plan) {
    plan->failure = "libmosquitto.so is not loaded as a shared library (linked statically?)";
    plan->count = 0;
    dl_iterate_phdr(find_slots, plan);
}

static int write_slot(const struct slot *s, void *value) {
    if (!s->in_relro) {
        __atomic_store_n(s->addr, value, __ATOMIC_SEQ_CST);
        return 0;
    }
    // Open the read-only page briefly (a slot is aligned, so it never straddles two pages).
    long pagesize = sysconf(_SC_PAGESIZE);
    void *page = (void *)((uintptr_t)s->addr & ~(uintptr_t)(pagesize - 1));
    if (mprotect(page, (size_t)pagesize, PROT_READ | PROT_WRITE) != 0) return -1;
    __atomic_store_n(s->addr, value, __ATOMIC_SEQ_CST);
    mprotect(page, (size_t)pagesize, PROT_READ);
    return 0;
}

/// Gives the first `count` slots of `plan` back what they held before `patch_slots`, last first. -1 when one could
/// not be written.
static int restore_slots(struct slot_plan *plan, int count) {
    int rc = 0;
    for (int i = count - 1; i >= 0; i--) {
        if (write_slot(&plan->slots[i], plan->slots[i].original) != 0) rc = -1;
    }
    return rc;
}

/// Points every slot of `plan` at `replacements[function]`, recording what each held. All or nothing: when slot i
/// cannot be written (or `fail_at` is i: the tests' injected failure), slots 0..<i get their originals back and
/// the result is -1. `*patched` is how many slots had been patched when it stopped.
static int patch_slots(struct slot_plan *plan, void *const replacements[FUNCTIONS], int fail_at, int *patched) {
    for (int i = 0; i < plan->count; i++) {
        struct slot *s = &plan->slots[i];
        s->original = __atomic_load_n(s->addr, __ATOMIC_SEQ_CST);
        if (i == fail_at || write_slot(s, replacements[s->function]) != 0) {
            *patched = i;
            restore_slots(plan, i);
            return -1;
        }
    }
    *patched = plan->count;
    return 0;
}

static int recv_exactly(int fd, void *buf, size_t n) {
    // The peer's bytes are already queued (AF_UNIX), so nothing here waits.
    return recv(fd, buf, n, MSG_DONTWAIT) == (ssize_t)n ? 0 : -1;
}

/// Drives the three functions as libmosquitto would, through the given pointers (what the patched slots hold),
/// over a fresh socket pair: with a `mosq_io` bound and attached, a write stays in its buffer until the flush puts
/// it on the socket, a read is served from one socket read, and close detaches; with none bound, both pass
/// straight through. NULL when all of that held, else what did not.
static const char *round_trip(read_fn r, write_fn w, close_fn c) {
    static const char ping[] = "mosq_io self-check: ping";
    static const char pong[] = "mosq_io self-check: pong";
    const size_t n = sizeof ping - 1;
    char got[sizeof ping];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return "self-check: socketpair failed";
    mosq_io *probe = mosq_io_create();
    if (!probe) {
        close(sv[0]);
        close(sv[1]);
        return "self-check: out of memory";
    }
    mosq_io *saved = bound_io;
    const char *failure = NULL;
    int open0 = 1, open1 = 1;
    probe->conn_fd = sv[0];
    probe->attached = 1;
    bound_io = probe;
    if (w(sv[0], ping, n) != (ssize_t)n || mosq_io_pending_output(probe) != n) {
        failure = "self-check: a write through the patched slot was not buffered";
    } else if (recv(sv[1], got, 1, MSG_DONTWAIT) != -1) {
        failure = "self-check: a buffered write reached the socket before the flush";
    } else if (mosq_io_flush(probe) != 0 || recv_exactly(sv[1], got, n) != 0 || memcmp(got, ping, n) != 0) {
        failure = "self-check: the flushed bytes did not reach the socket intact";
    } else if (send(sv[1], pong, n, MSG_NOSIGNAL) != (ssize_t)n) {
        failure = "self-check: send on the socket pair failed";
    } else if (r(sv[0], got, 1) != 1 || mosq_io_pending_input(probe) != n - 1 || r(sv[0], got + 1, n - 1) != (ssize_t)(n - 1) ||
               memcmp(got, pong, n) != 0) {
        failure = "self-check: a read through the patched slot did not return the bytes sent, from one socket read";
    } else {
        bound_io = NULL;
        if (w(sv[1], ping, n) != (ssize_t)n || recv_exactly(sv[0], got, n) != 0 || memcmp(got, ping, n) != 0 ||
            send(sv[0], pong, n, MSG_NOSIGNAL) != (ssize_t)n || r(sv[1], got, n) != (ssize_t)n || memcmp(got, pong, n) != 0) {
            failure = "self-check: with no buffers bound, read and write through the patched slots did not pass through";
        } else {
            bound_io = probe;
            open0 = 0;
            if (c(sv[0]) != 0 || probe->conn_fd != -1 || probe->attached || recv(sv[1], got, 1, MSG_DONTWAIT) != 0) {
                failure = "self-check: close through the patched slot did not detach and close the connection";
            }
            bound_io = NULL;
            open1 = 0;
            if (c(sv[1]) != 0 && !failure) failure = "self-check: close through the patched slot failed";
        }
    }
    bound_io = saved;
    if (open0) close(sv[0]);
    if (open1) close(sv[1]);
    mosq_io_destroy(probe);
    return failure;
}

/// The installation's checks after patching: every slot holds its replacement, and a round trip through what the
/// slots hold behaves (once per slot of a function that has two).
static const char *self_check(const struct slot_plan *plan, void *const replacements[FUNCTIONS]) {
    void *chosen[2][FUNCTIONS] = { { NULL, NULL, NULL }, { NULL, NULL, NULL } };
    int seen[FUNCTIONS] = { 0, 0, 0 };
    for (int i = 0; i < plan->count; i++) {
        const struct slot *s = &plan->slots[i];
        void *value = __atomic_load_n(s->addr, __ATOMIC_SEQ_CST);
        if (value != replacements[s->function]) return "self-check: a patched slot does not hold its interceptor";
        chosen[seen[s->function]++][s->function] = value;
    }
    for (int k = 0; k < 2; k++) {
        if (k == 1 && seen[0] < 2 && seen[1] < 2 && seen[2] < 2) break;
        void *fn[FUNCTIONS];
        for (int f = 0; f < FUNCTIONS; f++) fn[f] = chosen[k][f] ? chosen[k][f] : chosen[0][f];
        const char *failure = round_trip((read_fn)fn[FN_READ], (write_fn)fn[FN_WRITE], (close_fn)fn[FN_CLOSE]);
        if (failure) return failure;
    }
    return NULL;
}

/// Patches, checks, and on any failure leaves every slot as it was. Under patch_lock. `sabotage` (tests only):
/// 1 = put one slot back between the patch and the check, as a racing lazy-binding resolution would.
static const char *patch_and_check(struct slot_plan *plan, void *const replacements[FUNCTIONS], int fail_at, int sabotage,
                                   int *patched) {
    if (patch_slots(plan, replacements, fail_at, patched) != 0) {
        return "a slot of libmosquitto's global offset table could not be written; the slots already patched were put back";
    }
    if (sabotage == 1) write_slot(&plan->slots[plan->count - 1], plan->slots[plan->count - 1].original);
    const char *failure = self_check(plan, replacements);
    if (failure) restore_slots(plan, plan->count);
    return failure;
}

static void install(void) {
    void *const interceptors[FUNCTIONS] = { (void *)mosq_io_read, (void *)mosq_io_write, (void *)mosq_io_close };
    pthread_mutex_lock(&patch_lock);
    struct slot_plan plan;
    find_libmosquitto(&plan);
    const char *failure = plan.failure;
    int patched = 0;
    if (!failure) failure = patch_and_check(&plan, interceptors, -1, 0, &patched);
    if (!failure) {
        for (int i = 0; i < plan.count; i++) {
            installed[i] = plan.slots[i];
            installed_values[i] = interceptors[plan.slots[i].function];
        }
        installed_count = plan.count;
    }
    install_failure = failure;
    pthread_mutex_unlock(&patch_lock);
}

static pthread_once_t install_once = PTHREAD_ONCE_INIT;

int mosq_io_install(void) {
    pthread_once(&install_once, install);
    return install_failure ? -1 : 0;
}

// MARK: For tests only

static unsigned long long standin_calls;
static __thread int corrupt_standin_reads;

// Stand-ins for the interceptors: the same behaviour (they call them), at other addresses, so that a rehearsal's
// patch is visible in the slots while other threads' libmosquitto calls go on exactly as before.
static ssize_t standin_read(int fd, void *buf, size_t count) {
    __atomic_fetch_add(&standin_calls, 1, __ATOMIC_RELAXED);
    ssize_t n = mosq_io_read(fd, buf, count);
    if (n > 0 && corrupt_standin_reads) ((unsigned char *)buf)[0] ^= 0xFF;
    return n;
}

static ssize_t standin_write(int fd, const void *buf, size_t count) {
    __atomic_fetch_add(&standin_calls, 1, __ATOMIC_RELAXED);
    return mosq_io_write(fd, buf, count);
}

static int standin_close(int fd) {
    __atomic_fetch_add(&standin_calls, 1, __ATOMIC_RELAXED);
    return mosq_io_close(fd);
}

mosq_io_install_rehearsal mosq_io_rehearse_install_for_testing(int fail_at_slot, int sabotage) {
    void *const standins[FUNCTIONS] = { (void *)standin_read, (void *)standin_write, (void *)standin_close };
    mosq_io_install_rehearsal report = { .result = -1, .slots = 0, .patched = 0, .restored = 0, .standin_calls = 0, .failure = NULL };
    pthread_mutex_lock(&patch_lock);
    struct slot_plan plan;
    find_libmosquitto(&plan);
    report.slots = plan.count;
    report.failure = plan.failure;
    if (!plan.failure) {
        void *before[MAX_SLOTS];
        for (int i = 0; i < plan.count; i++) before[i] = __atomic_load_n(plan.slots[i].addr, __ATOMIC_SEQ_CST);
        unsigned long long calls = __atomic_load_n(&standin_calls, __ATOMIC_RELAXED);
        corrupt_standin_reads = sabotage == 2;
        report.failure = patch_and_check(&plan, standins, fail_at_slot, sabotage, &report.patched);
        corrupt_standin_reads = 0;
        report.standin_calls = __atomic_load_n(&standin_calls, __ATOMIC_RELAXED) - calls;
        report.result = report.failure ? -1 : 0;
        // A successful rehearsal leaves the stand-ins in place: the rehearsal, not the installation, undoes it.
        if (!report.failure) restore_slots(&plan, plan.count);
        report.restored = 1;
        for (int i = 0; i < plan.count; i++) {
            if (__atomic_load_n(plan.slots[i].addr, __ATOMIC_SEQ_CST) != before[i]) {
                report.restored = 0;
                // Whatever went wrong, the process goes on with the slots it had.
                struct slot s = plan.slots[i];
                write_slot(&s, before[i]);
            }
        }
    }
    pthread_mutex_unlock(&patch_lock);
    return report;
}
#else
static const char *const install_failure = "socket batching is implemented for Linux on x86_64 and arm64 only";

static int slots_intact(void) { return 0; }

int mosq_io_install(void) {
    (void)mosq_io_read;
    (void)mosq_io_write;
    (void)mosq_io_close;
    return -1;
}

mosq_io_install_rehearsal mosq_io_rehearse_install_for_testing(int fail_at_slot, int sabotage) {
    (void)fail_at_slot;
    (void)sabotage;
    mosq_io_install_rehearsal report = { .result = -1, .slots = 0, .patched = 0, .restored = 1, .standin_calls = 0,
                                         .failure = install_failure };
    return report;
}
#endif

const char *mosq_io_install_failure(void) { return install_failure; }
