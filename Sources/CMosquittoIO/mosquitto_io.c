// Batched socket I/O for libmosquitto. See include/mosquitto_io.h for the interface.
//
// How: libmosquitto 2.0 has no I/O hooks, but it reaches `read`, `write` and `close` through its own global
// offset table. `mosq_io_install` finds the library in memory (`dl_iterate_phdr`, by its name libmosquitto.so.*),
// walks its dynamic relocations and points those three slots at the functions below. Only libmosquitto's calls
// are affected: every other object in the process keeps its own slots.
//
// Who uses what (the invariants):
// 1. A `mosq_io` belongs to one client and is touched only by that client's network thread, which binds it with
//    `mosq_io_bind_thread` (thread-local). The client calls libmosquitto's socket functions (loop_read, loop_write,
//    loop_misc, connect, destroy) only there, and it sets threaded mode (`mosquitto_threaded_set`), so a packet
//    queued on another thread is never written by that thread.
// 2. On a thread with no bound `mosq_io`, and for any descriptor other than the bound one's connection and
//    socket pair, the interceptors call the real functions (apart from skipping a known socket pair's byte, 5):
//    nothing changes for other libmosquitto users.
// 3. Reads are buffered only while attached (between CONNACK and the end of the connection). A read served from
//    the buffer leaves errno alone, as libmosquitto's loop_read expects of a successful read.
// 4. Writes are buffered only while attached. The network thread sends the buffer at the end of each pass and
//    before it sleeps; `close` of the connection sends what is left (waiting up to the linger time for a full
//    socket: set for a graceful DISCONNECT, zero after an error), so a DISCONNECT written last still leaves.
// 5. The socket pair: libmosquitto writes one byte to it for every packet it queues, to wake `mosquitto_loop`'s
//    select. This client never calls mosquitto_loop or loop_start, so nothing reads the pair; on the network
//    thread the byte is dropped once the descriptor is confirmed to be a Unix stream socket other than the
//    connection, and the descriptor is remembered process-wide so that other threads drop it too. libmosquitto's
//    `close` of the descriptor forgets it first. Pairs of libmosquitto handles that are not this client's are never
//    learnt, so their bytes are written as usual.
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
// The patched slots, to check later that nothing (a lazy-binding resolution racing the patch) put them back.
static void **patched_slots[6];
static void *patched_values[6];
static int patched_count;

static int slots_intact(void) {
    if (patched_count == 0) return 0;
    for (int i = 0; i < patched_count; i++) {
        if (__atomic_load_n(patched_slots[i], __ATOMIC_RELAXED) != patched_values[i]) return 0;
    }
    return 1;
}

struct install_target {
    int patched;
};

static uintptr_t absolute(uintptr_t value, uintptr_t base) {
    // glibc relocates most d_ptr values in place; some platforms leave them relative to the load address.
    return value < base ? value + base : value;
}

static int patch_slot(struct dl_phdr_info *info, void **slot, void *replacement) {
    // A slot inside PT_GNU_RELRO is read-only once relocation is done (full RELRO): open it briefly.
    uintptr_t addr = (uintptr_t)slot;
    int in_relro = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_GNU_RELRO) continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (addr >= start && addr < start + ph->p_memsz) in_relro = 1;
    }
    long pagesize = sysconf(_SC_PAGESIZE);
    void *page = (void *)(addr & ~(uintptr_t)(pagesize - 1));
    if (in_relro && mprotect(page, (size_t)pagesize, PROT_READ | PROT_WRITE) != 0) return -1;
    __atomic_store_n(slot, replacement, __ATOMIC_SEQ_CST);
    if (in_relro) mprotect(page, (size_t)pagesize, PROT_READ);
    return 0;
}

static int patch_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct install_target *target = data;
    // The shared library itself (libmosquitto.so.1), never the program: a program's slots are its own calls.
    const char *name = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
    name = name ? name + 1 : info->dlpi_name;
    if (!name || strncmp(name, "libmosquitto.so", 15) != 0) return 0;
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    }
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
    struct { const char *name; void *replacement; int done; } wanted[] = {
        { "read", (void *)mosq_io_read, 0 },
        { "write", (void *)mosq_io_write, 0 },
        { "close", (void *)mosq_io_close, 0 },
    };
    const struct { const ElfW(Rela) *table; size_t size; } sections[] = { { jmprel, jmprel_size }, { rela, rela_size } };
    // Find every slot first and patch only if all three are there: all or nothing.
    void **slots[3][2] = { { NULL, NULL }, { NULL, NULL }, { NULL, NULL } };
    for (int s = 0; s < 2; s++) {
        if (!sections[s].table) continue;
        size_t count = sections[s].size / sizeof(ElfW(Rela));
        for (size_t i = 0; i < count; i++) {
            const ElfW(Rela) *r = &sections[s].table[i];
            unsigned long type = ELF64_R_TYPE(r->r_info);
            if (type != slot_types[0] && type != slot_types[1]) continue;
            const char *name = strtab + symtab[ELF64_R_SYM(r->r_info)].st_name;
            for (int w = 0; w < 3; w++) {
                if (strcmp(name, wanted[w].name) != 0) continue;
                void **slot = (void **)(info->dlpi_addr + r->r_offset);
                if (!slots[w][0]) slots[w][0] = slot; else if (!slots[w][1] && slots[w][0] != slot) slots[w][1] = slot;
                wanted[w].done = 1;
            }
        }
    }
    for (int w = 0; w < 3; w++) if (!wanted[w].done) return 1;
    for (int w = 0; w < 3; w++) {
        for (int k = 0; k < 2; k++) {
            if (!slots[w][k]) continue;
            if (patch_slot(info, slots[w][k], wanted[w].replacement) != 0) return 1;
            patched_slots[patched_count] = slots[w][k];
            patched_values[patched_count] = wanted[w].replacement;
            patched_count++;
        }
    }
    target->patched = 1;
    return 1;
}

static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_result = -1;

static void install(void) {
    struct install_target target = { .patched = 0 };
    dl_iterate_phdr(patch_object, &target);
    install_result = target.patched ? 0 : -1;
}

int mosq_io_install(void) {
    pthread_once(&install_once, install);
    return install_result;
}
#else
static int slots_intact(void) { return 0; }

int mosq_io_install(void) {
    (void)mosq_io_read;
    (void)mosq_io_write;
    (void)mosq_io_close;
    return -1;
}
#endif
