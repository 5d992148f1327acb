// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-mosquitto",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Mosquitto", targets: ["Mosquitto"]),
        .library(name: "MosquittoBroker", targets: ["MosquittoBroker"]),
        .library(name: "MQTTBridge", targets: ["MQTTBridge"]),
        .executable(name: "mqtt-pub", targets: ["mqtt-pub"]),
        .executable(name: "mqtt-sub", targets: ["mqtt-sub"]),
        .executable(name: "mqtt-rr", targets: ["mqtt-rr"]),
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
        // A pthread-based lock that ThreadSanitizer understands, shared by every module.
        .target(name: "MosquittoSync"),
        // Batched socket I/O under libmosquitto (Sources/CMosquittoIO/mosquitto_io.c says how and why).
        .target(name: "CMosquittoIO", linkerSettings: [.linkedLibrary("dl")]),
        // The one parser of `-L` style mqtt:// URLs, shared by the library and the CLIs (pure Swift, no Foundation).
        .target(name: "MQTTURLParser"),
        // The client library.
        .target(
            name: "Mosquitto",
            dependencies: [
                "CMosquitto",
                "CMosquittoIO",
                "MosquittoSync",
                "MQTTURLParser",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // A private mosquitto broker for tests, the demo and the examples.
        .target(
            name: "MosquittoBroker",
            dependencies: [
                "MosquittoSync",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The engine of mqtt-pub, mqtt-sub and mqtt-rr: libmosquitto driven directly, as mosquitto's own clients
        // do, with nothing else linked (a short run starts in about the time mosquitto_pub does).
        .target(name: "MosquittoCLICore", dependencies: ["CMosquitto", "CMosquittoIO", "MQTTURLParser"], path: "Sources/MosquittoCLI/Core"),
        // mqtt-bridge's broker options, and mqtt-sub's printing for library messages (MessageFormatter).
        .target(
            name: "MosquittoCLI",
            dependencies: [
                "MosquittoCLICore",
                "Mosquitto",
                "MosquittoSync",
                "MQTTURLParser",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Core"]
        ),
        .executableTarget(name: "mqtt-pub", dependencies: ["MosquittoCLICore"]),
        .executableTarget(name: "mqtt-sub", dependencies: ["MosquittoCLICore"]),
        .executableTarget(name: "mqtt-rr", dependencies: ["MosquittoCLICore"]),
        // The MQTT <-> TCP/UDP bridge as a library (a ServiceLifecycle Service) and its executable.
        .target(
            name: "MQTTBridge",
            dependencies: [
                "Mosquitto",
                "MosquittoSync",
                "MosquittoCLI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "mqtt-bridge", dependencies: ["MQTTBridge"]),
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
            dependencies: ["Mosquitto", "CMosquitto", "MQTTBridge", "MosquittoCLI"]
        ),
        .executableTarget(
            name: "mosquitto-fuzz",
            dependencies: ["FuzzTargets"],
            path: "Fuzz/mosquitto-fuzz"
        ),
        .testTarget(
            name: "FuzzRegressionTests",
            dependencies: ["FuzzTargets"]
        ),
        .testTarget(
            name: "MosquittoTests",
            dependencies: ["Mosquitto", "MosquittoBroker", "MosquittoSync", "CMosquitto", "MQTTURLParser"]
        ),
        .testTarget(
            name: "CLITests",
            dependencies: ["MosquittoCLI", "Mosquitto", "MosquittoBroker", "MosquittoSync"]
        ),
        .testTarget(
            name: "BridgeTests",
            dependencies: [
                "MQTTBridge", "Mosquitto", "MosquittoBroker", "MosquittoSync",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The examples: one runnable program per messaging pattern (Examples/README.md), and their smoke tests.
        .target(
            name: "ExampleSupport",
            dependencies: ["Mosquitto", "MosquittoBroker", "MosquittoSync", .product(name: "Logging", package: "swift-log")],
            path: "Examples/Support"
        ),
        .executableTarget(name: "example-telemetry", dependencies: exampleDependencies, path: "Examples/Telemetry"),
        .executableTarget(name: "example-wildcard", dependencies: exampleDependencies, path: "Examples/Wildcard"),
        .executableTarget(name: "example-broadcast", dependencies: exampleDependencies, path: "Examples/Broadcast"),
        .executableTarget(name: "example-request-reply", dependencies: exampleDependencies + ["mqtt-rr"], path: "Examples/RequestReply"),
        .executableTarget(name: "example-work-queue", dependencies: exampleDependencies, path: "Examples/WorkQueue"),
        .executableTarget(name: "example-fan-in-logger", dependencies: exampleDependencies, path: "Examples/FanInLogger"),
        .executableTarget(name: "example-tcp-feed", dependencies: exampleDependencies + ["mqtt-bridge"], path: "Examples/TCPFeed"),
        .executableTarget(name: "example-udp-feed", dependencies: exampleDependencies + ["mqtt-bridge"], path: "Examples/UDPFeed"),
        .testTarget(name: "ExampleTests", dependencies: ["MosquittoBroker"]),
    ],
    swiftLanguageModes: [.v6]
)

/// What every example links: the library, the private broker, and the examples' shared option handling.
var exampleDependencies: [Target.Dependency] { ["Mosquitto", "MosquittoBroker", "ExampleSupport"] }
