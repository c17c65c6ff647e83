import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A client socket read without blocking (the hub under test runs on the same few threads
/// of the concurrency pool): reads poll and sleep, for up to 5 s.
package final class RawSocket: @unchecked Sendable {
    package let fd: Int32
    package var buffer: [UInt8] = []

    package init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestEnvironmentError("connect failed") }
    }

    deinit { close(fd) }

    package func write(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Reads until `count` bytes are buffered; false after 5 s or at the end of the stream.
    package func fill(_ count: Int) async -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + .seconds(5)
        while buffer.count < count {
            let n = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            if n > 0 {
                buffer += chunk[0..<n]
            } else if n < 0, errno == EAGAIN || errno == EWOULDBLOCK, ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(5))
            } else {
                return false
            }
        }
        return true
    }

    /// The HTTP response head of the upgrade.
    package func readHead() async -> String? {
        while true {
            if let end = String(decoding: buffer, as: UTF8.self).range(of: "\r\n\r\n") {
                let head = String(String(decoding: buffer, as: UTF8.self)[..<end.upperBound])
                buffer.removeFirst(head.utf8.count)
                return head
            }
            guard await fill(buffer.count + 1) else { return nil }
        }
    }

    /// The next server frame: opcode and payload (servers do not mask).
    package func readFrame() async -> (opcode: UInt8, payload: [UInt8])? {
        guard await fill(2) else { return nil }
        let opcode = buffer[0] & 0x0F
        var length = Int(buffer[1] & 0x7F)
        var offset = 2
        if length == 126 {
            guard await fill(4) else { return nil }
            length = Int(buffer[2]) << 8 | Int(buffer[3])
            offset = 4
        } else if length == 127 {
            guard await fill(10) else { return nil }
            length = (2..<10).reduce(0) { $0 << 8 | Int(buffer[$1]) }
            offset = 10
        }
        guard await fill(offset + length) else { return nil }
        let payload = Array(buffer[offset..<(offset + length)])
        buffer.removeFirst(offset + length)
        return (opcode, payload)
    }

    /// A masked client frame.
    package func sendFrame(opcode: UInt8, _ payload: [UInt8]) {
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        write(frame)
    }

    /// Whether the server closed the connection within `timeout` (end of stream or a reset).
    package func closedByPeer(within timeout: Duration) async -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let n = recv(fd, &chunk, chunk.count, Int32(MSG_DONTWAIT))
            if n == 0 { return true }
            if n > 0 {
                buffer += chunk[0..<n]
                continue
            }
            if errno != EAGAIN && errno != EWOULDBLOCK { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// Raises this process's open-file limit to its hard limit (tests that hold thousands of
    /// sockets; a new Debian shell starts at 1,024).
    package static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}
