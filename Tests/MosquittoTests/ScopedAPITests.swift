import Testing
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport

/// Not Sendable on purpose: the scoped APIs must let a closure on the caller's actor return one.
final class Tally {
    var messages: [String] = []
}

@Suite("Scoped APIs: withClient and withSubscription run on the caller's actor", .timeLimit(.minutes(1 * testTimeScale)))
struct ScopedAPITests {
    @Test("a non-Sendable result comes back from withClient and withSubscription on the main actor")
    func nonSendableResult() async throws {
        try await withBroker { broker in
            let messages = try await Self.onMainActor(config(broker))
            #expect(messages == ["one"])
        }
    }

    @MainActor
    static func onMainActor(_ configuration: MQTTConfiguration) async throws -> [String] {
        let tally: Tally = try await MQTTClient.withClient(configuration) { client in
            MainActor.assertIsolated()
            return try await client.withSubscription([Subscription("scoped/#")]) { stream in
                MainActor.assertIsolated()
                let local = Tally()
                try await client.publish(to: "scoped/a", string: "one")
                for try await message in stream {
                    local.messages.append(message.string ?? "")
                    break
                }
                return local
            }
        }
        return tally.messages
    }
}
