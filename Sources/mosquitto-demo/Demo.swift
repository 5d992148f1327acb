import Foundation
import Logging
import Mosquitto
import MosquittoBroker

/// The README's demo: telemetry from simulated devices on `sensors/<device>/<metric>`, read back by a
/// wildcard subscriber, on a private mosquitto broker the demo starts and stops itself.
///
///     swift run mosquitto-demo [--seconds N] [--broker HOST:PORT]
@main
struct Demo {
    static func main() async {
        var seconds = 5.0
        var external: (String, Int)?
        var args = CommandLine.arguments.dropFirst()
        while let a = args.popFirst() {
            switch a {
            case "--seconds": seconds = Double(args.popFirst() ?? "") ?? seconds
            case "--broker":
                let parts = (args.popFirst() ?? "").split(separator: ":")
                guard parts.count == 2, let port = Int(parts[1]) else {
                    printError("mosquitto-demo: --broker takes HOST:PORT, for example --broker 127.0.0.1:1883")
                    exit(1)
                }
                external = (String(parts[0]), port)
            case "-h", "--help":
                print("""
                mosquitto-demo: simulated devices publish telemetry on sensors/<device>/<metric>;
                a wildcard subscriber prints what arrives. Runs a private mosquitto unless --broker is given.

                  --seconds N          how long the devices publish (default 5)
                  --broker HOST:PORT   use this broker instead of starting a private one
                """)
                return
            default:
                printError("mosquitto-demo: unknown option '\(a)'; try --help")
                exit(1)
            }
        }
        do {
            try await run(seconds: seconds, external: external)
        } catch {
            printError("mosquitto-demo: \(error)")
            exit(1)
        }
    }

    static func run(seconds: Double, external: (String, Int)?) async throws {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .warning
            return h
        }
        var broker: MosquittoBroker?
        let host: String
        let port: Int
        if let external {
            (host, port) = external
            print("Using the broker at \(host):\(port)")
        } else {
            let b = try MosquittoBroker()
            try await b.start()
            broker = b
            (host, port) = (b.host, b.port)
            print("Started a private mosquitto on \(host):\(port) (\(b.directory))")
        }
        do {
            try await demo(host: host, port: port, seconds: seconds)
        } catch {
            await broker?.shutdown()
            throw error
        }
        if let broker {
            await broker.shutdown()
            print("Stopped the private broker.")
        }
    }

    static func demo(host: String, port: Int, seconds: Double) async throws {

        // The wildcard subscriber: everything under sensors/, and temperatures on their own stream.
        let monitor = try MQTTClient(configuration: .init(host: host, port: port, clientID: "demo-monitor"))
        try await monitor.connect()
        let everything = try await monitor.subscribe("sensors/#", qos: .atLeastOnce)
        let temperatures = try await monitor.subscribe("sensors/+/temperature", qos: .atLeastOnce)
        print("Subscribed to sensors/# and sensors/+/temperature\n")

        let printer = Task {
            var count = 0
            for try await m in everything {
                count += 1
                let flag = m.retain ? " (retained)" : ""
                print("  \(m.topic.padding(toLength: 32, withPad: " ", startingAt: 0)) \(m.string ?? "<\(m.payload.count) bytes>")\(flag)")
            }
            return count
        }
        let summary = Task { () -> [String: (Int, Double)] in
            var perDevice: [String: (count: Int, sum: Double)] = [:]
            for try await m in temperatures {
                let device = m.topic.split(separator: "/")[1]
                if let v = Double(m.string ?? "") {
                    perDevice[String(device), default: (0, 0)].count += 1
                    perDevice[String(device), default: (0, 0)].sum += v
                }
            }
            return perDevice.mapValues { ($0.count, $0.sum) }
        }

        // Three simulated devices, each with a will that marks it offline if it dies.
        let devices = ["boiler", "kitchen", "garage"]
        let published = try await withThrowingTaskGroup(of: Int.self) { group in
            for (i, device) in devices.enumerated() {
                group.addTask {
                    var config = MQTTConfiguration(host: host, port: port, clientID: "demo-\(device)")
                    config.will = .init(MQTTMessage(topic: "sensors/\(device)/status", string: "offline", qos: .atLeastOnce, retain: true))
                    let client = try MQTTClient(configuration: config)
                    try await client.connect()
                    try await client.publish(to: "sensors/\(device)/status", string: "online", retain: true)
                    var n = 1
                    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
                    var temperature = 18.0 + Double(i) * 2
                    while ContinuousClock.now < deadline {
                        temperature += Double.random(in: -0.3...0.3)
                        let humidity = 40 + Double.random(in: -5...5)
                        var props = MessageProperties()
                        props.contentType = "text/plain"
                        try await client.publish(to: "sensors/\(device)/temperature", string: String(format: "%.2f", temperature), properties: props)
                        try await client.publish(to: "sensors/\(device)/humidity", string: String(format: "%.1f", humidity))
                        n += 2
                        try await Task.sleep(for: .milliseconds(500))
                    }
                    try await client.publish(to: "sensors/\(device)/status", string: "offline", retain: true)
                    n += 1
                    await client.shutdown()
                    return n
                }
            }
            return try await group.reduce(0, +)
        }
        try await Task.sleep(for: .milliseconds(300))
        everything.cancel()
        temperatures.cancel()
        let received = try await printer.value
        let perDevice = try await summary.value
        await monitor.shutdown()
        print("\nSummary: the devices published \(published) messages; the wildcard subscriber received \(received).")
        for (device, (count, sum)) in perDevice.sorted(by: { $0.key < $1.key }) {
            print("  \(device): \(count) temperature readings, average \(String(format: "%.2f", sum / Double(max(count, 1)))) °C")
        }
        if received != published {
            throw MQTTError(.connectionLost, "The subscriber received \(received) of \(published) messages.")
        }
    }
}

func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}
