import Foundation
import Mosquitto
import MQTTOutbox
import MosquittoTestSupport
import MQTTBridge
import Testing

@Suite("Spool", .timeLimit(.minutes(5 * testTimeScale)))
struct SpoolTests {
    func records(_ range: Range<Int>) -> [SpoolRecord] {
        range.map { SpoolRecord(topic: "t/\($0)", payload: Array("p\($0)".utf8) + [0x00, 0xFF], qos: .atLeastOnce) }
    }

    @Test("records survive reopening until marked done; files are owner-only")
    func persistAndAck() throws {
        let dir = temporaryDirectory() + "/spool"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let spool = try Spool(configuration: SpoolConfiguration(directory: dir, segmentBytes: 4096))
            try spool.append(records(0..<500))
            let batch = try spool.readBatch(maxRecords: 100)
            #expect(batch.count == 100)
            #expect(batch.first?.payload == Array("p0".utf8) + [0x00, 0xFF])
            try spool.markDone(through: batch.last!.sequence)
            #expect(spool.depth.records == 400)
            spool.close()
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: dir)
        #expect((attributes[.posixPermissions] as? Int) == 0o700)
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) {
            let a = try FileManager.default.attributesOfItem(atPath: dir + "/" + f)
            #expect((a[.posixPermissions] as? Int) == 0o600, "\(f)")
        }
        let reopened = try Spool(configuration: SpoolConfiguration(directory: dir, segmentBytes: 4096))
        #expect(reopened.recoveredRecords == 400)
        var all: [SpoolRecord] = []
        while true {
            let b = try reopened.readBatch(maxRecords: 64)
            if b.isEmpty { break }
            all += b
        }
        #expect(all.map(\.topic) == (100..<500).map { "t/\($0)" })
        try reopened.markDone(through: all.last!.sequence)
        #expect(reopened.depth.records == 0)
        // Fully acknowledged segments are deleted.
        let segments = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("seg-") }
        #expect(segments.count <= 1)
    }

    @Test("a torn tail (kill -9 in the middle of a write) is truncated at the first bad checksum")
    func tornTail() throws {
        let dir = temporaryDirectory() + "/spool"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
            try spool.append(records(0..<10))
            spool.close()
        }
        let segment = try FileManager.default.contentsOfDirectory(atPath: dir).first { $0.hasPrefix("seg-") }!
        let handle = FileHandle(forWritingAtPath: dir + "/" + segment)!
        handle.seekToEndOfFile()
        handle.write(Data([40, 0, 0, 0, 1, 2, 3, 4, 9, 9]))  // a header and part of a body
        handle.closeFile()
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir))
        #expect(spool.recoveredRecords == 10)
        #expect(spool.corruptBytes == 10)
        try spool.append(records(10..<11))
        var all: [SpoolRecord] = []
        while true {
            let b = try spool.readBatch(maxRecords: 64)
            if b.isEmpty { break }
            all += b
        }
        #expect(all.map(\.topic) == (0..<11).map { "t/\($0)" })
    }

    @Test("acknowledge() moves the watermark in memory; only flushDone() (or close) makes it survive a crash, so a crash resends, never loses")
    func acknowledgeThenFlush() throws {
        let dir = temporaryDirectory() + "/spool"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir, segmentBytes: 4096))
        try spool.append(records(0..<300))
        var all: [SpoolRecord] = []
        while true {
            let b = try spool.readBatch(maxRecords: 37)
            if b.isEmpty { break }
            all += b
        }
        #expect(all.map(\.topic) == (0..<300).map { "t/\($0)" })
        spool.acknowledge(through: all[99].sequence)
        #expect(spool.depth.records == 200)
        #expect(spool.firstUnacknowledged == all[100].sequence)
        // A crash now (no flush, no close): the files as they are now (copied, since this spool holds the lock on
        // its directory while it lives) show the old watermark, and an opener resends all 300.
        func snapshot() throws -> String {
            let copy = temporaryDirectory() + "/crashed"
            try FileManager.default.copyItem(atPath: dir, toPath: copy)
            return copy
        }
        let crashedDir = try snapshot()
        let crashed = try Spool(configuration: SpoolConfiguration(directory: crashedDir, segmentBytes: 4096))
        #expect(crashed.recoveredRecords == 300)
        try spool.flushDone()
        let flushedDir = try snapshot()
        defer { for d in [crashedDir, flushedDir] { try? FileManager.default.removeItem(atPath: d) } }
        let flushed = try Spool(configuration: SpoolConfiguration(directory: flushedDir, segmentBytes: 4096))
        #expect(flushed.recoveredRecords == 200)
        #expect(try flushed.readBatch(maxRecords: 1).first?.topic == "t/100")
        // After a rewind the same records come again, in order, from the watermark.
        spool.rewind()
        #expect(try spool.readBatch(maxRecords: 3).map(\.topic) == ["t/100", "t/101", "t/102"])
    }

    @Test("rewind across segments, in a fresh and in a reopened spool, resumes exactly at the first unacknowledged record")
    func rewindAcrossSegments() throws {
        let dir = temporaryDirectory() + "/spool"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func drain(_ spool: Spool) throws -> [SpoolRecord] {
            var all: [SpoolRecord] = []
            while true {
                let b = try spool.readBatch(maxRecords: 50)
                if b.isEmpty { return all }
                all += b
            }
        }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir, segmentBytes: 4096))
        for k in 0..<20 { try spool.append(records(k * 50..<(k + 1) * 50)) }  // many 4 KiB segments
        let all = try drain(spool)
        #expect(all.count == 1000)
        for cut in [0, 1, 333, 640, 999] {
            spool.acknowledge(through: all[cut].sequence)
            spool.rewind()
            let again = try drain(spool)
            #expect(again.map(\.topic) == (cut + 1..<1000).map { "t/\($0)" }, "after acknowledging \(cut)")
        }
        spool.close()
        let reopened = try Spool(configuration: SpoolConfiguration(directory: dir, segmentBytes: 4096))
        #expect(reopened.recoveredRecords == 0)
        try reopened.append(records(1000..<1100))
        let more = try drain(reopened)
        reopened.acknowledge(through: more[49].sequence)
        reopened.rewind()
        #expect(try drain(reopened).map(\.topic) == (1050..<1100).map { "t/\($0)" })
    }

    @Test("the spool reports full at its byte limit and wakes waiters when acknowledgements free space")
    func fullAndSpace() throws {
        let dir = temporaryDirectory() + "/spool"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spool = try Spool(configuration: SpoolConfiguration(directory: dir, maxBytes: 4096))
        var full = false
        var n = 0
        while !full {
            full = try spool.append(records(n..<n + 10))
            n += 10
        }
        #expect(spool.isFull)
        let woke = Locked(false)
        spool.whenSpaceAvailable { woke.withLock { $0 = true } }
        #expect(woke.value == false)
        let b = try spool.readBatch(maxRecords: n)
        try spool.markDone(through: b.last!.sequence)
        #expect(woke.value == true)
        #expect(!spool.isFull)
    }
}

@Suite("Configuration", .timeLimit(.minutes(5 * testTimeScale)))
struct ConfigTests {
    @Test("a valid mosquitto.conf-style file parses into routes")
    func valid() throws {
        let text = """
        # broker
        address 127.0.0.1:1884
        remote_clientid plant1
        cleansession false
        restart_timeout 1 30
        spool_dir /tmp/x
        spool_max_bytes 16MiB
        metrics_listen 127.0.0.1:9100

        route gps
        direction to_mqtt
        mode tcp_client
        address 10.0.0.5:10110 10.0.0.6:10110
        framing crlf
        max_frame 4KiB
        topic nmea/{feed}/{field:0}
        qos 1

        route cmd
        direction both
        mode tcp_server
        address 127.0.0.1:7000
        allow 127.0.0.1 10.0.0.0/8
        framing length 2 le
        topic up/{peer}
        subscribe down/#
        slow_reader disconnect
        """
        let c = try ConfigParser.parse(text)
        #expect(c.mqtt.endpoint == .tcp(host: "127.0.0.1", port: 1884))
        #expect(c.mqtt.session == .persistent(expiry: 0xFFFF_FFFF))
        #expect(c.spoolMaxBytes == 16 << 20)
        #expect(c.routes.count == 2)
        #expect(c.routes[0].feed.addresses.count == 2)
        #expect(c.routes[0].framing == .crlf)
        #expect(c.routes[0].maxFrame == 4096)
        #expect(c.routes[1].framing == .lengthPrefixed(width: 2, byteOrder: .littleEndian))
        #expect(c.routes[1].subscriptions == ["down/#"])
        #expect(c.routes[1].slowReader == .disconnect)
    }

    @Test("--check reports every error with its line number")
    func errorsOnLines() throws {
        let text = """
        address 127.0.0.1:1883
        # comment
        spool_max_bytes lots
        route a
        mode tcp_server
        topic t/{nope}
        framing length 3
        qos 7
        route b
        mode tcp_client
        topic ok
        bogus_key 1
        """
        let issues = ConfigParser.check(text)
        // The refused topic on line 6 is reported once: route a does not also "need a 'topic'" on line 4.
        try #require(issues.map(\.line) == [3, 6, 7, 8, 9, 12], "\(issues)")
        #expect(issues[0].message.contains("spool_max_bytes"))
        #expect(issues[1].message.contains("{nope}"))
        #expect(!issues.contains { $0.message.contains("needs a 'topic'") })
        #expect(issues[4].message.contains("needs an 'address'"))
        #expect(issues[5].message.contains("bogus_key"))
    }
}
