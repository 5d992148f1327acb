// Example 2: wildcard subscriber.
//
// One client subscribes twice: `sensors/+/temperature` (one level of wildcard: every device's temperature)
// and `sensors/#` (everything below sensors/). Each subscription is its own stream, so a temperature reading
// arrives on both. The subscriber keeps a live per-device summary and prints it every second.
// Simulated devices publish in the same process so that there is something to watch.
//
//     swift run example-wildcard [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let devices = ["attic", "cellar", "porch"]
let rounds = 12
let interval = Duration.milliseconds(200)

/// What the subscriber knows about one device.
struct DeviceSummary {
    var temperatureCount = 0
    var temperatureSum = 0.0
    var lastTemperature: Double?
    var messages = 0
    var metrics: Set<String> = []
    var status = "?"
}

await Example.main("example-wildcard", summary: """
    subscribes to sensors/+/temperature and sensors/# and prints a live per-device summary.
    """) { broker, _ in
    let subscriber = try MQTTClient(configuration: broker.configuration(clientID: "wildcard-subscriber"))
    try await subscriber.connect()
    // Two streams from one client. `+` matches exactly one level, `#` the level it is on and everything below.
    let temperatures = try await subscriber.subscribe("sensors/+/temperature", qos: .atLeastOnce)
    let everything = try await subscriber.subscribe("sensors/#", qos: .atLeastOnce)
    print("Subscribed to sensors/+/temperature and sensors/#")
    for topic in ["sensors/attic/temperature", "sensors/attic/humidity", "sensors/attic/door/front", "sensors/porch"] {
        let a = MQTTTopic.matches(filter: "sensors/+/temperature", topic: topic) ? "yes" : "no "
        let b = MQTTTopic.matches(filter: "sensors/#", topic: topic) ? "yes" : "no "
        print("  \(pad(topic, 28)) sensors/+/temperature: \(a)   sensors/#: \(b)")
    }

    let summary = Locked([String: DeviceSummary]())
    let temperatureTask = Task {
        for try await m in temperatures {
            let device = String(m.topic.split(separator: "/")[1])
            guard !m.retain, let value = Double(m.string ?? "") else { continue }
            summary.withLock {
                $0[device, default: .init()].temperatureCount += 1
                $0[device, default: .init()].temperatureSum += value
                $0[device, default: .init()].lastTemperature = value
            }
        }
    }
    let everythingTask = Task {
        for try await m in everything where !m.retain {
            let levels = m.topic.split(separator: "/", omittingEmptySubsequences: false)
            guard levels.count >= 3 else { continue }
            let device = String(levels[1])
            let metric = levels.dropFirst(2).joined(separator: "/")
            summary.withLock {
                $0[device, default: .init()].messages += 1
                if metric == "status" { $0[device, default: .init()].status = m.string ?? "?" } else { $0[device, default: .init()].metrics.insert(metric) }
            }
        }
    }

    // The devices: temperature, humidity and, for the attic, a nested topic that only `#` sees.
    let publisher = try MQTTClient(configuration: broker.configuration(clientID: "wildcard-devices"))
    try await publisher.connect()
    let done = Locked(false)
    let publishing = Task {
        defer { done.withLock { $0 = true } }
        var published = 0
        for d in devices { try await publisher.publish(to: "sensors/\(d)/status", string: "online"); published += 1 }
        for round in 1...rounds {
            for (i, d) in devices.enumerated() {
                let t = 18 + Double(i) * 3 + Double(round % 4) * 0.25
                try await publisher.publish(to: "sensors/\(d)/temperature", string: String(format: "%.2f", t))
                try await publisher.publish(to: "sensors/\(d)/humidity", string: String(format: "%.0f", 40 + Double(i * 5)))
                published += 2
            }
            if round % 4 == 0 {
                try await publisher.publish(to: "sensors/attic/door/front", string: round % 8 == 0 ? "closed" : "open")
                published += 1
            }
            try await Task.sleep(for: interval)
        }
        return published
    }

    // The live summary, once a second while the devices publish.
    func show(_ title: String) {
        print(title)
        print("  \(pad("device", 8)) \(pad("status", 8)) \(pad("msgs", 5)) \(pad("temp n", 7)) \(pad("last °C", 8)) \(pad("avg °C", 8)) metrics")
        for (d, s) in summary.value.sorted(by: { $0.key < $1.key }) {
            let last = s.lastTemperature.map { String(format: "%.2f", $0) } ?? "-"
            let avg = s.temperatureCount > 0 ? String(format: "%.2f", s.temperatureSum / Double(s.temperatureCount)) : "-"
            print("  \(pad(d, 8)) \(pad(s.status, 8)) \(pad("\(s.messages)", 5)) \(pad("\(s.temperatureCount)", 7)) \(pad(last, 8)) \(pad(avg, 8)) \(s.metrics.sorted().joined(separator: ","))")
        }
    }
    var tick = 0
    while !done.value {
        try await Task.sleep(for: .seconds(1))
        tick += 1
        show("Live summary after \(tick) s:")
    }
    let published = try await publishing.value
    await publisher.shutdown()

    // Wait for the last messages, then stop both streams.
    _ = await eventually(timeout: .seconds(5)) {
        summary.value.values.reduce(0) { $0 + $1.messages } >= published
    }
    temperatures.cancel()
    everything.cancel()
    _ = await temperatureTask.result
    _ = await everythingTask.result
    await subscriber.shutdown()
    show("Final summary:")

    let s = summary.value
    let received = s.values.reduce(0) { $0 + $1.messages }
    try check(received == published, "sensors/# received \(received) of \(published) messages")
    for d in devices {
        try check(s[d]?.temperatureCount == rounds, "sensors/+/temperature received \(s[d]?.temperatureCount ?? 0) of \(rounds) temperatures from \(d)")
    }
    try check(s["attic"]?.metrics.contains("door/front") == true, "sensors/# did not see the nested topic sensors/attic/door/front")
    print("OK: sensors/# received all \(received) messages; sensors/+/temperature received \(rounds) temperatures per device "
          + "and none of the other metrics.")
}
