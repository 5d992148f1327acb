// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-mosquitto",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Mosquitto", targets: ["Mosquitto"]),
        .library(name: "MosquittoBroker", targets: ["MosquittoBroker"]),
        .library(name: "MQTTBridge", targets: ["MQTTBridge", "MQTTOutbox"]),
        .library(name: "MessagePack", targets: ["MessagePack", "MessagePackCodable"]),
        .library(name: "MosquittoCodable", targets: ["MosquittoCodable"]),
        .executable(name: "mqtt-pub", targets: ["mqtt-pub"]),
        .executable(name: "mqtt-sub", targets: ["mqtt-sub"]),
        .executable(name: "mqtt-rr", targets: ["mqtt-rr"]),
        .executable(name: "mqtt-ws-tunnel", targets: ["mqtt-ws-tunnel"]),
        .executable(name: "mqtt-bridge", targets: ["mqtt-bridge"]),
        .executable(name: "mosquitto-demo", targets: ["mosquitto-demo"]),
        .executable(name: "mosquitto-bench", targets: ["mosquitto-bench"]),
        .executable(name: "mosquitto-bench-c", targets: ["mosquitto-bench-c"]),
        .executable(name: "mosquitto-bench-swift", targets: ["mosquitto-bench-swift"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // The C library, found with pkg-config.
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"]), .brew(["mosquitto"])]
        ),
        // POSIX building blocks the other targets share: a pthread mutex box (LockedValue, which ThreadSanitizer
        // understands), a detached pthread, and posix_spawn of child processes.
        .target(name: "MosquittoPOSIX"),
        // Batched socket I/O under libmosquitto (Sources/CMosquittoIO/mosquitto_io.c says how and why).
        .target(name: "CMosquittoIO", linkerSettings: [.linkedLibrary("dl")]),
        // The durable outbox's store: an append-only, CRC-checked, segmented log with an acknowledged watermark, an
        // fsync policy, backpressure and a lock file. The client library's outbox, mqtt-pub --outbox and
        // mqtt-bridge's spools all use this one implementation.
        .target(
            name: "MQTTOutbox",
            dependencies: ["MosquittoPOSIX", .product(name: "Logging", package: "swift-log")]
        ),
        // The one parser of `-L` style mqtt:// URLs, shared by the library and the CLIs (pure Swift, no Foundation).
        .target(name: "MQTTURLParser"),
        // MessagePack: the values, a canonical writer, a bounds-checked reader and JSON conversion, in pure Swift
        // without Foundation (the CLIs link it); and its Codable encoder and decoder, which need Date and Data.
        .target(name: "MessagePack"),
        .target(name: "MessagePackCodable", dependencies: ["MessagePack"]),
        // MQTT over WebSockets for libmosquitto 2.0.11, which has no WebSockets client: a private Unix socket per
        // connection attempt, carried to the broker by a SwiftNIO WebSocket client (wss with NIOSSL).
        .target(
            name: "MQTTWebSocket",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The client library.
        .target(
            name: "Mosquitto",
            dependencies: [
                "CMosquitto",
                "CMosquittoIO",
                "MosquittoPOSIX",
                "MQTTOutbox",
                "MQTTURLParser",
                "MQTTWebSocket",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // Typed payloads for the client library: JSON or MessagePack, publishing Encodable values and typed
        // subscription streams (a target of its own, so that the client library stays lean).
        .target(name: "MosquittoCodable", dependencies: ["Mosquitto", "MessagePack", "MessagePackCodable"]),
        // A private mosquitto broker for tests, the demo and the examples.
        .target(
            name: "MosquittoBroker",
            dependencies: [
                "MosquittoPOSIX",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The engine of mqtt-pub, mqtt-sub and mqtt-rr: libmosquitto driven directly, as mosquitto's own clients
        // do, with nothing else linked but the WebSocket tunnel (which starts its threads only for --ws), so a short
        // run starts in about the time mosquitto_pub does.
        .target(name: "MosquittoCLICore", dependencies: ["CMosquitto", "CMosquittoIO", "MQTTURLParser", "MessagePack", "MQTTOutbox", "MosquittoPOSIX", .product(name: "Logging", package: "swift-log")], path: "Sources/MosquittoCLI/Core"),
        // ArgumentParser options in the CLIs' spelling for library clients: mqtt-bridge's broker options (and the flags to
        // name for a library error), -D properties, and mqtt-sub's printing for library messages (MessageFormatter).
        .target(
            name: "MosquittoCLI",
            dependencies: [
                "MosquittoCLICore",
                "Mosquitto",
                "MosquittoPOSIX",
                "MQTTURLParser",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Core"]
        ),
        .executableTarget(name: "mqtt-pub", dependencies: ["MosquittoCLICore"]),
        .executableTarget(name: "mqtt-sub", dependencies: ["MosquittoCLICore"]),
        .executableTarget(name: "mqtt-rr", dependencies: ["MosquittoCLICore"]),
        // The WebSocket tunnel the three tools start for --ws: kept out of them, so that their plain-MQTT path does not
        // load SwiftNIO and BoringSSL.
        .executableTarget(name: "mqtt-ws-tunnel", dependencies: ["MQTTWebSocket"]),
        // The MQTT <-> TCP/UDP bridge as a library (a ServiceLifecycle Service), with no command-line code in it.
        .target(
            name: "MQTTBridge",
            dependencies: [
                "Mosquitto",
                "MessagePack",
                "MQTTOutbox",
                "MosquittoPOSIX",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // mqtt-bridge's command line (BridgeCommand): the broker options of MosquittoCLI, the route, spool and
        // operations flags, the signals; and the thin executable that runs it.
        .target(
            name: "MQTTBridgeCommand",
            dependencies: [
                "MQTTBridge",
                "Mosquitto",
                "MosquittoCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(name: "mqtt-bridge", dependencies: ["MQTTBridgeCommand"]),
        // The demo: a private broker, simulated telemetry and a wildcard subscriber.
        .executableTarget(
            name: "mosquitto-demo",
            dependencies: ["Mosquitto", "MosquittoBroker"]
        ),
        // Benchmarks: the Swift library and the same workload in raw libmosquitto C.
        .executableTarget(
            name: "mosquitto-bench",
            dependencies: [
                "Mosquitto", "MosquittoBroker",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/mosquitto-bench"
        ),
        // Issue #19's figures: MessagePack vs JSON per message, payload sizes, typed streams vs raw bytes.
        .executableTarget(
            name: "mosquitto-codec-bench",
            dependencies: ["Mosquitto", "MosquittoBroker", "MosquittoCodable", "MessagePackCodable"],
            path: "Benchmarks/mosquitto-codec-bench"
        ),
        .executableTarget(
            name: "mosquitto-bench-c",
            dependencies: ["CMosquitto"],
            path: "Benchmarks/mosquitto-bench-c"
        ),
        .executableTarget(
            name: "mosquitto-bench-swift",
            dependencies: ["Mosquitto"],
            path: "Benchmarks/mosquitto-bench-swift"
        ),
        // Fuzzing: every parser of untrusted bytes as a libFuzzer target (see Fuzz/run.sh), and the replay of
        // committed corpora and crashes as tests.
        .target(
            name: "FuzzTargets",
            dependencies: ["Mosquitto", "CMosquitto", "MQTTBridge", "MosquittoCLI", "MessagePack"]
        ),
        .executableTarget(
            name: "mosquitto-fuzz",
            dependencies: ["FuzzTargets"],
            path: "Fuzz/mosquitto-fuzz"
        ),
        .testTarget(name: "MessagePackTests", dependencies: ["MessagePack", "MessagePackCodable", "MosquittoPOSIX", "MosquittoTestSupport"]),
        .testTarget(
            name: "CodableTests",
            dependencies: ["MosquittoCodable", "Mosquitto", "MessagePack", "MessagePackCodable", "MosquittoBroker", "MosquittoTestSupport"]
        ),
        .testTarget(
            name: "FuzzRegressionTests",
            dependencies: ["FuzzTargets", "MosquittoTestSupport"]
        ),
        // What every test target shares: a private broker per test, polling, a lock box, child processes, the
        // built executables. A test target, not a product: the examples do not use it.
        .target(
            name: "MosquittoTestSupport",
            dependencies: ["Mosquitto", "MosquittoBroker", "MosquittoPOSIX", .product(name: "Logging", package: "swift-log")],
            path: "Tests/MosquittoTestSupport"
        ),
        .testTarget(
            name: "MosquittoTests",
            dependencies: [
                "Mosquitto", "MosquittoBroker", "MosquittoPOSIX", "MosquittoTestSupport", "CMosquitto", "CMosquittoIO", "MQTTURLParser", "MQTTWebSocket",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "MosquittoCLI", "Mosquitto", "MosquittoBroker", "MosquittoPOSIX", "MosquittoTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "BridgeTests",
            dependencies: [
                "MQTTBridge", "MQTTBridgeCommand", "Mosquitto", "MQTTOutbox", "MosquittoBroker", "MosquittoTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The examples: one runnable program per messaging pattern (Examples/README.md), and their smoke tests.
        .target(
            name: "ExampleSupport",
            dependencies: ["Mosquitto", "MosquittoBroker", "MosquittoPOSIX", .product(name: "Logging", package: "swift-log")],
            path: "Examples/Support"
        ),
        .executableTarget(name: "example-telemetry", dependencies: exampleDependencies, path: "Examples/Telemetry"),
        .executableTarget(name: "example-wildcard", dependencies: exampleDependencies, path: "Examples/Wildcard"),
        .executableTarget(name: "example-broadcast", dependencies: exampleDependencies, path: "Examples/Broadcast"),
        .executableTarget(name: "example-request-reply", dependencies: exampleDependencies + ["mqtt-rr"], path: "Examples/RequestReply"),
        .executableTarget(name: "example-work-queue", dependencies: exampleDependencies, path: "Examples/WorkQueue"),
        .executableTarget(name: "example-fan-in-logger", dependencies: exampleDependencies, path: "Examples/FanInLogger"),
        .executableTarget(name: "example-tcp-feed", dependencies: exampleDependencies + ["mqtt-bridge"], path: "Examples/TCPFeed"),
        .executableTarget(name: "example-store-and-forward", dependencies: exampleDependencies, path: "Examples/StoreAndForward"),
        .executableTarget(name: "example-udp-feed", dependencies: exampleDependencies + ["mqtt-bridge"], path: "Examples/UDPFeed"),
        .testTarget(name: "ExampleTests", dependencies: ["MosquittoBroker", "MosquittoTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

/// What every example links: the library, the private broker, and the examples' shared option handling.
var exampleDependencies: [Target.Dependency] { ["Mosquitto", "MosquittoBroker", "ExampleSupport"] }
