// mosquitto-bench-swift: the reference workload through the Swift library, as a minimal program.
//
// The counterpart of mosquitto-bench-c, line for line: one process, one publisher and one subscriber; the
// publisher publishes COUNT messages as fast as the library lets it (with the bounded outgoing queue:
// `completion: .enqueued` suspends only while 1,000 messages are queued), the subscriber counts arrivals.
// Like the C program it uses only the library and the C runtime (no Foundation), so the peak memory compares
// the two libraries, not their programs' extras.
//
//   mosquitto-bench-swift HOST PORT QOS COUNT SIZE [5|311] [network|pool|unbatched|ws|ws-pub|ws-sub|outbox-interval|outbox-always] [PLAINPORT]
//
// By default the publishing task and the counting task run on their client's network thread
// (`Task(executorPreference: client.executor)`), where the C program's callbacks run; "pool" runs them on the
// global concurrent executor instead, as plain `Task { }` does; "unbatched" runs them on the network thread with
// the library's socket batching off (`batchesSocketIO = false`: libmosquitto's own reads and writes); "ws" runs them
// on the network thread with both clients over WebSockets (PORT is then the broker's websockets listener);
// "ws-pub"/"ws-sub" with only the publisher or the subscriber over WebSockets, the other on PLAINPORT;
// "outbox-interval"/"outbox-always" on the network thread with the publisher's durable outbox in a fresh directory
// under /tmp (fsync every second, or after every append), publishing with `completion: .stored`.
//
// Prints one line of JSON: {"impl":"swift","qos":Q,"messages":N,"received":R,"seconds":S,"rate":R/S,"peak_rss_kb":K,
// "cpu_ms":T}, T being the process's CPU time (user + system, all threads, connecting included).
import Mosquitto
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Peak resident set of this process image (VmHWM), read as the C program reads it.
func peakResidentKiB() -> Int {
    guard let f = fopen("/proc/self/status", "r") else { return -1 }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), f) != nil {
        if strncmp(line, "VmHWM:", 6) == 0 {
            return line.withUnsafeBufferPointer { atol($0.baseAddress! + 6) }
        }
    }
    return -1
}

/// CPU time (user + system) of the whole process so far, in milliseconds, read as the C program reads it.
func cpuMilliseconds() -> Double {
    var ru = rusage()
    #if canImport(Glibc)
    let who = __rusage_who_t(RUSAGE_SELF.rawValue)
    #else
    let who = RUSAGE_SELF
    #endif
    guard getrusage(who, &ru) == 0 else { return -1 }
    return Double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + Double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3
}

func printError(_ text: String) {
    var text = text + "\n"
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// The measurement. Not on the main actor (as top-level code is): a publisher there would hop to the main
/// queue and back on every `await`.
nonisolated func run(_ args: [String]) async -> Int32 {
    guard args.count >= 6, let port = Int(args[2]), let qosValue = UInt8(args[3]), let level = QoS(rawValue: qosValue),
          let count = Int(args[4]), let size = Int(args[5]) else {
        printError("usage: mosquitto-bench-swift HOST PORT QOS COUNT SIZE [5|311] [network|pool|unbatched|ws|ws-pub|ws-sub|outbox-interval|outbox-always] [PLAINPORT]")
        return 1
    }
    let host = args[1]
    let version: MQTTProtocolVersion = args.count > 6 && args[6] == "311" ? .v3_1_1 : .v5
    // Where the publishing and the counting tasks run: on each client's network thread (`client.executor`), as
    // the C program's callbacks do, or on Swift's global concurrent executor ("pool").
    let mode = args.count > 7 ? args[7] : "network"
    let onNetworkThread = mode != "pool"
    let batched = mode != "unbatched"
    // "ws": both clients over WebSockets; "ws-pub"/"ws-sub": only that one (PORT is the websockets listener, the
    // other client uses PLAINPORT, an eighth argument), to see which direction costs.
    let wsPub = mode == "ws" || mode == "ws-pub", wsSub = mode == "ws" || mode == "ws-sub"
    let plainPort = args.count > 8 ? Int(args[8]) ?? port : port
    let topic = "bench/swift/\(getpid())/\(qosValue)"
    do {
        var sc = MQTTConfiguration(host: host, port: wsSub || !wsPub ? port : plainPort, clientID: "bench-swift-sub", protocolVersion: version)
        sc.batchesSocketIO = batched
        sc.transport = wsSub ? .webSockets(.init()) : .tcp
        let sub = try MQTTClient(configuration: sc)
        try await sub.connect()
        let stream = try await sub.subscribe([Subscription(topic, qos: level)],
                                             buffer: .init(capacity: 10_000, overflow: .backpressure(maxWait: .seconds(30))))
        var pc = MQTTConfiguration(host: host, port: wsPub || !wsSub ? port : plainPort, clientID: "bench-swift-pub", protocolVersion: version)
        pc.maximumQueuedMessages = 1000
        pc.batchesSocketIO = batched
        pc.transport = wsPub ? .webSockets(.init()) : .tcp
        var outboxDirectory: String?
        if mode.hasPrefix("outbox-") {
            var template = Array("/tmp/bench-outbox-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { printError("mkdtemp failed"); return 1 }
            let dir = String(cString: made)
            outboxDirectory = dir
            pc.outbox = .init(directory: dir, fsync: mode == "outbox-always" ? .always : .interval(.seconds(1)))
        }
        defer {
            if let dir = outboxDirectory {
                // The outbox's files: a few segments, the watermark and the lock.
                if let d = opendir(dir) {
                    while let e = readdir(d) {
                        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                        if name != "." && name != ".." { unlink(dir + "/" + name) }
                    }
                    closedir(d)
                }
                rmdir(dir)
            }
        }
        let completion: PublishCompletion = outboxDirectory == nil ? .enqueued : .stored
        let pub = try MQTTClient(configuration: pc)
        try await pub.connect()

        let clock = ContinuousClock()
        let start = clock.now
        let reader = Task(executorPreference: onNetworkThread ? sub.executor : nil) { () -> (Int, ContinuousClock.Instant) in
            var got = 0
            for try await _ in stream {
                got += 1
                if got == count { break }
            }
            return (got, clock.now)
        }
        let payload = [UInt8](repeating: UInt8(ascii: "x"), count: size)
        let publisher = Task(executorPreference: onNetworkThread ? pub.executor : nil) {
            for _ in 0..<count {
                try await pub.publish(MQTTMessage(topic: topic, payload: payload, qos: level), completion: completion)
            }
            return seconds(clock.now - start)
        }
        let published = try await publisher.value
        // Wait for the last message, or 60 s without completion.
        let timeout = Task {
            try await Task.sleep(for: .seconds(60))
            stream.cancel()
        }
        let (got, last) = try await reader.value
        timeout.cancel()
        let elapsed = got == count ? seconds(last - start) : seconds(clock.now - start)
        print("{\"impl\":\"\(mode == "pool" ? "swift-pool" : mode == "unbatched" ? "swift-unbatched" : mode.hasPrefix("ws") || mode.hasPrefix("outbox") ? "swift-\(mode)" : "swift")\",\"qos\":\(qosValue),\"messages\":\(count),\"received\":\(got),\"seconds\":\(elapsed),\"publish_seconds\":\(published),\"rate\":\(Double(got) / elapsed),\"peak_rss_kb\":\(peakResidentKiB()),\"cpu_ms\":\(cpuMilliseconds())}")
        await pub.shutdown()
        await sub.shutdown()
        return got >= count ? 0 : 2
    } catch {
        printError("mosquitto-bench-swift: \(error)")
        return 1
    }
}

exit(await run(CommandLine.arguments))
