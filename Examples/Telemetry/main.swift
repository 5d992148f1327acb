// Example 1: telemetry publisher.
//
// Simulated devices, one process each, publish Codable JSON readings to sensors/<device>/<metric> at QoS 1,
// retained so that the broker always holds each metric's last value. Each device also has a will: when the
// garage device is killed with SIGKILL (no DISCONNECT), the broker publishes `offline` on its status topic.
//
//     swift run example-telemetry [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

/// One reading, as JSON on the wire.
struct Reading: Codable, Sendable {
    var device: String
    var metric: String
    var value: Double
    var unit: String
    /// Counts up from 1 per device and metric, so a reader can see that nothing was lost.
    var seq: Int
    var time: Date
}

let devices = ["boiler", "kitchen", "garage"]
let metrics = [("temperature", "°C", 20.0), ("humidity", "%", 45.0)]
let interval = Duration.milliseconds(250)


/// One device: status `online` (retained), then a reading per metric every 250 ms for `seconds`, then `offline`
/// and a clean DISCONNECT. The will says `offline` for it if it dies before that.
func runDevice(_ name: String, seconds: Double, broker: Example.Broker) async throws {
    var config = broker.configuration(clientID: "telemetry-\(name)")
    config.will = .init(MQTTMessage(topic: "sensors/\(name)/status", string: "offline", qos: .atLeastOnce, retain: true))
    let client = try MQTTClient(configuration: config)
    try await client.connect()
    try await client.publish(to: "sensors/\(name)/status", string: "online", qos: .atLeastOnce, retain: true)

    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    var properties = MessageProperties()
    properties.contentType = "application/json"
    properties.payloadFormat = .utf8

    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    var values = metrics.map { $0.2 + Double(name.count) }
    var seq = 0
    while ContinuousClock.now < deadline {
        seq += 1
        for (i, (metric, unit, _)) in metrics.enumerated() {
            values[i] += Double.random(in: -0.4...0.4)
            let reading = Reading(device: name, metric: metric, value: (values[i] * 100).rounded() / 100, unit: unit,
                                  seq: seq, time: Date())
            try await client.publish(to: "sensors/\(name)/\(metric)", payload: try encoder.encode(reading),
                                     qos: .atLeastOnce, retain: true, properties: properties)
        }
        try? await Task.sleep(for: interval)
    }
    try await client.publish(to: "sensors/\(name)/status", string: "offline", qos: .atLeastOnce, retain: true)
    await client.shutdown()
}

/// Starts the devices as separate processes, watches sensors/#, kills the garage, and checks the result.
func runDemo(_ broker: Example.Broker) async throws {
    let decoder = JSONDecoder()
    decoder.dateDecodingStrategy = .iso8601

    // A monitor that records every live message (retained ones left over from an earlier run are skipped).
    let monitor = try MQTTClient(configuration: broker.configuration(clientID: "telemetry-monitor"))
    try await monitor.connect()
    let stream = try await monitor.subscribe("sensors/#", qos: .atLeastOnce)
    print("Monitor subscribed to sensors/#")
    let reporting = Locked<Set<String>>([])   // devices that have sent a reading
    let live = Task { () -> [String: [MQTTMessage]] in
        var byTopic: [String: [MQTTMessage]] = [:]
        var shown = 0
        for try await m in stream where !m.retain {
            byTopic[m.topic, default: []].append(m)
            if !m.topic.hasSuffix("/status"), let device = m.topic.split(separator: "/").dropFirst().first {
                reporting.withLock { _ = $0.insert(String(device)) }
            }
            if m.topic.hasSuffix("/status") {
                let will = m.topic == "sensors/garage/status" && m.string == "offline" ? "   <- its will, published by the broker" : ""
                print("  \(pad(m.topic, 28)) \(m.string ?? "")\(will)")
            } else if let r = try? decoder.decode(Reading.self, from: Data(m.payload)), shown < 12 || r.seq == 1 {
                shown += 1
                print("  \(pad(m.topic, 28)) #\(r.seq) \(r.value) \(r.unit)")
            }
            if devices.allSatisfy({ byTopic["sensors/\($0)/status"]?.last?.string == "offline" }) {
                break
            }
        }
        return byTopic
    }

    let me = try Example.sibling("example-telemetry")
    print("Starting \(devices.count) devices, one process each: \(devices.joined(separator: ", "))")
    print("boiler and kitchen run for 3 s and then say `offline` themselves; the garage runs until it is killed")
    var children: [String: ChildProgram] = [:]
    for d in devices {
        children[d] = try ChildProgram(me, ["--broker", broker.address, "--device", d, "--seconds", d == "garage" ? "3600" : "3"])
    }
    try await Task.sleep(for: .seconds(2))
    // On a busy machine a process can take longer to start: the garage must be up (its will registered) first.
    _ = await eventually(timeout: .seconds(30)) { reporting.withLock { $0.contains("garage") } }
    print("  … (printing only the first readings)")
    print("Killing the garage device with SIGKILL: no DISCONNECT, so the broker publishes its will")
    kill(children["garage"]!.pid, SIGKILL)
    await children["garage"]!.wait()
    for d in ["boiler", "kitchen"] {
        let code = await children[d]!.wait(timeout: .seconds(10))
        try check(code == 0, "device \(d) exited with \(code): \(children[d]!.output)")
    }

    let finished = Task { try await Task.sleep(for: .seconds(5)); stream.cancel() }
    let byTopic = try await live.value
    finished.cancel()

    // Check 1: QoS 1, nothing lost: per device and metric, every sequence number from 1 to the last arrived.
    var readings = 0
    for d in devices {
        for (metric, _, _) in metrics {
            let seqs = Set((byTopic["sensors/\(d)/\(metric)"] ?? []).compactMap { try? decoder.decode(Reading.self, from: Data($0.payload)).seq })
            let last = seqs.max() ?? 0
            try check(last > 0, "no \(metric) reading arrived from \(d)")
            try check(seqs.count == last, "\(d)/\(metric): \(last - seqs.count) of \(last) readings were lost")
            readings += seqs.count
        }
    }
    // Check 2: the wills. garage: `offline` from its will; the others said `offline` themselves.
    for d in devices {
        let statuses = (byTopic["sensors/\(d)/status"] ?? []).compactMap(\.string)
        try check(statuses == ["online", "offline"], "\(d)'s status went \(statuses), expected online then offline")
    }

    // Check 3: a late subscriber gets the retained last value of every topic at once.
    print("A new subscriber to sensors/# gets the retained last values at once:")
    let late = try MQTTClient(configuration: broker.configuration(clientID: "telemetry-late"))
    try await late.connect()
    let retained = try await late.subscribe("sensors/#", qos: .atLeastOnce)
    var lastValues: [String: MQTTMessage] = [:]
    let wanted = devices.flatMap { d in (["status"] + metrics.map(\.0)).map { "sensors/\(d)/\($0)" } }
    let expected = wanted.count
    let collect = Task { () -> [String: MQTTMessage] in
        var got: [String: MQTTMessage] = [:]
        for try await m in retained where m.retain {
            got[m.topic] = m
            if wanted.allSatisfy({ got[$0] != nil }) { break }
        }
        return got
    }
    let timer = Task { try await Task.sleep(for: .seconds(5)); retained.cancel() }
    lastValues = try await collect.value
    timer.cancel()
    await late.shutdown()
    await monitor.shutdown()
    for (topic, m) in lastValues.sorted(by: { $0.key < $1.key }) where devices.contains(where: { topic.hasPrefix("sensors/\($0)/") }) {
        if let r = try? decoder.decode(Reading.self, from: Data(m.payload)) {
            print("  \(pad(topic, 28)) \(r.value) \(r.unit) (reading #\(r.seq))")
        } else {
            print("  \(pad(topic, 28)) \(m.string ?? "")")
        }
        try check(m.payload == byTopic[topic]?.last?.payload, "the retained value of \(topic) is not the last one published")
    }
    try check(lastValues.count >= expected, "the late subscriber got \(lastValues.count) retained values, expected \(expected)")
    print("OK: \(devices.count) devices published \(readings) readings at QoS 1 and all arrived; "
          + "\(expected) retained last values; the garage's will marked it offline.")
}

await Example.main("example-telemetry", summary: """
    devices publish Codable JSON readings to sensors/<device>/<metric> at QoS 1, retained, \
    with a will that marks a device offline when it dies.
    """) { broker, args in
    if let i = args.firstIndex(of: "--device"), i + 1 < args.count {
        let seconds = args.firstIndex(of: "--seconds").flatMap { $0 + 1 < args.count ? Double(args[$0 + 1]) : nil }
        try await runDevice(args[i + 1], seconds: seconds ?? 3600, broker: broker)
    } else {
        try await runDemo(broker)
    }
}
