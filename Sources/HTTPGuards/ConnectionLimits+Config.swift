package import BridgeConfig

extension ConnectionLimits {
    /// The keys ``read(_:)`` takes.
    package static let keys = ["headerTimeout", "idleTimeout", "maxConnections"]

    /// `headerTimeout`, `idleTimeout` and `maxConnections` of a server's mapping (`server:`,
    /// `webpubsub.embedded:`), each with its default when absent.
    package static func read(_ m: ConfigMapping) -> ConnectionLimits {
        var limits = ConnectionLimits()
        if let d = m.duration("headerTimeout") {
            if d > .zero { limits.headerTimeout = d } else { m.value("headerTimeout")?.report("headerTimeout must be more than 0") }
        }
        if let d = m.duration("idleTimeout") {
            if d > .zero { limits.idleTimeout = d } else { m.value("idleTimeout")?.report("idleTimeout must be more than 0") }
        }
        limits.maxConnections = m.int("maxConnections", range: 1...1_000_000) ?? limits.maxConnections
        return limits
    }
}
