#ifndef CMOSQUITTO_SHIM_H
#define CMOSQUITTO_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#include <mosquitto.h>
#include <mqtt_protocol.h>

/// Names the calling thread (visible in /proc, gdb and top -H). Names longer than 15 bytes are cut.
static inline void cmosquitto_set_thread_name(const char *name) {
#if defined(__APPLE__)
    pthread_setname_np(name);
#else
    char buf[16];
    int i = 0;
    for (; name[i] && i < 15; i++) buf[i] = name[i];
    buf[i] = 0;
    pthread_setname_np(pthread_self(), buf);
#endif
}

/// The kernel thread id of the calling thread on Linux (-1 elsewhere).
static inline long cmosquitto_thread_id(void) {
#if defined(__linux__)
    return syscall(SYS_gettid);
#else
    return -1;
#endif
}
#endif
