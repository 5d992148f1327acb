import Foundation
import MessagePackCodable
import Mosquitto
import MosquittoBroker
import MosquittoCodable

/// Issue #19's figures in one run: encode+decode per message (MessagePack vs JSON) for a typical reading, the
/// payload sizes, and QoS 1 throughput of typed streams against raw bytes through a private broker.
///
///     swift run -c release mosquitto-codec-bench [messages-for-throughput] [passes]
struct Reading: Codable, Equatable, Sendable {
    var device: String
    var sequence: Int
    var celsius: Double
    var humidity: Double
    var pressure: Double
    var battery: Int
    var rssi: Int
    var firmware: String
    var status: String
    var timestamp: Int

    static func sample(_ i: Int) -> Reading {
        Reading(device: "greenhouse-07", sequence: i, celsius: 21.5 + Double(i % 100) / 10, humidity: 0.4375, pressure: 1013.25,
                battery: 97, rssi: -61, firmware: "1.4.2", status: "ok", timestamp: 1_700_000_000 + i)
    }
}

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

func codecTimes(iterations: Int) throws {
    let readings = (0 ..< 1000).map(Reading.sample)
    let mpEncoder = MessagePackEncoder(), mpDecoder = MessagePackDecoder()
    let jsonEncoder = JSONEncoder(), jsonDecoder = JSONDecoder()
    let mp = try mpEncoder.encode(readings[0]), json = try jsonEncoder.encode(readings[0])
    print("payload size of one reading: MessagePack \(mp.count) B, JSON \(json.count) B (\(String(format: "%.0f", 100 * Double(mp.count) / Double(json.count)))%)")
    let clock = ContinuousClock()
    for pass in 1 ... 2 {
        var t = clock.now
        for i in 0 ..< iterations {
            let bytes = try mpEncoder.encode(readings[i % 1000])
            blackHole(try mpDecoder.decode(Reading.self, from: bytes))
        }
        let mpTime = clock.now - t
        t = clock.now
        for i in 0 ..< iterations {
            let data = try jsonEncoder.encode(readings[i % 1000])
            blackHole(try jsonDecoder.decode(Reading.self, from: data))
        }
        let jsonTime = clock.now - t
        let mpUS = seconds(mpTime) / Double(iterations) * 1e6, jsonUS = seconds(jsonTime) / Double(iterations) * 1e6
        print(String(format: "pass %d: encode+decode per message: MessagePack %.2f µs, JSON %.2f µs (%d messages each)", pass, mpUS, jsonUS, iterations))
    }
}

func client(_ broker: MosquittoBroker, _ id: String) async throws -> MQTTClient {
    let c = try MQTTClient(configuration: MQTTConfiguration(host: broker.host, port: broker.port, clientID: id))
    try await c.connect()
    return c
}

/// CPU time (user + system) of this process so far, in seconds: both clients, not the broker.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// Publishes `count` readings at QoS 1 and receives them; returns messages per second (publisher start to last
/// received) and the clients' CPU time per message in µs, which a loaded machine disturbs less than wall time.
func throughput(_ broker: MosquittoBroker, count: Int, typed: Bool, pass: Int) async throws -> (rate: Double, cpu: Double) {
    let sub = try await client(broker, "bench-sub-\(pass)-\(typed)")
    let pub = try await client(broker, "bench-pub-\(pass)-\(typed)")
    let topic = "bench/\(pass)/\(typed ? "typed" : "raw")"
    let buffer = SubscriptionBuffer(capacity: count + 10)
    let readings = (0 ..< 1000).map(Reading.sample)
    let consumer: Task<Int, any Error>
    if typed {
        let stream = try await sub.subscribe(topic, as: Reading.self, codec: .messagePack, qos: .atLeastOnce, buffer: buffer)
        consumer = Task {
            var n = 0, sum = 0
            for try await m in stream {
                sum &+= m.value?.sequence ?? 0
                n += 1
                if n == count { break }
            }
            blackHole(sum)
            return n
        }
    } else {
        let stream = try await sub.subscribe([Subscription(topic, qos: .atLeastOnce)], buffer: buffer)
        consumer = Task {
            var n = 0, sum = 0
            for try await m in stream {
                sum &+= m.payload.count
                n += 1
                if n == count { break }
            }
            blackHole(sum)
            return n
        }
    }
    let t0 = ContinuousClock.now
    let cpu0 = cpuSeconds()
    // Raw: the bytes were encoded once, as a program that sends fixed bytes would; typed: every value is encoded.
    let raw = try MessagePackEncoder().encode(readings[0])
    for i in 0 ..< count {
        if typed {
            try await pub.publish(readings[i % 1000], to: topic, codec: .messagePack, completion: .enqueued)
        } else {
            try await pub.publish(MQTTMessage(topic: topic, payload: raw), completion: .enqueued)
        }
    }
    let received = try await consumer.value
    let elapsed = ContinuousClock.now - t0
    let cpu = (cpuSeconds() - cpu0) / Double(count) * 1e6
    precondition(received == count)
    await pub.shutdown()
    await sub.shutdown()
    return (Double(count) / seconds(elapsed), cpu)
}

@main
struct CodecBench {
    static func main() async throws {
        let args = CommandLine.arguments.dropFirst().compactMap { Int($0) }
        let messages = args.first ?? 100_000
        let passes = args.count > 1 ? args[1] : 3
        try codecTimes(iterations: 200_000)
        var configuration = MosquittoBroker.Configuration()
        configuration.maxQueuedMessages = 1_000_000
        let broker = try MosquittoBroker(configuration: configuration)
        try await broker.start()
        var raws: [Double] = [], typeds: [Double] = [], rawCPU: [Double] = [], typedCPU: [Double] = []
        for pass in 1 ... passes {
            let r = try await throughput(broker, count: messages, typed: false, pass: pass)
            let t = try await throughput(broker, count: messages, typed: true, pass: pass)
            raws.append(r.rate)
            typeds.append(t.rate)
            rawCPU.append(r.cpu)
            typedCPU.append(t.cpu)
            print(String(format: "pass %d: QoS 1, %d messages: raw bytes %.0f msg/s (%.1f µs CPU/msg), typed MessagePack %.0f msg/s (%.1f µs CPU/msg), rate ratio %.2f",
                         pass, messages, r.rate, r.cpu, t.rate, t.cpu, t.rate / r.rate))
        }
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        print(String(format: "median: raw %.0f msg/s, typed %.0f msg/s, typed/raw %.2f; CPU per message raw %.1f µs, typed %.1f µs, raw/typed %.2f",
                     median(raws), median(typeds), median(typeds) / median(raws), median(rawCPU), median(typedCPU),
                     median(rawCPU) / median(typedCPU)))
        await broker.shutdown()
    }
}
