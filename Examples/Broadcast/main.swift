// Example 3: broadcast publish-subscribe.
//
// A publisher announces which hat each cat wears, on a topic named after the cat: cats/<cat>/hat.
// Two subscribers each listen to the cats they care about; a cat both care about reaches both (broadcast).
// A message on a topic nobody listens to simply goes nowhere: it is not queued and not retained,
// so even a subscriber that arrives later never sees it. This is Redis PUBLISH/SUBSCRIBE and ZeroMQ PUB/SUB.
//
//     swift run example-broadcast [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let cats = ["felix", "tom", "luna", "oscar"]
let hats = ["fez", "top hat", "beret", "sombrero", "bowler", "beanie"]
let listeners: [(name: String, cats: [String])] = [("alice", ["felix", "tom"]), ("bob", ["tom", "luna"])]
let rounds = 3

func broadcast(_ broker: Example.Broker) async throws {
    // The subscribers: one client each, one subscription per cat they care about.
    var clients: [MQTTClient] = []
    var tasks: [Task<[String], any Error>] = []
    var streams: [MessageStream] = []
    for listener in listeners {
        let client = try MQTTClient(configuration: broker.configuration(clientID: "broadcast-\(listener.name)"))
        try await client.connect()
        // QoS 0, like Redis PUBLISH: fire and forget. One stream for the cats this listener cares about.
        let stream = try await client.subscribe(listener.cats.map { Subscription("cats/\($0)/hat", qos: .atMostOnce) })
        print("\(listener.name) listens to \(listener.cats.map { "cats/\($0)/hat" }.joined(separator: ", "))")
        clients.append(client)
        streams.append(stream)
        tasks.append(Task {
            var heard: [String] = []
            for try await m in stream {
                let line = "\(m.topic.split(separator: "/")[1]) wears a \(m.string ?? "?")"
                print("    \(listener.name) heard: \(line)")
                heard.append(line)
            }
            return heard
        })
    }
    print("Nobody listens to cats/oscar/hat.\n")

    // The publisher: every cat gets a new hat each round.
    let publisher = try MQTTClient(configuration: broker.configuration(clientID: "broadcast-publisher"))
    try await publisher.connect()
    var announced: [String: [String]] = [:]
    for round in 0..<rounds {
        for (i, cat) in cats.enumerated() {
            let hat = hats[(round * cats.count + i) % hats.count]
            let line = "\(cat) wears a \(hat)"
            let audience = listeners.filter { $0.cats.contains(cat) }.map(\.name)
            print("publisher: \(line)\(audience.isEmpty ? "   (nobody listens: it goes nowhere)" : "")")
            try await publisher.publish(to: "cats/\(cat)/hat", string: hat, qos: .atMostOnce)
            announced[cat, default: []].append(line)
            try await Task.sleep(for: .milliseconds(80))
        }
    }

    // A latecomer subscribes to oscar's topic after the fact: nothing was kept for it.
    let latecomer = try MQTTClient(configuration: broker.configuration(clientID: "broadcast-latecomer"))
    try await latecomer.connect()
    let late = try await latecomer.subscribe("cats/oscar/hat", qos: .atMostOnce)
    let lateTask = Task { var n = 0; for try await _ in late { n += 1 }; return n }

    // Wait until both subscribers heard what they should, then stop.
    let expected = listeners.map { l in l.cats.flatMap { announced[$0] ?? [] } }
    _ = await eventually(timeout: .seconds(5)) { streams.enumerated().allSatisfy { $0.element.receivedCount >= expected[$0.offset].count } }
    try await Task.sleep(for: .milliseconds(300))
    for s in streams { s.cancel() }
    late.cancel()
    var heard: [[String]] = []
    for t in tasks { heard.append(try await t.value) }
    let lateCount = try await lateTask.value
    for c in clients + [publisher, latecomer] { await c.shutdown() }

    print("")
    for (i, listener) in listeners.enumerated() {
        try check(heard[i].sorted() == expected[i].sorted(),
                  "\(listener.name) heard \(heard[i]) but should have heard \(expected[i])")
        print("\(listener.name) heard \(heard[i].count) announcements, all about \(listener.cats.joined(separator: " and "))")
    }
    try check(lateCount == 0, "a latecomer to cats/oscar/hat received \(lateCount) old announcements")
    print("A latecomer to cats/oscar/hat received nothing: messages without subscribers are not kept.")
    print("OK: every announcement reached exactly the subscribers of its cat; tom's reached both; oscar's reached nobody.")
}

await Example.main("example-broadcast", summary: """
    a publisher announces which hat each cat wears on cats/<cat>/hat; two subscribers each hear only \
    the cats they listen to.
    """) { broker, _ in
    try await broadcast(broker)
}
