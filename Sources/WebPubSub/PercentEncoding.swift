import AzureIdentity
import NIOCore

/// A `Duration` as NIO's `TimeAmount`.
func timeAmount(_ d: Duration) -> TimeAmount {
    .milliseconds(Int64(d / .milliseconds(1)))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as the SDKs encode path
/// segments and query values.
package func percentEncode(_ s: String) -> String { percentEncodeUnreserved(s) }

/// Decodes `%XX` escapes (and leaves malformed ones as they are).
package func percentDecode(_ s: some StringProtocol, plusIsSpace: Bool = false) -> String {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(s.utf8.count)
    var it = Array(s.utf8)[...]
    func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }
    while let b = it.popFirst() {
        if b == UInt8(ascii: "%"), it.count >= 2, let h = hexValue(it[it.startIndex]), let l = hexValue(it[it.startIndex + 1]) {
            bytes.append(h << 4 | l)
            it = it.dropFirst(2)
        } else if plusIsSpace, b == UInt8(ascii: "+") {
            bytes.append(UInt8(ascii: " "))
        } else {
            bytes.append(b)
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
