// Example 5: work queue (push-pull).
//
// A producer pushes jobs to the topic `jobs`. Three workers share them through the shared subscription
// `$share/workers/jobs`: the broker hands each job to one member of the group only (round robin in mosquitto),
// so adding a worker adds capacity. Jobs go at QoS 2, so each is delivered to exactly one worker exactly once.
// Workers fan their results in to `results`, where one collector prints the totals per worker and checks that
// every job was done exactly once. This is ZeroMQ PUSH/PULL, or a RabbitMQ work queue with competing consumers.
//
//     swift run example-work-queue [--broker HOST:PORT]

import ExampleSupport
import Foundation
import Mosquitto

let workers = ["worker-1", "worker-2", "worker-3"]
let jobCount = 30

/// A job: add up the numbers 1…n.
struct Job: Codable, Sendable { var id: Int; var n: Int }
/// What a worker reports.
struct Result: Codable, Sendable { var job: Int; var worker: String; var sum: Int }

func workQueue(_ broker: Example.Broker) async throws {
    // The collector: one subscriber for every result (fan-in).
    let collector = try MQTTClient(configuration: broker.configuration(clientID: "wq-collector"))
    try await collector.connect()
    let results = try await collector.subscribe("results", qos: .atLeastOnce)
    let collecting = Task { () -> [Result] in
        var all: [Result] = []
        for try await m in results {
            let r = try JSONDecoder().decode(Result.self, from: Data(m.payload))
            print("  collector: job \(pad("\(r.job)", 2)) → \(pad("\(r.sum)", 3)) done by \(r.worker)")
            all.append(r)
            if all.count == jobCount { break }
        }
        return all
    }

    // The workers: each subscribes to the same shared subscription, so each job reaches one of them.
    var workerClients: [MQTTClient] = []
    var workerTasks: [Task<Void, any Error>] = []
    for name in workers {
        let client = try MQTTClient(configuration: broker.configuration(clientID: "wq-\(name)"))
        try await client.connect()
        let jobs = try await client.subscribe("$share/workers/jobs", qos: .exactlyOnce)
        workerClients.append(client)
        workerTasks.append(Task {
            for try await m in jobs {
                let job = try JSONDecoder().decode(Job.self, from: Data(m.payload))
                try await Task.sleep(for: .milliseconds(Int.random(in: 10...40)))  // the work
                let result = Result(job: job.id, worker: name, sum: job.n * (job.n + 1) / 2)
                try await client.publish(to: "results", payload: try JSONEncoder().encode(result), qos: .atLeastOnce)
            }
        })
    }
    print("\(workers.count) workers subscribed to $share/workers/jobs; the collector to results")

    // The producer pushes the jobs as fast as the broker takes them.
    let producer = try MQTTClient(configuration: broker.configuration(clientID: "wq-producer"))
    try await producer.connect()
    for id in 1...jobCount {
        try await producer.publish(to: "jobs", payload: try JSONEncoder().encode(Job(id: id, n: id)), qos: .exactlyOnce,
                                   completion: .enqueued)
    }
    await producer.waitUntilAllPublished()
    print("producer: pushed \(jobCount) jobs to jobs at QoS 2")

    let timeout = Task { try await Task.sleep(for: .seconds(10)); results.cancel() }
    let all = try await collecting.value
    timeout.cancel()
    for t in workerTasks { t.cancel() }
    for c in workerClients + [producer, collector] { await c.shutdown() }

    print("\nTotals per worker:")
    let perWorker = Dictionary(grouping: all, by: \.worker)
    for name in workers {
        let done = (perWorker[name] ?? []).map(\.job).sorted()
        print("  \(name): \(pad("\(done.count)", 2)) jobs  \(done.map(String.init).joined(separator: " "))")
    }
    let perJob = Dictionary(grouping: all, by: \.job)
    let missing = (1...jobCount).filter { perJob[$0] == nil }
    let twice = perJob.filter { $0.value.count > 1 }.map(\.key).sorted()
    try check(missing.isEmpty, "jobs never done: \(missing)")
    try check(twice.isEmpty, "jobs done more than once: \(twice)")
    try check(all.allSatisfy { $0.sum == $0.job * ($0.job + 1) / 2 }, "a result is wrong")
    try check(workers.allSatisfy { perWorker[$0] != nil }, "a worker got no job: the shared subscription did not spread the work")
    print("OK: \(jobCount) jobs, each done exactly once, spread over \(workers.count) workers.")
}

await Example.main("example-work-queue", summary: """
    a producer pushes jobs; three workers share them through $share/workers/jobs; one collector totals the results.
    """) { broker, _ in
    try await workQueue(broker)
}
