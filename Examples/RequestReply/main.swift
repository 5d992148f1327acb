// Example 4: request-reply.
//
// A service answers requests on service/echo. Each request carries, as MQTT 5 properties, the topic to answer on
// (Response Topic) and an opaque token (Correlation Data) that the reply must carry back; `client.request` sets both
// and matches the reply, `client.serveRequests` answers. Three callers fire `message #1` … `message #5` at once, all
// on the same request topic, and each gets exactly its own five answers. Then `mqtt-rr` does the same exchange from
// the shell. This is ZeroMQ REQ/REP, or RabbitMQ RPC with reply_to and correlation_id.
//
//     swift build && swift run example-request-reply [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let requestTopic = "service/echo"
let callers = ["alice", "bob", "carol"]
let requestsPerCaller = 5

func requestReply(_ broker: Example.Broker) async throws {
    // The service. serveRequests subscribes, and answers each request on its Response Topic with its Correlation Data.
    let service = try MQTTClient(configuration: broker.configuration(clientID: "rr-service"))
    try await service.connect()
    let served = Locked(0)
    let serving = Task {
        try await service.serveRequests(on: requestTopic, qos: .atLeastOnce) { request in
            let text = request.string ?? ""
            if text != "ping" { served.withLock { $0 += 1 } }   // probes are not counted
            // Take a little time, differently per request, so that replies come back out of order.
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...20)))
            return Array("reply to \(text)".utf8)
        }
    }
    // Wait until the service's subscription is in place: a probe request gets answered. A request sent before the
    // subscription exists goes nowhere (MQTT does not queue for subscribers that do not exist yet), so retry.
    let probe = try MQTTClient(configuration: broker.configuration(clientID: "rr-probe"))
    try await probe.connect()
    var answered = false
    for _ in 0..<20 where !answered {
        answered = (try? await probe.request(MQTTMessage(topic: requestTopic, string: "ping"), timeout: .seconds(1))) != nil
    }
    await probe.shutdown()
    if !answered { throw MQTTError(.timeout, "The service did not answer a probe request within 20 seconds.") }
    print("service: answering requests on \(requestTopic)")

    // The callers, all at once; each sends its five requests concurrently too.
    let results = try await withThrowingTaskGroup(of: (String, [(Int, String)]).self) { group in
        for caller in callers {
            group.addTask {
                let client = try MQTTClient(configuration: broker.configuration(clientID: "rr-\(caller)"))
                try await client.connect()
                let answers = try await withThrowingTaskGroup(of: (Int, String).self) { requests in
                    for n in 1...requestsPerCaller {
                        requests.addTask {
                            let reply = try await client.request(
                                MQTTMessage(topic: requestTopic, string: "message #\(n)", qos: .atLeastOnce), timeout: .seconds(5))
                            let token = reply.properties.correlationData?.prefix(4).map { String(format: "%02x", $0) }.joined() ?? "-"
                            let text = reply.string ?? ""
                            print("  \(pad(caller, 6)) sent \"message #\(n)\"   got \"\(text)\" on \(client.responseTopic) (correlation \(token)…)")
                            return (n, text)
                        }
                    }
                    return try await requests.reduce(into: []) { $0.append($1) }
                }
                await client.shutdown()
                return (caller, answers)
            }
        }
        return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
    }
    for caller in callers {
        let answers = (results[caller] ?? []).sorted { $0.0 < $1.0 }
        try check(answers.count == requestsPerCaller, "\(caller) got \(answers.count) of \(requestsPerCaller) answers")
        for (n, text) in answers {
            try check(text == "reply to message #\(n)", "\(caller)'s request #\(n) got the answer \"\(text)\"")
        }
    }
    print("Each of \(callers.count) callers got its own \(requestsPerCaller) answers, each matching its request.\n")

    // The same exchange from the shell, with mqtt-rr (a drop-in for mosquitto_rr).
    let rr = try Example.sibling("mqtt-rr")
    for n in 1...requestsPerCaller {
        let arguments = ["-h", broker.host, "-p", "\(broker.port)", "-t", requestTopic, "-e", "responses/shell",
                         "-q", "1", "-W", "5", "-m", "message #\(n)"]
        let child = try ChildProgram(rr, arguments)
        let code = await child.wait(timeout: .seconds(10))
        let output = child.output.trimmingCharacters(in: .whitespacesAndNewlines)
        print("$ mqtt-rr \(arguments.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " "))")
        print(output)
        try check(code == 0 && output == "reply to message #\(n)", "mqtt-rr exited with \(code) and printed \"\(output)\"")
    }

    serving.cancel()
    _ = await serving.result
    await service.shutdown()
    let total = callers.count * requestsPerCaller + requestsPerCaller
    try check(served.value == total, "the service answered \(served.value) requests, expected \(total)")
    print("\nOK: the service answered \(total) requests (\(callers.count)×\(requestsPerCaller) from the callers, "
          + "\(requestsPerCaller) from mqtt-rr); every caller got exactly its own answers.")
}

await Example.main("example-request-reply", summary: """
    a service answers `message #1` … `message #5` from several callers at once, with MQTT 5 response topics \
    and correlation data; then mqtt-rr does the same from the shell.
    """) { broker, _ in
    try await requestReply(broker)
}
