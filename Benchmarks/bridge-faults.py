#!/usr/bin/env python3
"""The mqtt-bridge fault matrix. Run it through Benchmarks/bridge-soak.sh, which builds the bridge, makes the work
directory and cleans up whatever this script leaves behind; BENCHMARKS.md ("Soak under faults") explains the table.

Every case gets its own broker (persistent, autosave every second), its own persistent-session QoS 1 subscriber
(`mosquitto_sub -c -v -q 1 -t 'soak/#'`, writing to a file) and its own bridge (route `soak`: TCP server -> QoS 1,
spool on), all on 127.0.0.1 and free ports. Feeds send numbered lines (`L000000042`); the script remembers, per
feed connection and in order, which complete lines the kernel accepted, and at the end of the case counts what the
subscriber printed:

  produced    complete lines the feeds' kernels accepted (a partial line is not one)
  delivered   distinct produced lines the subscriber received
  duplicates  extra copies of them (QoS 1 is at least once)
  missing     produced lines not delivered and not explained below: the loss; must be 0
  broker-loss lines missing after a broker SIGKILL, produced in the 3 s before it (the broker acknowledged them,
              then died before its next autosave): the broker's loss, not the bridge's
  counted     what the bridge counted and dropped by policy (partial lines at close, an oversize line), and lines
              a bridge stop or kill -9 cut off: when the feed's connection dies with the bridge, the lines in the
              kernel's socket queues were never read by the bridge. The feed pauses during such a fault and the
              queues are read from /proc/net/tcp; missing lines are counted so only if they are exactly the tail
              of that connection (everything after the first missing line missing, nothing before it), and only up
              to those bytes, plus one 64 KiB socket read after a kill -9 (the README's durability promise)

After every fault the bridge must keep delivering: each case ends with a fresh batch of lines on a new
connection, and fails if they do not all arrive.
"""

import argparse
import datetime
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

BROKER_LOSS_WINDOW = 3.0   # seconds before a broker SIGKILL whose lines the broker may have lost (autosave 1 s)
# What a kill -9 may catch read from a feed but not yet in the spool: "the one socket read being decoded at that
# instant" (README, Durability), a read being at most 64 KiB (NIO's adaptive receive buffer).
READ_BYTES = 65536


def now():
    return time.monotonic()


def log(msg):
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(pred, timeout, step=0.1):
    deadline = now() + timeout
    while True:
        if pred():
            return True
        if now() >= deadline:
            return False
        time.sleep(step)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def tcp_queue(local_port, remote_port):
    """(state, tx_queue, rx_queue) of the IPv4 TCP socket 127.0.0.1:local_port -> remote_port, or None."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if int(p[1].split(":")[1], 16) == local_port and int(p[2].split(":")[1], 16) == remote_port:
                tx, rx = (int(x, 16) for x in p[4].split(":"))
                return int(p[3], 16), tx, rx
    return None


class Harness:
    """Owns every process and mount of the run, so that one place can stop and remove them."""

    def __init__(self, work, bridge_bin, quick, seed):
        self.work = work
        self.bin = bridge_bin
        self.quick = quick
        self.rng = random.Random(seed)
        self.token = os.path.basename(work.rstrip("/"))
        self.procs = []
        self.mounts = []
        self.current = None

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def spawn(self, args, stdout_path, stderr_path=None):
        out = open(stdout_path, "ab")
        err = open(stderr_path, "ab") if stderr_path else subprocess.STDOUT
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.close()
        if stderr_path:
            err.close()
        self.procs.append(p)
        with open(self.path("pids"), "a") as f:  # for the shell wrapper's trap, should this script die hard
            f.write(f"{p.pid}\n")
        return p

    def forget(self, p):
        if p in self.procs:
            self.procs.remove(p)

    def mount_tmpfs(self, d, size):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", d], check=True)
        self.mounts.append(d)
        with open(self.path("mounts"), "a") as f:
            f.write(d + "\n")

    def umount(self, d):
        if d in self.mounts:
            subprocess.run(["umount", "-l", d])
            self.mounts.remove(d)

    def cleanup(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()
        for d in list(reversed(self.mounts)):
            self.umount(d)


class Broker:
    def __init__(self, h, name):
        self.h = h
        self.port = free_port()
        self.dir = h.path(name + "-broker")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o700)
        if os.getuid() == 0:
            # mosquitto started as root runs as the `mosquitto` user, which must write its persistence file.
            try:
                import pwd
                os.chown(self.dir, pwd.getpwnam("mosquitto").pw_uid, -1)
            except KeyError:
                pass
        self.conf = h.path(name + "-mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {self.dir}/\nautosave_interval 1\nmax_queued_messages 0\n")
        self.log = h.path(name + "-mosquitto.log")
        self.proc = None

    def start(self):
        self.proc = self.h.spawn(["mosquitto", "-c", self.conf], self.log)
        ok = wait_until(lambda: self.proc.poll() is None and port_open(self.port), 15)
        if not ok:
            raise RuntimeError(f"mosquitto did not start on port {self.port} (see {self.log})")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.h.forget(self.proc)


class Subscriber:
    """mosquitto_sub with a persistent QoS 1 session, printing `topic payload` lines to a file."""

    LINE = re.compile(rb"L(\d{9})(?:-.*)?\Z", re.S)
    PARTIAL = re.compile(rb"P\d{0,9}(?:-[a-z]{0,7})?\Z")   # a prefix of b"P%09d-partial"

    def __init__(self, h, broker, name):
        self.h = h
        self.broker = broker
        self.id = f"faults-{h.token}-{name}-sub"[-64:]
        self.out = h.path(name + "-received")
        self.err = h.path(name + "-sub.log")
        self.proc = None
        self.offset = 0
        self.rest = b""
        self.counts = bytearray()   # per line number: copies received (saturating at 255)
        self.copies = 0             # every numbered line received, duplicates included
        self.other = {}             # payloads that are not numbered lines, by kind
        self.topics = {}            # numbered lines per topic
        self.probes = 0

    def start(self):
        self.proc = self.h.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-c", "-i", self.id,
                                  "-q", "1", "-v", "-t", "soak/#"], self.out, self.err)
        # Subscribed once a probe comes back.
        for attempt in range(20):
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-q", "1",
                            "-t", "soak/probe", "-m", f"probe-{attempt}"], check=False)
            if wait_until(lambda: (self.poll(), self.probes > 0)[1], 1.0):
                return
        raise RuntimeError("the subscriber never received its probe")

    def ensure_len(self, n):
        if len(self.counts) < n:
            self.counts.extend(bytes(n - len(self.counts)))

    def poll(self):
        with open(self.out, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        if not data:
            return False
        self.offset += len(data)
        data = self.rest + data
        lines = data.split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            topic, _, payload = line.partition(b" ")
            m = self.LINE.match(payload)
            if m:
                seq = int(m.group(1))
                if seq >= len(self.counts):
                    self.ensure_len(max(seq + 1, 2 * len(self.counts)))
                if self.counts[seq] < 255:
                    self.counts[seq] += 1
                self.copies += 1
                t = topic.decode(errors="replace")
                self.topics[t] = self.topics.get(t, 0) + 1
            elif payload.startswith(b"probe-"):
                self.probes += 1
            else:
                kind = "partial" if self.PARTIAL.match(payload) else "other"
                self.other[kind] = self.other.get(kind, 0) + 1
        return True


class Conn:
    """One feed connection and the ledger of what its kernel accepted: batches of consecutive line numbers."""

    def __init__(self, case, label, sndbuf=None, timeout=60):
        self.case = case
        self.label = label
        self.batches = []        # (first line number, count, monotonic time), in sending order
        self.cut = None          # why the connection died under us (a fault), or "unexpected: ..."
        self.unread_bytes = None # at a fault: bytes in the kernel's queues (the bridge's receive queue, ours to send)
        self.line_len = 11
        self.closed = False
        self.accepted = 0        # bytes the kernel accepted, for progress
        self.sock = None
        deadline = now() + 30
        last = None
        while now() < deadline:
            try:
                s = socket.socket()
                if sndbuf:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                s.settimeout(timeout)
                s.connect(("127.0.0.1", case.bridge.feed_port))
                self.sock = s
                break
            except OSError as e:
                last = e
                s.close()
                time.sleep(0.05)
        if self.sock is None:
            raise RuntimeError(f"cannot connect to the bridge's feed port: {last}")
        case.add_conn(self)

    def _send(self, data):
        """Sends as much of data as the kernel takes; returns the bytes it accepted (all, unless the connection broke)."""
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                n = self.sock.send(view[sent:sent + 65536])
                sent += n
                self.accepted += n
        except OSError as e:
            if self.cut is None:
                fault = self.case.fault
                self.cut = fault if fault else f"unexpected: {e}"
        return sent

    def send_lines(self, n, pad=0):
        if self.cut:
            return False
        start = self.case.alloc(n)
        suffix = (b"-" + b"p" * (pad - 1) if pad else b"") + b"\n"
        self.line_len = 10 + len(suffix)
        data = b"".join(b"L%09d%s" % (i, suffix) for i in range(start, start + n))
        sent = self._send(data)
        complete = sent // (10 + len(suffix))
        if complete:
            self.batches.append((start, complete, now()))
        return sent == len(data)

    def send_raw(self, data):
        if self.cut:
            return False
        return self._send(data) == len(data)

    def close(self):
        if self.sock:
            self.sock.close()
        self.closed = True

    def lines(self):
        return sum(b[1] for b in self.batches)

    def delivered(self):
        counts = self.case.sub.counts
        for start, n, _ in self.batches:
            seg = counts[start:start + n]
            if len(seg) < n or seg.count(0):
                return False
        return True


class Streamer(threading.Thread):
    """Sends numbered lines at `rate` lines/s (0: as fast as the bridge reads), reconnecting after a fault."""

    def __init__(self, case, rate, label="stream", batch=None, limit=None, sndbuf=262144):
        super().__init__(daemon=True)
        self.case = case
        self.rate = rate
        self.label = label
        self.batch = batch
        self.limit = limit      # at most this many lines flat out (rate 0), then paced at 2,000 lines/s
        self.sndbuf = sndbuf    # bounds what a fault can cut off in the feed's own socket buffer
        self.sent = 0
        self.halt = threading.Event()
        self.gate = threading.Lock()   # held by a fault, so that nothing is sent while it happens
        self.current = None
        self.conns = []
        self.error = None

    def run(self):
        conn = None
        tick = 0.01
        next_t = now()
        try:
            while not self.halt.is_set():
                if conn is None or conn.cut:
                    if conn is not None:
                        conn.close()
                    deadline = now() + 60
                    conn = None
                    while conn is None and not self.halt.is_set() and now() < deadline:
                        try:
                            conn = Conn(self.case, self.label, sndbuf=self.sndbuf, timeout=5)
                        except RuntimeError:
                            time.sleep(0.1)
                    if conn is None:
                        if not self.halt.is_set():
                            self.error = "could not reconnect to the bridge for 60 s"
                        return
                    self.conns.append(conn)
                    self.current = conn
                    next_t = now()
                rate = self.rate
                if not rate and self.limit is not None and self.sent >= self.limit:
                    rate = 2000
                if rate:
                    n = self.batch or max(1, int(rate * tick))
                else:
                    n = min(self.batch or 2000, self.limit - self.sent) if self.limit is not None else self.batch or 2000
                with self.gate:
                    if conn.cut:
                        continue
                    conn.send_lines(n)
                self.sent += n
                if rate:
                    next_t += n / rate
                    d = next_t - now()
                    if d > 0:
                        time.sleep(d)
                    elif d < -1:
                        next_t = now()
        finally:
            if conn is not None:
                conn.close()

    def stop(self):
        self.halt.set()
        self.join(90)


class Bridge:
    def __init__(self, h, broker, name, route_extra="", global_extra="", spool_dir=None):
        self.h = h
        self.broker = broker
        self.name = name
        self.feed_port = free_port()
        self.http_port = free_port()
        self.conf = h.path(name + "-bridge.conf")
        self.log = h.path(name + "-bridge.log")
        self.spool = spool_dir or h.path(name + "-spool")
        self.route_extra = route_extra
        self.global_extra = global_extra
        self.proc = None
        self.write_config()

    def config_text(self, topic="soak/data", route_extra=None, broken=False):
        extra = self.route_extra if route_extra is None else route_extra
        return (f"address 127.0.0.1:{self.broker.port}\n"
                f"remote_clientid faults-{self.h.token}-{self.name}-bridge\n"
                "cleansession false\n"
                "restart_timeout 0.2 1\n"
                f"spool_dir {self.spool}\n"
                f"metrics_listen 127.0.0.1:{self.http_port}\n"
                "progress_interval 0\n"
                "drain_timeout 2\n"
                f"{self.global_extra}\n"
                "route soak\n"
                "direction to_mqtt\n"
                "mode tcp_server\n"
                f"address 127.0.0.1:{self.feed_port}\n"
                f"topic {topic}\n"
                "qos 1\n"
                f"{extra}\n"
                + ("this line is not an option\n" if broken else ""))

    def write_config(self, **kw):
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.config_text(**kw))
        os.replace(tmp, self.conf)

    def start(self):
        self.proc = self.h.spawn([self.h.bin, "--config", self.conf, "--log-level", "info"], self.log)
        ok = wait_until(lambda: self.proc.poll() is None and self.get("/healthz") is not None and port_open(self.feed_port), 20)
        if not ok:
            raise RuntimeError(f"mqtt-bridge did not start (exit {self.proc.poll()}; see {self.log})")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the bridge; returns (exit status, seconds it took to exit)."""
        t = now()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = f"hung, killed after {timeout} s ({self.proc.wait(5)})"
        self.h.forget(self.proc)
        return rc, now() - t

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=3) as r:
                return r.read().decode()
        except Exception:
            return None

    def metrics(self):
        body = self.get("/metrics")
        if body is None:
            return None
        d = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, val = line.rpartition(" ")
            try:
                d[key] = float(val)
            except ValueError:
                pass
        return d

    @staticmethod
    def pick(d, name, reason=None):
        if d is None:
            return None
        if reason:
            return d.get(f'mqtt_bridge_{name}{{route="soak",reason="{reason}"}}')
        return d.get(f'mqtt_bridge_{name}{{route="soak"}}', d.get(f"mqtt_bridge_{name}"))

    def metric(self, name, reason=None):
        v = self.pick(self.metrics(), name, reason)
        return None if v is None else int(v)

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


class Case:
    def __init__(self, h, name):
        self.h = h
        self.name = name
        self.lock = threading.Lock()
        self.next_seq = 0
        self.conns = []
        self.fault = None          # set while a fault that may cut feed connections is in progress
        self.kills = []            # monotonic times of broker SIGKILLs
        self.counted = {}          # other counted drops shown in the table
        self.notes = []
        self.checks = []
        self.bridge = self.broker = self.sub = None
        self.started = now()
        h.current = self           # so that main can stop a case that raised

    # ledger
    def alloc(self, n):
        with self.lock:
            s = self.next_seq
            self.next_seq += n
            return s

    def add_conn(self, c):
        with self.lock:
            self.conns.append(c)

    def note(self, text):
        self.notes.append(text)
        log(f"{self.name}: {text}")

    def check(self, ok, text):
        self.checks.append((bool(ok), text))
        log(f"{self.name}: {'ok  ' if ok else 'FAIL'} {text}")
        return ok

    def count(self, key, n):
        if n:
            self.counted[key] = self.counted.get(key, 0) + n

    def setup(self, route_extra="", global_extra="", spool_dir=None):
        self.broker = Broker(self.h, self.name)
        self.broker.start()
        self.sub = Subscriber(self.h, self.broker, self.name)
        self.sub.start()
        self.bridge = Bridge(self.h, self.broker, self.name, route_extra, global_extra, spool_dir)
        self.bridge.start()

    def teardown(self):
        for p in (self.bridge, self.sub, self.broker):
            proc = p.proc if p else None
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc is not None:
                self.h.forget(proc)

    def fault_on(self, st, fault, action):
        """Runs `action` (a fault) with the streamer paused. If the bridge closes the stream's connection, the
        connection is cut by `fault`, and at most the bytes the kernel held for it before the fault (the bridge's
        receive queue and our send queue) may be missing: the bridge never read them."""
        with st.gate:
            conn = st.current
            port = None
            if conn is not None and not conn.cut:
                port = conn.sock.getsockname()[1]
                theirs = tcp_queue(self.bridge.feed_port, port)
                ours = tcp_queue(port, self.bridge.feed_port)
                held = (theirs[2] if theirs else 0) + (ours[1] if ours else 0)
            self.fault = fault
            try:
                action()
                if port is not None:
                    theirs = tcp_queue(self.bridge.feed_port, port)
                    if theirs is None or theirs[0] != 1:   # not ESTABLISHED any more: the bridge closed it
                        conn.cut = conn.cut or fault
                        conn.unread_bytes = held
                        return held
            finally:
                self.fault = None
        return None

    def missing_now(self):
        """Produced lines not delivered yet (cheap enough to poll)."""
        self.sub.poll()
        counts = self.sub.counts
        missing = 0
        for c in list(self.conns):
            for start, n, _ in c.batches:
                seg = counts[start:start + n]
                missing += seg.count(0) + (n - len(seg))
        return missing

    def settle(self, timeout=120, quiet=4.0):
        """Waits until every produced line arrived, or nothing arrived for `quiet` s with the spool empty."""
        deadline = now() + timeout
        last_size, last_change = -1, now()
        while now() < deadline:
            if self.missing_now() == 0:
                return True
            size = os.path.getsize(self.sub.out)
            if size != last_size:
                last_size, last_change = size, now()
            if now() - last_change >= quiet and self.bridge.metric("spool_records") == 0:
                return False
            time.sleep(0.25)
        self.note(f"settle: still {self.missing_now()} lines missing after {timeout} s")
        return False

    def fresh_batch(self, n=1000, label="fresh batch", timeout=60):
        """A new connection, n new lines: the bridge must still deliver (after its backlog: the spool is FIFO)."""
        t = now()
        timeout += (self.bridge.metric("spool_records") or 0) // 10000 + self.missing_now() // 10000
        c = Conn(self, label)
        c.send_lines(n)
        c.close()
        ok = wait_until(lambda: (self.sub.poll(), c.delivered())[1], timeout, 0.1) and c.delivered()
        self.check(ok, f"{label}: {n} new lines {'delivered in %.1f s' % (now() - t) if ok else 'NOT all delivered within %d s' % timeout}")
        return ok

    def account(self):
        self.sub.poll()
        counts = self.sub.counts
        self.sub.ensure_len(self.next_seq)
        produced = delivered = 0
        lost, broker_loss = 0, 0
        lost_examples = []
        broker_ranges = []
        unread = {}
        dup = 0
        for c in self.conns:
            pos = 0
            missing_c = 0
            first_missing = None
            for start, n, t in c.batches:
                seg = counts[start:start + n]
                z = seg.count(0)
                produced += n
                delivered += n - z
                dup += sum(seg) - (n - z) if n - z else 0
                if z:
                    if first_missing is None:
                        first_missing = pos + seg.find(0)
                    missing_c += z
                pos += n
            if not missing_c:
                continue
            if c.cut and not c.cut.startswith("unexpected") and missing_c == pos - first_missing:
                # A tail: at most what the kernel held for the bridge (whole lines, plus one cut across the edge);
                # after a kill -9 also the one socket read the bridge had taken but not yet written to its spool.
                # Whatever is missing beyond that is lost.
                kernel = missing_c if c.unread_bytes is None else -(-c.unread_bytes // c.line_len) + 1
                in_kernel = min(missing_c, kernel)
                read = min(missing_c - in_kernel, -(-READ_BYTES // c.line_len) + 1 if "SIGKILL" in c.cut else 0)
                beyond = missing_c - in_kernel - read
                for key, v in ((f"cut off in kernel socket queues by {c.cut}", in_kernel),
                               (f"read, not yet spooled at {c.cut}", read)):
                    if v:
                        unread[key] = unread.get(key, 0) + v
                held = "?" if c.unread_bytes is None else f"{c.unread_bytes:,}"
                self.note(f"{c.label}: the last {missing_c:,} lines never reached the spool; the kernel held {held} bytes "
                          f"({kernel:,} lines) for the bridge when {c.cut} cut the connection"
                          + (f"; {beyond:,} lines missing beyond that{' and one 64 KiB read' if read else ''}" if beyond else ""))
                if beyond:
                    lost += beyond
                    if len(lost_examples) < 8:
                        lost_examples.append(f"{beyond:,} lines at the end of {c.label} (cut: {c.cut})")
                continue
            for start, n, t in c.batches:
                seg = counts[start:start + n]
                if not seg.count(0):
                    continue
                for i, v in enumerate(seg):
                    if v:
                        continue
                    if any(k - BROKER_LOSS_WINDOW <= t <= k + 0.2 for k in self.kills):
                        broker_loss += 1
                        if broker_ranges and broker_ranges[-1][1] == start + i - 1:
                            broker_ranges[-1][1] = start + i
                        else:
                            broker_ranges.append([start + i, start + i])
                    else:
                        lost += 1
                        if len(lost_examples) < 8:
                            lost_examples.append(f"L{start + i:09d} ({c.label}{', cut: ' + c.cut if c.cut else ''})")
        for k, v in unread.items():
            self.count(k, v)
        if broker_ranges:
            self.note("broker loss (missing lines produced in the 3 s before a broker SIGKILL): "
                      + ", ".join(f"L{a}-L{b}" if a != b else f"L{a}" for a, b in broker_ranges[:12]))
        if lost_examples:
            self.note("missing, e.g.: " + ", ".join(lost_examples))
        return produced, delivered, dup, lost, broker_loss


def row(case, produced, delivered, dup, lost, broker_loss):
    ok = lost == 0 and all(c[0] for c in case.checks)
    counted = ", ".join(f"{k} {v:,}" for k, v in case.counted.items()) or "0"
    return {"case": case.name, "produced": produced, "delivered": delivered, "dup": dup, "missing": lost,
            "broker_loss": broker_loss, "counted": counted, "ok": ok, "seconds": now() - case.started,
            "notes": case.notes, "checks": case.checks}


# --------------------------------------------------------------------------------------------------------------- cases

def case_broker(h, name, sig):
    """The bridge keeps running while the broker is stopped (SIGTERM) or killed (SIGKILL) and restarted, mid-stream."""
    c = Case(h, name)
    c.setup()
    faults = 2 if h.quick else 4
    st = Streamer(c, rate=5000)
    st.start()
    time.sleep(2.5)
    for i in range(faults):
        depth = c.bridge.metric("spool_records")
        if sig == signal.SIGKILL:
            c.kills.append(now())
        c.broker.stop(sig)
        down = h.rng.uniform(0.3, 1.5)
        time.sleep(down)
        c.broker.start()
        c.note(f"broker {sig.name} {i + 1}/{faults} at line ~{c.next_seq:,} (bridge spool {depth}), down {down:.1f} s")
        time.sleep(3.0)  # more than autosave_interval: the subscriber's session is saved before the next fault
    st.stop()
    c.check(st.error is None, f"the feed kept its connection ({st.error or 'no error'})")
    c.settle()
    reconnects = c.bridge.metric("mqtt_reconnects_total")
    c.note(f"bridge MQTT reconnects {reconnects}, frames in {c.bridge.metric('frames_in_total'):,}, published "
           f"{c.bridge.metric('frames_published_total'):,}, drops {c.bridge.metric('drops_total', 'partial')} partial")
    c.check(reconnects is not None and reconnects >= faults, f"the bridge reconnected after each broker restart ({reconnects} for {faults})")
    fin, fpub = c.bridge.metric("frames_in_total"), c.bridge.metric("frames_published_total")
    c.check(fin == fpub, f"the bridge saw every frame it read acknowledged ({fpub:,} of {fin:,})")
    c.fresh_batch()
    c.check(c.bridge.alive() and c.sub.proc.poll() is None, "bridge and subscriber still running")
    return c


def case_bridge_stop(h, name, sig):
    """The bridge stopped (SIGTERM: drain and stop; SIGKILL) and restarted on the same spool, idle and busy."""
    c = Case(h, name)
    c.setup()
    if sig == signal.SIGTERM:
        rounds = ["idle", "busy"] if h.quick else ["idle", "busy", "idle", "busy", "idle"]
    else:
        rounds = ["busy", "busy"] if h.quick else ["busy", "busy", "busy", "idle"]
    stopped_with_records = 0
    burst = 100000 if h.quick else 200000
    for i, kind in enumerate(rounds):
        st = None
        if kind == "idle":
            conn = Conn(c, f"round {i + 1} idle")
            conn.send_lines(2000)
            conn.close()
            wait_until(lambda: (c.sub.poll(), conn.delivered() and c.bridge.metric("spool_records") == 0)[1], 60)
            time.sleep(0.3)  # every record acknowledged, the watermark on disk
        else:
            # Busy: reading flat out (at most `burst` lines), publishing behind, a backlog in the spool.
            st = Streamer(c, rate=0, label=f"round {i + 1} busy", limit=burst)
            st.start()
            wait_until(lambda: (c.bridge.metric("spool_records") or 0) > 20000 or st.sent >= burst, 10, 0.05)
        m = c.bridge.metrics()
        depth = Bridge.pick(m, "spool_records")
        before = c.bridge.log_text().count("Stopping with records still in the spool")
        result = []
        held = None
        if st is None:
            result.append(c.bridge.stop(sig))
        else:
            held = c.fault_on(st, f"bridge {sig.name}", lambda: result.append(c.bridge.stop(sig)))
        rc, took = result[0]
        after = c.bridge.log_text().count("Stopping with records still in the spool")
        stopped_with_records += after - before
        c.note(f"round {i + 1} {kind}: {sig.name} with {int(depth or 0):,} records in the spool, frames in "
               f"{int(Bridge.pick(m, 'frames_in_total') or 0):,}"
               + (f", {held:,} bytes of the feed's in the kernel's socket queues" if held is not None else "")
               + f"; exit {rc} after {took:.1f} s"
               + ("; 'Stopping with records still in the spool'" if after > before else ""))
        if kind == "idle":
            c.check(depth == 0, f"round {i + 1} idle: the spool was empty (every record acknowledged) at the stop ({depth})")
        elif sig == signal.SIGTERM:
            c.check(depth, f"round {i + 1} busy: records in the spool at the stop ({int(depth or 0):,})")
        if sig == signal.SIGTERM:
            c.check(rc == 0 and took < (3 if kind == "idle" else 12), f"round {i + 1} {kind}: SIGTERM exit {rc} in {took:.1f} s")
        time.sleep(0.3)
        c.bridge.start()
        if st is not None:
            time.sleep(1.0)  # the feed reconnects and streams into the restarted bridge
            st.stop()
            c.check(st.error is None, f"round {i + 1}: the feed reconnected to the restarted bridge ({st.error or 'ok'})")
        c.fresh_batch(500, label=f"round {i + 1} after the restart")
    c.settle()
    c.note(f"{stopped_with_records} stop(s) left records in the spool for the next start")
    c.fresh_batch()
    return c


def case_feed_cut(h, name):
    """Feeds that close in the middle of a line (policy partial_on_close drop): count the partial lines, lose nothing."""
    c = Case(h, name)
    c.setup()
    st = Streamer(c, rate=3000, label="background stream")
    st.start()
    cuts = 5 if h.quick else 20
    for i in range(cuts):
        conn = Conn(c, f"cut {i + 1}")
        conn.send_lines(h.rng.randint(1, 2000))
        partial = (b"P%09d-partial" % i)[:h.rng.randint(1, 17)]
        conn.send_raw(partial)
        conn.close()
        time.sleep(0.05)
    time.sleep(1.0)
    st.stop()
    c.settle()
    partial = c.bridge.metric("drops_total", "partial")
    c.count("partial (policy drop)", partial or 0)
    c.check(partial == cuts, f"{partial} partial lines counted for {cuts} cuts")
    c.check(not c.sub.other.get("partial"), f"no partial line published ({c.sub.other.get('partial', 0)})")
    c.fresh_batch()
    return c


def case_disk_full(h, name):
    """The spool on a 512 KiB tmpfs, the broker down, ~2 MB of lines: backpressure, one error line, nothing lost."""
    c = Case(h, name)
    fs = h.path(name + "-fs")
    h.mount_tmpfs(fs, "512k")
    try:
        c.setup(spool_dir=fs + "/spool")
        c.fresh_batch(200, label="before the disk fills")
        log_before = len(c.bridge.log_text().splitlines())
        c.broker.stop(signal.SIGTERM)
        total = 40000 if not h.quick else 30000
        feeder = Conn(c, "disk-full feed", sndbuf=65536, timeout=300)
        done = threading.Event()

        def feed():
            for _ in range(total // 500):
                if not feeder.send_lines(500, pad=38):   # 49-byte lines
                    break
            feeder.close()
            done.set()
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        last = [-1]

        def stalled():
            n = c.bridge.metric("frames_in_total") or 0
            s = n > 0 and n == last[0]
            last[0] = n
            return s
        wait_until(stalled, 60, 2.0)
        time.sleep(2.0)
        frames_at_stall = c.bridge.metric("frames_in_total")
        accepted = feeder.accepted
        time.sleep(2.0)
        blocked = not done.is_set() and feeder.accepted == accepted
        df = os.statvfs(fs)
        c.note(f"broker down: the bridge stopped reading at {frames_at_stall:,} frames; the feed's kernel had taken "
               f"{accepted // 49:,} of {total:,} lines, and {'blocks' if blocked else 'does not block'}; tmpfs "
               f"{df.f_bfree * df.f_frsize // 1024} KiB free")
        c.check(blocked, "backpressure: the feeding socket blocks while the disk is full")
        c.check(frames_at_stall is not None and frames_at_stall < 500 + total,
                "the bridge stopped reading (spool full) instead of dropping")
        c.broker.start()
        done.wait(180)
        c.check(done.is_set() and not feeder.cut, f"the feed finished once the broker was back ({feeder.lines():,} lines)")
        c.settle(timeout=180)
        new_log = c.bridge.log_text().splitlines()[log_before:]
        disk = [l for l in new_log if re.search(r"(?i)no space|ENOSPC|disk|spool", l) and re.search(r" (warning|error|critical) ", l)]
        noisy = [l for l in new_log if re.search(r" (warning|error|critical) ", l)]
        c.note(f"bridge log during the episode: {len(noisy)} warning/error lines, {len(disk)} about the disk/spool"
               + (f"; first: {disk[0].split('] ', 1)[-1][:200]}" if disk else ""))
        c.check(1 <= len(disk) <= 3, f"one clear disk error in the log, not hundreds ({len(disk)})")
        drops = sum(c.bridge.metric("drops_total", r) or 0 for r in ("spool_error", "spool_full"))
        c.check(drops == 0, f"no frame dropped for spool_error/spool_full ({drops})")
        if not c.fresh_batch():
            # What the spool looks like when it is stuck: its files, the free space, files deleted but still open.
            files = []
            for root, _, names in os.walk(fs):
                files += [f"{os.path.relpath(os.path.join(root, n), fs)} {os.path.getsize(os.path.join(root, n)):,}" for n in names]
            df = os.statvfs(fs)
            held = []
            fd_dir = f"/proc/{c.bridge.proc.pid}/fd"
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if target.startswith(fs):
                    held.append(target.replace(fs, "fs"))
            c.note(f"stuck: tmpfs {df.f_bfree * df.f_frsize // 1024} KiB free; files: {'; '.join(files)}; open: {'; '.join(held)}; "
                   f"spool_records {c.bridge.metric('spool_records')}, frames in {c.bridge.metric('frames_in_total')}, "
                   f"published {c.bridge.metric('frames_published_total')}")
    finally:
        c.teardown()
        h.umount(fs)
    return c


def case_crowd(h, name):
    """2,000 concurrent feed connections, a slowloris peer, a 10 MB line and binary garbage, all at once."""
    c = Case(h, name)
    c.setup(route_extra="max_connections 4096")
    nconns = 500 if h.quick else 2000
    slow_every = 1.0 if h.quick else 2.0
    # The slowloris peer: one line, a byte every few seconds.
    slow = Conn(c, "slowloris", timeout=120)
    slow_seq = c.alloc(1)
    slow_done = threading.Event()

    def slowloris():
        data = b"L%09d\n" % slow_seq
        for i in range(len(data)):
            if not slow.send_raw(data[i:i + 1]):
                break
            if i < len(data) - 1:
                time.sleep(slow_every)
        else:
            slow.batches.append((slow_seq, 1, now()))
        slow.close()
        slow_done.set()
    threading.Thread(target=slowloris, daemon=True).start()
    t0 = now()
    conns = [Conn(c, "crowd", timeout=30) for _ in range(nconns)]
    c.note(f"{nconns} connections open in {now() - t0:.1f} s")
    for conn in conns:
        conn.send_lines(20)
    wait_until(lambda: (c.bridge.metric("open_connections") or 0) >= nconns + 1, 20)
    open_now = c.bridge.metric("open_connections")
    c.check(open_now is not None and open_now >= nconns + 1, f"{open_now} feed connections open at once (want {nconns + 1})")
    # A 10 MiB line between ordinary ones on the same connection (max_frame 64 KiB, oversize discard).
    big = Conn(c, "10 MB line", timeout=120)
    big.send_lines(5)
    big.send_raw(b"x" * (10 << 20) + b"\n")
    big.send_lines(5)
    big.close()
    # Binary garbage: random bytes, then close.
    garbage = h.rng.randbytes(1 << 20)
    g = Conn(c, "garbage")
    g.send_raw(garbage)
    g.close()
    g_frames = garbage.count(b"\n")
    g_tail = bool(garbage.rsplit(b"\n", 1)[-1])
    for conn in conns:
        conn.send_lines(20)
    for conn in conns:
        conn.close()
    others = [x for x in c.conns if x is not slow]
    ok = wait_until(lambda: (c.sub.poll(), all(x.delivered() for x in others))[1], 90, 0.25)
    c.check(ok and not slow_done.is_set(), f"every other feed's lines delivered while the slowloris line was still "
            f"incomplete ({'yes' if ok else 'no'}, slowloris {'done' if slow_done.is_set() else 'still sending'})")
    slow_done.wait(15 * slow_every + 10)
    c.settle()
    c.check(slow.delivered() and slow.lines() == 1, "the slowloris line arrived in one piece")
    m = c.bridge.metrics()
    oversize = int(Bridge.pick(m, "drops_total", "oversize") or 0)
    partial = int(Bridge.pick(m, "drops_total", "partial") or 0)
    rejected = int(Bridge.pick(m, "connections_rejected_total") or 0)
    frames_in = int(Bridge.pick(m, "frames_in_total") or 0)
    legit = sum(x.lines() for x in c.conns)
    c.count("oversize", oversize)
    c.count("partial", partial)
    c.count("garbage frames published", frames_in - legit)
    c.check(oversize == 1, f"the 10 MB line counted as oversize ({oversize})")
    c.check(partial == int(g_tail), f"partial lines {partial} (the garbage's unterminated tail: {int(g_tail)})")
    c.check(rejected == 0, f"no connection refused ({rejected})")
    got = sum(c.sub.other.values())
    c.note(f"garbage: 1 MiB, {g_frames} newlines; the bridge read {frames_in - legit} frames beyond the numbered lines; "
           f"the subscriber got {got} payloads that are not numbered lines")
    c.check(frames_in - legit == g_frames == got, "every garbage frame was read and published as it was (no crash, no mix-up)")
    c.fresh_batch()
    c.check(c.bridge.alive(), "the bridge is still running")
    return c


def case_sighup(h, name):
    """SIGHUP reloads during a stream: unchanged, in-place changes, a broken file, route-restarting changes."""
    c = Case(h, name)
    c.setup()
    st = Streamer(c, rate=4000)
    st.start()
    steps = [
        ("unchanged file", {}, False),
        ("topic soak/hup-b (in place)", {"topic": "soak/hup-b"}, False),
        ("a file that does not parse (kept running)", {"topic": "soak/hup-b"}, True),
        ("topic soak/hup-a (in place)", {"topic": "soak/hup-a"}, False),
        ("max_frame 128KiB (route restart)", {"topic": "soak/hup-a", "route_extra": "max_frame 128KiB"}, False),
        ("max_frame 64KiB (route restart)", {"topic": "soak/hup-a", "route_extra": "max_frame 64KiB"}, False),
    ]
    if not h.quick:
        steps += [("unchanged file", {"topic": "soak/hup-a"}, False), ("topic soak/data (in place)", {}, False)]
    gap = 1.5 if h.quick else 2.5
    time.sleep(gap)
    for text, kw, broken in steps:
        restarts = "route restart" in text
        c.bridge.write_config(broken=broken, **kw)

        def reload():
            # The stream waits while the bridge reloads: half a second, or until a route restart closes its connection.
            c.bridge.proc.send_signal(signal.SIGHUP)
            port = st.current.sock.getsockname()[1] if st.current else None
            wait_until(lambda: port is None or (tcp_queue(c.bridge.feed_port, port) or (0,))[0] != 1, 2.0 if restarts else 0.5)
        held = c.fault_on(st, "a route restart (SIGHUP)" if restarts else "SIGHUP " + text, reload)
        c.check(c.bridge.alive() and (held is not None) == restarts,
                f"SIGHUP, {text}: still running; the feed's connection {'closed' if held is not None else 'kept'}")
        time.sleep(gap)
    st.stop()
    c.check(st.error is None, f"the feed kept streaming ({st.error or 'ok'})")
    c.settle()
    cut = sum(1 for x in st.conns if x.cut)
    c.note(f"the stream's connection was closed {cut} time(s); lines per topic: "
           + ", ".join(f"{k} {v:,}" for k, v in sorted(c.sub.topics.items())))
    text = c.bridge.log_text()
    reload_lines = [l.split("] ", 1)[-1] for l in text.splitlines() if re.search(r"(?i)reload|SIGHUP|configuration", l)]
    c.note(f"{len(reload_lines)} reload log lines, e.g. " + " | ".join(x[:120] for x in reload_lines[:4]))
    c.fresh_batch()
    return c


CASES = {
    "broker-term": lambda h: case_broker(h, "broker-term", signal.SIGTERM),
    "broker-kill": lambda h: case_broker(h, "broker-kill", signal.SIGKILL),
    "bridge-term": lambda h: case_bridge_stop(h, "bridge-term", signal.SIGTERM),
    "bridge-kill": lambda h: case_bridge_stop(h, "bridge-kill", signal.SIGKILL),
    "feed-cut": lambda h: case_feed_cut(h, "feed-cut"),
    "disk-full": lambda h: case_disk_full(h, "disk-full"),
    "crowd": lambda h: case_crowd(h, "crowd"),
    "sighup": lambda h: case_sighup(h, "sighup"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    names = a.cases or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}; cases: {', '.join(CASES)}")
    if "disk-full" in names and os.getuid() != 0:
        sys.exit("disk-full mounts a tmpfs and needs root; leave it out (name the other cases) to run without root")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192
    if hard != resource.RLIM_INFINITY and hard < want and os.getuid() == 0:
        hard = want
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
    h = Harness(a.work, a.bin, a.quick, a.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    rows = []
    start = now()
    try:
        for n in names:
            log(f"=== {n}")
            case = h.current = None
            try:
                case = CASES[n](h)
                r = row(case, *case.account())
            except Exception as e:  # a case that cannot run is a failed case, and the others still run
                import traceback
                traceback.print_exc()
                case = h.current
                r = {"case": n, "produced": 0, "delivered": 0, "dup": 0, "missing": 0, "broker_loss": 0,
                     "counted": "-", "ok": False, "seconds": 0, "notes": [f"error: {e}"], "checks": []}
                if case is not None:
                    r["notes"] = case.notes + r["notes"]
                    r["checks"] = case.checks
            finally:
                if case is not None:
                    case.teardown()
            rows.append(r)
            log(f"=== {n}: {'PASS' if r['ok'] else 'FAIL'} in {r['seconds']:.0f} s")
    finally:
        h.cleanup()
    print(f"\nmqtt-bridge fault matrix, {datetime.date.today().isoformat()}, {'--quick, ' if a.quick else ''}"
          f"{os.cpu_count()} CPUs, {now() - start:.0f} s\n")
    print("| case | produced | delivered (distinct) | duplicates | missing | broker loss | other counted | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['produced']:,} | {r['delivered']:,} | {r['dup']:,} | {r['missing']:,} | "
              f"{r['broker_loss']:,} | {r['counted']} | {'PASS' if r['ok'] else 'FAIL'} |")
    print()
    for r in rows:
        print(f"{r['case']}:")
        for n in r["notes"]:
            print(f"  - {n}")
        for ok, text in r["checks"]:
            print(f"  {'ok  ' if ok else 'FAIL'} {text}")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
