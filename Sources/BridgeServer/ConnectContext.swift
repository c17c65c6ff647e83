import BridgeCore
import BridgeCrypto
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import Logging
import NIOCore
import Synchronization
import WebPubSub

/// What templates of the connect policy read: `{claim.NAME}`, `{query.NAME}`, `{header.NAME}`
/// (first value), `{userId}`, `{connectionId}`.
struct ConnectContext {
    let body: JSONValue
    let userId: String?
    let connectionId: String

    func value(_ field: String) -> String? {
        if field == "userId" { return userId }
        if field == "connectionId" { return connectionId }
        let parts = field.split(separator: ".", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return nil }
        let section: String
        switch parts[0] {
        case "claim": section = "claims"
        case "query": section = "query"
        case "header": section = "headers"
        default: return nil
        }
        guard case .object(let members)? = body[section] else { return nil }
        let wanted = parts[1]
        let value = members.first { $0.0 == wanted }?.1 ?? members.first { $0.0.caseInsensitiveCompare(wanted) == .orderedSame }?.1
        switch value {
        case .array(let items)?: return items.first?.stringValue
        case .string(let s)?: return s
        default: return nil
        }
    }

    /// The template with every field filled (each value through `escape`), or nil when one cannot be.
    func render(_ template: String, escape: (String) -> String = { $0 }) -> String? {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else { return nil }
            let field = String(rest[rest.index(after: open)..<close])
            guard let v = value(field) else { return nil }
            out += escape(v)
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }

    /// Whether a template only reads fields this context can have.
    static func check(_ template: String) -> String? {
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            guard let close = rest[open...].firstIndex(of: "}") else { return "'\(template)' has an unclosed {" }
            let field = rest[rest.index(after: open)..<close]
            let known =
                field == "userId" || field == "connectionId"
                || ["claim.", "query.", "header."].contains { field.hasPrefix($0) && field.count > $0.count }
            if !known { return "{\(field)} is not known here; use {claim.NAME}, {query.NAME}, {header.NAME}, {userId} or {connectionId}" }
            rest = rest[rest.index(after: close)...]
        }
        return nil
    }
}
