import BridgeJSON

/// The payload of a batch: a JSON array of the messages, JSON payloads
/// as values, text as JSON strings. Binary payloads cannot be batched.
enum BatchPayload {
    /// One message as an array element; nil for binary. JSON payloads are taken as they are:
    /// a message is typed JSON only once it parsed.
    static func element(_ payload: [UInt8], dataType: DataType) -> [UInt8]? {
        switch dataType {
        case .json: payload
        case .text: Array(JSONValue.quoted(String(decoding: payload, as: UTF8.self)).utf8)
        case .binary: nil
        }
    }

    /// What an element adds to a batch's payload: itself and a separator.
    static func cost(of element: [UInt8]) -> Int { element.count + 1 }

    /// The array of `elements`, in order.
    static func assemble(_ elements: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(elements.reduce(2) { $0 + $1.count + 1 })
        out.append(UInt8(ascii: "["))
        for (i, element) in elements.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            out.append(contentsOf: element)
        }
        out.append(UInt8(ascii: "]"))
        return out
    }
}
