// Example 8: UDP datagrams, bridged both ways.
//
// A sender fires datagrams (think: sensors on a LAN, StatsD, syslog over UDP) at `mqtt-bridge`, which publishes
// each datagram as one MQTT message on udp/in/<sender address>. The other way, every message published to
// udp/out leaves the bridge as one datagram to a UDP listener. The bridge is configured with a file, as you
// would run it as a service; the example checks the file with `mqtt-bridge --check` first.
//
//     swift run example-udp-feed [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let datagrams = 20
let outgoing = ["display: 21.5 C", "display: 21.7 C", "led: green", "buzzer: off", "display: 22.0 C"]

func udpFeed(_ broker: Example.Broker) async throws {
    let bridgeExecutable = try Example.sibling("mqtt-bridge")
    let sink = try UDPSocket()             // receives what the bridge sends out
    let bridgePort = try UDPSocket.freePort()  // where the bridge listens for datagrams
    let received = Locked([String]())
    onThread("udp-sink") {
        while let d = sink.receive() { received.withLock { $0.append(d) } }
    }

    let directory = NSTemporaryDirectory() + "example-udp-feed-\(getpid())"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let config = """
        # The broker, with mosquitto's bridge option names.
        address \(broker.host):\(broker.port)
        remote_clientid udp-bridge
        cleansession true
        spool_dir \(directory)/spool

        # One route, both ways: datagrams in on 127.0.0.1:\(bridgePort), datagrams out to 127.0.0.1:\(sink.port).
        route sensors
        mode udp
        direction both
        address 127.0.0.1:\(bridgePort)
        udp_target 127.0.0.1:\(sink.port)
        framing raw
        topic udp/in/{peer}
        subscribe udp/out
        qos 1

        """
    let configFile = directory + "/mqtt-bridge.conf"
    try config.write(toFile: configFile, atomically: true, encoding: .utf8)
    print("mqtt-bridge.conf:")
    for line in config.split(separator: "\n", omittingEmptySubsequences: false).dropLast() { print("  | \(line)") }

    let checker = try ChildProgram(bridgeExecutable, ["--config", configFile, "--check"])
    let checked = await checker.wait()
    print("$ mqtt-bridge --config mqtt-bridge.conf --check\n\(checker.output.trimmingCharacters(in: .whitespacesAndNewlines))")
    try check(checked == 0, "mqtt-bridge --check failed")

    let client = try MQTTClient(configuration: broker.configuration(clientID: "udp-feed-operator"))
    try await client.connect()
    let incoming = try await client.subscribe("udp/in/#", qos: .atLeastOnce)
    let state = try await client.subscribe("mqtt-bridge/udp-bridge/state", qos: .atLeastOnce)
    let messages = Locked([MQTTMessage]())
    let reading = Task {
        for try await m in incoming {
            messages.withLock { $0.append(m) }
            let n = messages.value.count
            if n <= 3 || n == datagrams { print("  MQTT \(m.topic): \(m.string ?? "")") } else if n == 4 { print("  …") }
        }
    }

    print("$ mqtt-bridge --config mqtt-bridge.conf")
    let bridge = try ChildProgram(bridgeExecutable, ["--config", configFile, "--log-level", "warning"])
    var failure: (any Error)?
    do {
        // The bridge binds its UDP port before it connects, and says `1` on its retained state topic once connected.
        var stateValue = ""
        for try await m in state { stateValue = m.string ?? ""; if stateValue == "1" { break } }
        try check(stateValue == "1", "the bridge did not start: \(bridge.output)")
        print("bridge: up (mqtt-bridge/udp-bridge/state = 1)")

        // Datagrams in: each becomes one MQTT message.
        print("sender: \(datagrams) datagrams to 127.0.0.1:\(bridgePort), 20 ms apart")
        let sender = try UDPSocket()
        for seq in 1...datagrams {
            sender.send("sensor=hall seq=\(seq) lux=\(300 + seq * 7)", to: bridgePort)
            try await Task.sleep(for: .milliseconds(20))
        }
        let allIn = await eventually(timeout: .seconds(5)) { messages.value.count >= datagrams }
        try check(allIn, "\(messages.value.count) of \(datagrams) datagrams arrived on MQTT")

        // MQTT out: wait until the bridge's subscription delivers (a probe), then publish the real messages.
        var probed = false
        for _ in 1...50 where !probed {
            try await client.publish(to: "udp/out", string: "probe", qos: .atLeastOnce)
            probed = await eventually(timeout: .milliseconds(200)) { received.value.contains("probe") }
        }
        try check(probed, "messages published to udp/out never came out as datagrams")
        for text in outgoing {
            try await client.publish(to: "udp/out", string: text, qos: .atLeastOnce)
            print("MQTT publish udp/out: \(text)")
        }
        let allOut = await eventually(timeout: .seconds(5)) { received.value.filter { $0 != "probe" }.count >= outgoing.count }
        try check(allOut, "only \(received.value) came out as datagrams")
        for d in received.value where d != "probe" { print("  datagram to 127.0.0.1:\(sink.port): \(d)") }
    } catch {
        failure = error
    }
    let code = await bridge.terminate(grace: .seconds(10))
    sink.stop()
    incoming.cancel()
    state.cancel()
    _ = await reading.result
    await client.shutdown()
    if let failure { throw failure }
    try check(code == 0, "mqtt-bridge exited with \(code): \(bridge.output)")
    print("bridge: stopped with SIGTERM, exit code 0")

    let ins = messages.value
    try check(ins.count == datagrams, "\(ins.count) MQTT messages for \(datagrams) datagrams")
    try check(ins.allSatisfy { $0.topic == "udp/in/127.0.0.1" }, "unexpected topics: \(Set(ins.map(\.topic)))")
    let seqs = ins.compactMap { $0.string?.split(separator: " ")[1].split(separator: "=").last.flatMap { Int($0) } }
    try check(Set(seqs) == Set(1...datagrams), "datagrams \(Set(1...datagrams).subtracting(seqs).sorted()) are missing")
    let outs = received.value.filter { $0 != "probe" }
    try check(outs.sorted() == outgoing.sorted(), "the datagrams sent were \(outs), expected \(outgoing)")
    print("OK: \(datagrams) datagrams became \(datagrams) MQTT messages on udp/in/127.0.0.1; "
          + "\(outgoing.count) MQTT messages on udp/out became \(outgoing.count) datagrams.")
}

await Example.main("example-udp-feed", summary: """
    datagrams bridged into MQTT by mqtt-bridge (configured with a file), and MQTT messages sent back out as datagrams.
    """) { broker, _ in
    try await udpFeed(broker)
}
