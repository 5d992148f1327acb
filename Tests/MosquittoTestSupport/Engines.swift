#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MosquittoPOSIX

/// MQTT engines other than mosquitto, from Debian's packages, for the interoperability tests (`scripts/interop.sh`).
///
/// Each runs as this user on loopback ports of its own, with its configuration, data and logs in a private
/// directory, and an Erlang port mapper (epmd) of its own on a private loopback port, so that nothing it starts
/// outlives ``stop()`` or listens beyond 127.0.0.1.
package enum InteropEngines {
    /// Whether the interoperability tests should run: `MOSQUITTO_INTEROP=1`, set by `scripts/interop.sh`.
    package static var enabled: Bool { ProcessInfo.processInfo.environment["MOSQUITTO_INTEROP"] == "1" }
}

/// A child process started with `spawnChild`, reaped by polling `waitpid`.
private final class EngineProcess: Sendable {
    let pid: pid_t
    /// Set once reaped: the pid may then be reused, and must not be waited for or signalled again.
    private let reaped = Locked(false)
    init(pid: pid_t) { self.pid = pid }

    /// Whether it has exited (and is now reaped).
    var hasExited: Bool {
        reaped.withLock { done in
            if done { return true }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            done = r == pid || (r < 0 && errno == ECHILD)
            return done
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone.
    func stop(grace: Duration) async {
        guard !hasExited else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if hasExited { return }
            try? await Task.sleep(for: .milliseconds(100))
        }
        kill(pid, SIGKILL)
        while !hasExited { try? await Task.sleep(for: .milliseconds(50)) }
    }
}

/// Waits until an MQTT 3.1.1 client is accepted on 127.0.0.1:`port`, or `timeout` passes.
package func waitForMQTT(port: Int, timeout: Duration, clientID: String = "interop-probe",
                         username: String? = nil, password: String? = nil) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        var c = MQTTConfiguration(host: "127.0.0.1", port: port, clientID: clientID, protocolVersion: .v3_1_1)
        c.logger = quietLogger("probe", level: .critical)
        if let username { c.credentials = .init(username: username, password: password) }
        if let client = try? MQTTClient(configuration: c) {
            let ok = (try? await client.connect()) != nil
            await client.shutdown()
            if ok { return true }
        }
        try? await Task.sleep(for: .milliseconds(500))
    }
    return false
}

/// An Erlang port mapper on a private loopback port, for one engine's nodes.
private final class PortMapper: Sendable {
    let port: Int
    private let child: EngineProcess

    init(directory: String) throws {
        port = freeLoopbackPort()
        let pid = try spawnChild("/usr/bin/epmd", ["-port", "\(port)", "-address", "127.0.0.1"],
                                 standardOutput: directory + "/epmd.log")
        child = EngineProcess(pid: pid)
    }

    func stop() async { await child.stop(grace: .seconds(2)) }
}

/// A RabbitMQ node with its MQTT plugin (`rabbitmq-server`, MQTT 3.1.1 on Debian 12's 3.10).
package final class RabbitMQNode: Sendable {
    package static let server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    package static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: server) }

    package let mqttPort: Int
    package let directory: String
    private let amqpPort: Int
    private let distributionPort: Int
    private let nodeName: String
    private let mapper: PortMapper
    private let child = LockedValue<EngineProcess?>(nil)

    /// Prepares the node's directory and ports; ``start()`` starts it.
    package init() throws {
        directory = temporaryDirectory()
        mqttPort = freeLoopbackPort()
        amqpPort = freeLoopbackPort()
        distributionPort = freeLoopbackPort()
        nodeName = "interop\(getpid())x\(mqttPort)@localhost"
        mapper = try PortMapper(directory: directory)
        try """
        listeners.tcp.default = 127.0.0.1:\(amqpPort)
        mqtt.listeners.tcp.default = 127.0.0.1:\(mqttPort)
        mqtt.allow_anonymous = true
        mqtt.default_user = guest
        mqtt.default_pass = guest
        loopback_users = none
        log.console = false
        log.file.level = info

        """.write(toFile: directory + "/rabbitmq.conf", atomically: true, encoding: .utf8)
        try "[rabbitmq_mqtt].\n".write(toFile: directory + "/enabled_plugins", atomically: true, encoding: .utf8)
    }

    private var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["HOME"] = directory  // the Erlang cookie goes here
        env["RABBITMQ_CONFIG_FILE"] = directory + "/rabbitmq.conf"
        env["RABBITMQ_ENABLED_PLUGINS_FILE"] = directory + "/enabled_plugins"
        env["RABBITMQ_MNESIA_BASE"] = directory + "/mnesia"
        env["RABBITMQ_LOG_BASE"] = directory + "/log"
        env["RABBITMQ_PID_FILE"] = directory + "/rabbit.pid"
        env["RABBITMQ_NODENAME"] = nodeName
        env["RABBITMQ_DIST_PORT"] = "\(distributionPort)"
        env["ERL_EPMD_PORT"] = "\(mapper.port)"
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}"
        return env
    }

    /// Starts the node and waits until its MQTT listener accepts a client (RabbitMQ boots in 10 to 30 s).
    package func start(timeout: Duration = .seconds(120)) async throws {
        let pid = try spawnChild(Self.server, [], environment: environment, standardOutput: directory + "/server.log",
                                 appendOutput: true)
        child.withLock { $0 = EngineProcess(pid: pid) }
        guard await waitForMQTT(port: mqttPort, timeout: timeout) else {
            let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
            await stop()
            throw MQTTError(.system, "RabbitMQ did not accept MQTT on 127.0.0.1:\(mqttPort) within \(timeout): \(log.suffix(2000))")
        }
    }

    /// Stops the node (SIGTERM to the Erlang VM: a clean shutdown that keeps durable sessions) and waits for it.
    package func stop() async {
        guard let c = child.withLock({ c -> EngineProcess? in defer { c = nil }; return c }) else { return }
        // The script runs the VM as a child; its pid file names the VM.
        if let text = try? String(contentsOfFile: directory + "/rabbit.pid", encoding: .utf8), let vm = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(vm, SIGTERM)
        }
        await c.stop(grace: .seconds(30))
    }

    /// Stops the node, its port mapper, and removes its directory.
    package func destroy() async {
        await stop()
        await mapper.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// An ejabberd node with `mod_mqtt` (MQTT 5; Debian 12's ejabberd 23.01), or several joined into a cluster.
///
/// `ejabberdctl` runs the node as the `ejabberd` user, so this needs root (as `scripts/interop.sh` does when it
/// installs the package). Clients authenticate as ``username``/``password``, registered at start.
package final class EjabberdNode: Sendable {
    package static let control = "/usr/sbin/ejabberdctl"
    package static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: control) }
    package static var canRun: Bool { isInstalled && getuid() == 0 }
    package static let username = "mqtt"
    package static let password = "secret"

    package let mqttPort: Int
    package let directory: String
    package let nodeName: String
    private let mapper: PortMapper
    private let ownsMapper: Bool
    private let child = LockedValue<EngineProcess?>(nil)

    /// A node; `sharing` puts it on the port mapper of another node, so that the two can form a cluster.
    package init(sharing other: EjabberdNode? = nil) throws {
        directory = temporaryDirectory()
        mqttPort = freeLoopbackPort()
        nodeName = "ejd\(getpid())x\(mqttPort)@localhost"
        if let other {
            mapper = other.mapper
            ownsMapper = false
        } else {
            mapper = try PortMapper(directory: directory)
            ownsMapper = true
        }
        for sub in ["logs", "spool"] { try FileManager.default.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true) }
        try """
        hosts:
          - localhost
        loglevel: info
        auth_method: [internal]
        listen:
          -
            port: \(mqttPort)
            ip: "127.0.0.1"
            module: mod_mqtt
            backlog: 1000
        acl:
          local:
            user_regexp: ""
        access_rules:
          local:
            allow: all
        modules:
          mod_mqtt:
            access_publish:
              "#":
                - allow: all
            access_subscribe:
              "#":
                - allow: all

        """.write(toFile: directory + "/ejabberd.yml", atomically: true, encoding: .utf8)
        try """
        ERLANG_NODE=\(nodeName)
        INET_DIST_INTERFACE=127.0.0.1
        ERL_EPMD_ADDRESS=127.0.0.1
        EJABBERD_PID_PATH=\(directory)/ejabberd.pid

        """.write(toFile: directory + "/ejabberdctl.cfg", atomically: true, encoding: .utf8)
        try "".write(toFile: directory + "/inetrc", atomically: true, encoding: .utf8)
        // ejabberdctl runs the node as the ejabberd user, which must own its files.
        _ = try await_run(["/bin/chown", "-R", "ejabberd", directory])
    }

    private var controlArguments: [String] {
        ["--config-dir", directory, "--config", directory + "/ejabberd.yml", "--ctl-config", directory + "/ejabberdctl.cfg",
         "--logs", directory + "/logs", "--spool", directory + "/spool"]
    }

    private var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["ERL_EPMD_PORT"] = "\(mapper.port)"
        return env
    }

    /// Runs an `ejabberdctl` command against this node and returns its output; throws when it fails.
    @discardableResult
    package func control(_ arguments: [String], timeout: Duration = .seconds(120)) async throws -> String {
        let output = directory + "/ctl-\(UInt32.random(in: 0...UInt32.max)).log"
        let pid = try spawnChild(Self.control, controlArguments + arguments, environment: environment, standardOutput: output)
        let process = EngineProcess(pid: pid)
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if ContinuousClock.now > deadline { await process.stop(grace: .seconds(1)); break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        guard status == 0 else {
            throw MQTTError(.system, "ejabberdctl \(arguments.joined(separator: " ")) failed (status \(status)): \(text.suffix(1000))")
        }
        return text
    }

    /// Starts the node, registers the MQTT user and waits until its MQTT listener accepts a client.
    package func start(timeout: Duration = .seconds(90)) async throws {
        let pid = try spawnChild(Self.control, controlArguments + ["foreground"], environment: environment,
                                 standardOutput: directory + "/foreground.log", appendOutput: true)
        child.withLock { $0 = EngineProcess(pid: pid) }
        let deadline = ContinuousClock.now + timeout
        var registered = false
        while !registered && ContinuousClock.now < deadline {
            do {
                registered = try await control(["register", Self.username, "localhost", Self.password], timeout: .seconds(30)).contains("registered")
            } catch let e as MQTTError where e.message.contains("already registered") {
                registered = true  // a restarted node keeps its accounts
            } catch {}
            if !registered { try await Task.sleep(for: .milliseconds(500)) }
        }
        guard registered, await waitForMQTT(port: mqttPort, timeout: deadline - .now, username: Self.username, password: Self.password) else {
            let log = (try? String(contentsOfFile: directory + "/foreground.log", encoding: .utf8)) ?? ""
            await stop()
            throw MQTTError(.system, "ejabberd did not accept MQTT on 127.0.0.1:\(mqttPort) within \(timeout): \(log.suffix(2000))")
        }
    }

    /// Joins this (running) node to `other`'s cluster.
    package func join(_ other: EjabberdNode) async throws {
        try await control(["join_cluster", other.nodeName])
    }

    /// Stops the node (`ejabberdctl stop`, then signals) and waits until its Erlang VM has exited.
    package func stop() async {
        guard let c = child.withLock({ c -> EngineProcess? in defer { c = nil }; return c }) else { return }
        // The VM runs under su, as the ejabberd user: its pid file names it.
        let vm = (try? String(contentsOfFile: directory + "/ejabberd.pid", encoding: .utf8))
            .flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        _ = try? await control(["stop"], timeout: .seconds(30))
        if let vm {
            let deadline = ContinuousClock.now + .seconds(30)
            while kill(vm, 0) == 0 && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(100)) }
            if kill(vm, 0) == 0 { kill(vm, SIGKILL) }
            while kill(vm, 0) == 0 { try? await Task.sleep(for: .milliseconds(50)) }
        }
        await c.stop(grace: .seconds(10))
    }

    /// Stops the node and its port mapper (if it owns it), and removes its directory.
    package func destroy() async {
        await stop()
        if ownsMapper { await mapper.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs a short command to completion (for chown); returns its exit status.
private func await_run(_ command: [String]) throws -> Int32 {
    let pid = try spawnChild(command[0], Array(command.dropFirst()), standardOutput: "/dev/null")
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}
