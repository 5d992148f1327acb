#!/usr/bin/env python3
"""Feed -> MQTT -> feed load generator for Benchmarks/bridge-bench.sh.

Connects a reader to the MQTT->feed side first, then a writer to the feed->MQTT side, sends N
sequence-numbered lines ("<seq> <send-ns> <padding>\n"), and reads them back. Prints one JSON line:
frames sent/received, frames per second (first send to last receive), and p50/p99 latency of the
paced latency run.

  bridge-bench.py --in-port P --out-port Q --frames N [--rate R] [--size B]
"""
import argparse, json, socket, threading, time


def connect(port, retries=100):
    for _ in range(retries):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"cannot connect to 127.0.0.1:{port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--in-port", type=int, required=True)
    ap.add_argument("--out-port", type=int, required=True)
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--rate", type=int, default=0, help="frames/s for a paced run (0 = as fast as possible)")
    ap.add_argument("--size", type=int, default=32, help="approximate frame size in bytes")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    reader = connect(a.out_port)
    time.sleep(a.settle)  # let the subscription settle
    writer = connect(a.in_port)
    n = a.frames
    latencies = []
    received = 0
    last_rx = [0.0]
    done = threading.Event()

    def read():
        nonlocal received
        buf = b""
        reader.settimeout(a.timeout)
        try:
            while received < n:
                chunk = reader.recv(1 << 20)
                if not chunk:
                    break
                now = time.monotonic_ns()
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in lines:
                    parts = line.split(b" ", 2)
                    latencies.append(now - int(parts[1]))
                received += len(lines)
                last_rx[0] = time.monotonic()
        except socket.timeout:
            pass
        done.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    pad = b"x" * max(0, a.size - 24)
    start = time.monotonic()
    if a.rate <= 0:
        batch = 500
        for i in range(0, n, batch):
            now = time.monotonic_ns()
            writer.sendall(b"".join(b"%d %d %s\n" % (j, now, pad) for j in range(i, min(n, i + batch))))
    else:
        interval = 1.0 / a.rate
        per_tick = max(1, a.rate // 1000)
        next_t = time.monotonic()
        i = 0
        while i < n:
            now = time.monotonic_ns()
            k = min(per_tick, n - i)
            writer.sendall(b"".join(b"%d %d %s\n" % (j, now, pad) for j in range(i, i + k)))
            i += k
            next_t += interval * k
            d = next_t - time.monotonic()
            if d > 0:
                time.sleep(d)
    done.wait(a.timeout)
    elapsed = (last_rx[0] or time.monotonic()) - start
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] / 1e6, 3) if latencies else None

    print(json.dumps({"frames": n, "received": received, "seconds": round(elapsed, 3),
                      "frames_per_s": round(received / elapsed) if elapsed > 0 else 0,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99)}))
    writer.close()
    reader.close()


if __name__ == "__main__":
    main()
