// Example 7: a legacy TCP feed, bridged both ways.
//
// A simulated line-oriented device listens on TCP, as old PLCs, GPS receivers and serial-to-TCP gateways do: it
// writes a reading line every 100 ms and echoes back every line it is sent. `mqtt-bridge` dials it, publishes
// each line it reads to devices/plc-1/out, and writes every message published to devices/plc-1/in to the device
// as a line. So MQTT clients read the device and command it without speaking its protocol.
// The bridge runs exactly as you would run it by hand:
//
//     mqtt-bridge -h HOST -p PORT -i plc-1-bridge --tcp-connect 127.0.0.1:DEVICE \
//         --topic devices/plc-1/out --subscribe devices/plc-1/in --framing lf --spool-dir DIR
//
//     swift run example-tcp-feed [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let readings = 20
let commands = ["set valve=open", "set pump=42%", "get firmware", "set valve=closed", "reboot"]

/// The device: one connection at a time; readings out, and an echo of every line in.
func runDevice(_ listener: TCPListener, log: Locked<[String]>) {
    onThread("device") {
        while let connection = listener.nextConnection() {
            log.withLock { $0.append("device: the bridge connected") }
            onThread("device-readings") {
                for seq in 1...readings {
                    let line = String(format: "reading seq=%d temp=%.1f pressure=%.2f", seq, 60 + Double(seq % 7) * 0.5, 1.2 + Double(seq % 3) * 0.01)
                    guard connection.writeLine(line) else { return }
                    usleep(100_000)
                }
            }
            while let line = connection.readLine() {
                log.withLock { $0.append("device: received \"\(line)\"") }
                connection.writeLine("echo \(line)")
            }
        }
    }
}

func tcpFeed(_ broker: Example.Broker) async throws {
    let bridgeExecutable = try Example.sibling("mqtt-bridge")
    let listener = try TCPListener()
    let deviceLog = Locked([String]())
    runDevice(listener, log: deviceLog)
    print("device: listening on 127.0.0.1:\(listener.port) (a reading every 100 ms; echoes every line it gets)")

    // An MQTT client that watches the device's output and the bridge's retained state.
    let client = try MQTTClient(configuration: broker.configuration(clientID: "tcp-feed-operator"))
    try await client.connect()
    let out = try await client.subscribe("devices/plc-1/out", qos: .atLeastOnce)
    let state = try await client.subscribe("mqtt-bridge/plc-1-bridge/state", qos: .atLeastOnce)
    let lines = Locked([String]())
    let reading = Task {
        for try await m in out {
            let line = m.string ?? ""
            lines.withLock { $0.append(line) }
            if line.hasPrefix("echo") || line.hasPrefix("reading seq=1 ") || line.hasPrefix("reading seq=\(readings) ") {
                print("  MQTT devices/plc-1/out: \(line)")
            }
        }
    }

    let spool = NSTemporaryDirectory() + "example-tcp-feed-spool-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: spool) }
    let arguments = ["-h", broker.host, "-p", "\(broker.port)", "-i", "plc-1-bridge",
                     "--tcp-connect", "127.0.0.1:\(listener.port)", "--topic", "devices/plc-1/out",
                     "--subscribe", "devices/plc-1/in", "--framing", "lf", "--spool-dir", spool, "--log-level", "warning"]
    print("$ mqtt-bridge \(arguments.joined(separator: " "))")
    let bridge = try ChildProgram(bridgeExecutable, arguments)
    var failure: (any Error)?
    do {
        // Ready when the bridge says so on its retained state topic (`1`) and has dialled the device.
        let ready = await eventually(timeout: .seconds(10)) {
            deviceLog.value.contains("device: the bridge connected")
        }
        var stateValue = ""
        for try await m in state { stateValue = m.string ?? ""; if stateValue == "1" { break } }
        try check(ready && stateValue == "1", "the bridge did not start: \(bridge.output)")
        print("bridge: connected to the broker and to the device (mqtt-bridge/plc-1-bridge/state = 1)")

        // The bridge subscribed as it connected; a ping shows that commands get through before the real ones go.
        var pinged = false
        for _ in 1...50 where !pinged {
            try await client.publish(to: "devices/plc-1/in", string: "ping", qos: .atLeastOnce)
            pinged = await eventually(timeout: .milliseconds(200)) { lines.value.contains("echo ping") }
        }
        try check(pinged, "commands published to devices/plc-1/in never reached the device")

        for command in commands {
            print("MQTT publish devices/plc-1/in: \(command)")
            try await client.publish(to: "devices/plc-1/in", string: command, qos: .atLeastOnce)
            try await Task.sleep(for: .milliseconds(150))
        }
        let complete = await eventually(timeout: .seconds(10)) {
            let l = lines.value
            return commands.allSatisfy { l.contains("echo \($0)") } && l.contains { $0.hasPrefix("reading seq=\(readings) ") }
        }
        try check(complete, "not everything came back through the bridge: \(lines.value)")
    } catch {
        failure = error
    }
    let code = await bridge.terminate(grace: .seconds(10))  // SIGTERM: the bridge drains its spool and stops
    listener.stop()
    out.cancel()
    state.cancel()
    _ = await reading.result
    await client.shutdown()
    if let failure { throw failure }
    try check(code == 0, "mqtt-bridge exited with \(code): \(bridge.output)")
    print("  (\(readings - 2) more readings not shown)")
    print("bridge: stopped with SIGTERM, exit code 0")

    let l = lines.value
    let seqs = l.filter { $0.hasPrefix("reading ") }.compactMap { $0.split(separator: " ")[1].split(separator: "=").last.flatMap { Int($0) } }
    try check(seqs == Array(1...readings), "the device's readings arrived as \(seqs), expected 1…\(readings) in order")
    let device = deviceLog.value.filter { $0.hasPrefix("device: received") }
    try check(device.map { $0.replacingOccurrences(of: "device: received ", with: "") }.filter { $0 != "\"ping\"" }
              == commands.map { "\"\($0)\"" }, "the device received \(device)")
    for command in commands {
        try check(l.filter { $0 == "echo \(command)" }.count == 1, "the echo of \"\(command)\" arrived \(l.filter { $0 == "echo \(command)" }.count) times")
    }
    print("OK: all \(readings) readings reached MQTT in order; all \(commands.count) commands reached the device "
          + "once, in order, and their echoes came back.")
}

await Example.main("example-tcp-feed", summary: """
    a line-oriented TCP device bridged into MQTT by mqtt-bridge, with commands going back to it.
    """) { broker, _ in
    try await tcpFeed(broker)
}
