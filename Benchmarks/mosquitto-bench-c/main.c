/*
 * mosquitto-bench-c: the reference workload in raw libmosquitto C.
 *
 * One process, two clients (publisher and subscriber) each with mosquitto_loop_start, as a C
 * programmer would write it. The publisher calls mosquitto_publish as fast as it can; libmosquitto
 * queues every message it cannot send yet (its queue is unbounded). The subscriber counts arrivals.
 *
 *   mosquitto-bench-c HOST PORT QOS COUNT SIZE [PROTOCOL(5|311)]
 *
 * Prints one line of JSON: {"impl":"c","qos":Q,"messages":N,"received":R,"seconds":S,"rate":R/S,"peak_rss_kb":K,
 * "cpu_ms":T}, T being the process's CPU time (user + system, all threads, connecting included).
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long received = 0;
static atomic_int subscribed = 0;
static atomic_int connected = 0;
static long expected = 0;
static struct timespec last_arrival;
static pthread_mutex_t done_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;

/* Peak resident set of this process image (VmHWM). getrusage's ru_maxrss survives execve on Linux and
 * would report the forking parent's peak instead. */
static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) { kb = atol(line + 6); break; }
    }
    fclose(f);
    return kb;
}

/* CPU time (user + system) of the whole process so far, in milliseconds. */
static double cpu_ms(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_connect(struct mosquitto *m, void *obj, int rc) {
    (void)m; (void)obj;
    if (rc == 0) atomic_fetch_add(&connected, 1);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted) {
    (void)m; (void)obj; (void)mid; (void)n; (void)granted;
    atomic_store(&subscribed, 1);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg) {
    (void)m; (void)obj; (void)msg;
    long n = atomic_fetch_add(&received, 1) + 1;
    if (n >= expected) {
        pthread_mutex_lock(&done_mutex);
        clock_gettime(CLOCK_MONOTONIC, &last_arrival);
        pthread_cond_signal(&done_cond);
        pthread_mutex_unlock(&done_mutex);
    }
}

static struct mosquitto *client(const char *id, const char *host, int port, int protocol) {
    struct mosquitto *m = mosquitto_new(id, true, NULL);
    if (!m) { perror("mosquitto_new"); exit(1); }
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, protocol);
    /* Without this, libmosquitto 2.0.11 (receive quota 20, counted until PUBREL) and the mosquitto broker
     * (counting QoS 2 only until PUBREC) disagree, libmosquitto drops the connection with a protocol
     * error and loop_forever ends silently: QoS 2 over MQTT 5 stalls after about 40 messages. The Swift
     * library sets the same option, so both sides run the same protocol settings. */
    mosquitto_int_option(m, MOSQ_OPT_RECEIVE_MAXIMUM, 65535);
    mosquitto_connect_callback_set(m, on_connect);
    if (mosquitto_connect(m, host, port, 60) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mosquitto-bench-c: cannot connect to %s:%d\n", host, port);
        exit(1);
    }
    if (mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) { fprintf(stderr, "loop_start failed\n"); exit(1); }
    return m;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: mosquitto-bench-c HOST PORT QOS COUNT SIZE [5|311]\n");
        return 1;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    int qos = atoi(argv[3]);
    expected = atol(argv[4]);
    int size = atoi(argv[5]);
    int protocol = (argc > 6 && strcmp(argv[6], "311") == 0) ? MQTT_PROTOCOL_V311 : MQTT_PROTOCOL_V5;

    mosquitto_lib_init();
    char topic[64];
    snprintf(topic, sizeof topic, "bench/c/%d/%d", (int)getpid(), qos);

    struct mosquitto *sub = client("bench-c-sub", host, port, protocol);
    mosquitto_subscribe_callback_set(sub, on_subscribe);
    mosquitto_message_callback_set(sub, on_message);
    while (atomic_load(&connected) < 1) usleep(1000);
    mosquitto_subscribe(sub, NULL, topic, qos);
    while (!atomic_load(&subscribed)) usleep(1000);

    struct mosquitto *pub = client("bench-c-pub", host, port, protocol);
    while (atomic_load(&connected) < 2) usleep(1000);

    char *payload = malloc((size_t)size);
    memset(payload, 'x', (size_t)size);
    double start = now();
    for (long i = 0; i < expected; i++) {
        int rc = mosquitto_publish(pub, NULL, topic, size, payload, qos, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mosquitto_publish: %s\n", mosquitto_strerror(rc));
            return 1;
        }
    }
    double published = now() - start;

    /* Wait for the last message, or 60 s without completion. */
    pthread_mutex_lock(&done_mutex);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    while (atomic_load(&received) < expected) {
        if (pthread_cond_timedwait(&done_cond, &done_mutex, &deadline) != 0) break;
    }
    pthread_mutex_unlock(&done_mutex);
    double seconds = atomic_load(&received) >= expected
        ? ((double)last_arrival.tv_sec + (double)last_arrival.tv_nsec / 1e9) - start
        : now() - start;

    long got = atomic_load(&received);
    printf("{\"impl\":\"c\",\"qos\":%d,\"messages\":%ld,\"received\":%ld,\"seconds\":%.6f,\"publish_seconds\":%.6f,\"rate\":%.1f,\"peak_rss_kb\":%ld,\"cpu_ms\":%.1f}\n",
           qos, expected, got, seconds, published, (double)got / seconds, peak_rss_kb(), cpu_ms());
    fflush(stdout);

    mosquitto_disconnect(pub);
    mosquitto_disconnect(sub);
    mosquitto_loop_stop(pub, false);
    mosquitto_loop_stop(sub, false);
    mosquitto_destroy(pub);
    mosquitto_destroy(sub);
    mosquitto_lib_cleanup();
    free(payload);
    return got >= expected ? 0 : 2;
}
