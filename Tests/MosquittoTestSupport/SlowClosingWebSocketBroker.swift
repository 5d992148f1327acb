#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import MosquittoPOSIX

/// A stand-in for a broker's websockets listener that is slow to close, as mosquitto 2.0.11 is on a loaded machine
/// (it serves WebSockets once per turn of its loop): it accepts one connection, upgrades it (subprotocol `mqtt`),
/// optionally answers the first frame (CONNECT) with `connack`, collects the payload of every frame up to the close
/// frame, then waits `closeDelay` before it answers that close frame. A client side that closed the connection
/// first is recorded: mosquitto would have seen the connection end before it read the DISCONNECT in front of the
/// close frame, and published the client's will.
package final class SlowClosingWebSocketBroker: Sendable {
    /// What the stand-in saw once it answered the close frame.
    package struct Report: Sendable {
        /// The unmasked payload of the client's frames, in order, up to the close frame.
        package var payload: [UInt8]
        /// Whether the client's side was still open after `closeDelay`.
        package var openWhenAnswering: Bool
    }

    /// The loopback port it listens on.
    package let port: Int
    /// Set once the close frame was answered.
    package let report = Locked<Report?>(nil)

    /// Listens on a free loopback port; serves one connection on a thread of its own.
    package init(connack: [UInt8]? = nil, closeDelay: TimeInterval) throws {
        let (listener, port) = try listenOnLoopback()
        self.port = port
        let report = self.report
        Thread.detachNewThread {
            defer { close(listener) }
            let c = accept(listener, nil, nil)
            guard c >= 0 else { return }
            defer { close(c) }
            var input: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            func readMore() -> Bool {
                let n = read(c, &buffer, buffer.count)
                if n > 0 { input += buffer[0..<n] }
                return n > 0
            }
            while !input.suffix(4).elementsEqual("\r\n\r\n".utf8) { if !readMore() { return } }
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Accept: \(webSocketAccept(forRequest: String(decoding: input, as: UTF8.self)) ?? "")\r\n"
                + "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
            _ = write(c, answer, answer.utf8.count)
            input = []
            // Client frames are masked; the frames of a short session have 7-bit lengths.
            var payload: [UInt8] = []
            var frames = 0
            while true {
                while input.count < 2 || input.count < 6 + Int(input[1] & 0x7F) { if !readMore() { return } }
                let opcode = input[0] & 0x0F, length = Int(input[1] & 0x7F), mask = Array(input[2..<6])
                let data = (0..<length).map { input[6 + $0] ^ mask[$0 % 4] }
                input.removeFirst(6 + length)
                if opcode == 0x8 { break }
                payload += data
                frames += 1
                if frames == 1, let connack {
                    let frame = [0x82, UInt8(connack.count)] + connack
                    _ = write(c, frame, frame.count)
                }
            }
            Thread.sleep(forTimeInterval: closeDelay)
            var probe: UInt8 = 0
            let peeked = recv(c, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            let open = !(peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            report.withLock { $0 = Report(payload: payload, openWhenAnswering: open) }
            let closeFrame: [UInt8] = [0x88, 0x02, 0x03, 0xE8]
            _ = write(c, closeFrame, closeFrame.count)
        }
    }
}
