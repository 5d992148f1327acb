// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "swift-mosquitto",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Mosquitto", targets: ["Mosquitto"]),
        .library(name: "MosquittoBroker", targets: ["MosquittoBroker"]),
        .executable(name: "mosquitto-demo", targets: ["mosquitto-demo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"]), .brew(["mosquitto"])]
        ),
        .target(
            name: "Mosquitto",
            dependencies: [
                "CMosquitto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .target(
            name: "MosquittoBroker",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "mosquitto-demo",
            dependencies: ["Mosquitto", "MosquittoBroker"]
        ),
        .testTarget(
            name: "MosquittoTests",
            dependencies: ["Mosquitto", "MosquittoBroker", "CMosquitto"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
