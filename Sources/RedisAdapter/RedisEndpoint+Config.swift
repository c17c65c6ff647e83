import BridgeConfig

/// The keys of a Redis endpoint, in every block that talks to Redis (sources, sinks,
/// `coordination.redis`).
let redisEndpointKeys = ["url", "passwordFile", "tls", "connectTimeout", "commandTimeout"]

/// `url` (required), `passwordFile` (overrides the URL's password), `tls` (with a `rediss://`
/// URL), `connectTimeout` and `commandTimeout`. TLS files are loaded here, so that one that
/// cannot be used is reported by `validate`.
func readRedisEndpoint(_ settings: ConfigMapping) -> RedisEndpoint? {
    guard let value = settings.requireKey("url", "redis://[user:password@]host[:port][/db], or rediss:// for TLS"), let text = value.string()
    else { return nil }
    var endpoint: RedisEndpoint
    do {
        endpoint = try RedisEndpoint(parsing: text)
    } catch {
        value.report(error.message)
        return nil
    }
    if settings.has("passwordFile") {
        guard let password = settings.secret("password") else { return nil }
        endpoint.password = password
    }
    endpoint.connectTimeout =
        settings.duration("connectTimeout", within: .milliseconds(100)...(.seconds(60)), why: "how long a connection (TCP) may take")
        ?? endpoint.connectTimeout
    endpoint.commandTimeout =
        settings.duration(
            "commandTimeout", within: .milliseconds(100)...(.seconds(300)), why: "how long a reply may take before the connection counts as broken")
        ?? endpoint.commandTimeout
    if let tls = settings.mapping("tls") {
        guard endpoint.tls != nil else {
            settings.value("tls")?.report("tls settings need a rediss:// URL (url is '\(endpoint)')")
            return nil
        }
        tls.checkKeys(["caFile", "certFile", "keyFile", "serverName", "insecureSkipVerify"], what: "tls")
        var t = RedisTLS()
        t.caFile = tls.nonEmptyString("caFile").map(tls.reader.absolutePath)
        t.certFile = tls.nonEmptyString("certFile").map(tls.reader.absolutePath)
        t.keyFile = tls.nonEmptyString("keyFile").map(tls.reader.absolutePath)
        t.serverName = tls.nonEmptyString("serverName")
        if let name = t.serverName, name.contains(where: { $0.isWhitespace || $0 == "/" }) {
            tls.value("serverName")?.report("'\(name)' is not a host name")
        }
        if let skip = tls.bool("insecureSkipVerify") {
            t.insecureSkipVerify = skip
            if skip {
                tls.value("insecureSkipVerify")?.warn(
                    "insecureSkipVerify: true accepts any certificate: the connection is encrypted but anyone in between can read and change it")
            }
        }
        if t.insecureSkipVerify, t.caFile != nil || t.serverName != nil {
            tls.report(
                "insecureSkipVerify: true checks no certificate: caFile and serverName would be ignored (remove them, or remove insecureSkipVerify)")
        }
        endpoint.tls = t
    }
    if let tls = endpoint.tls {
        do {
            try tls.check()
        } catch {
            (settings.value("tls") ?? value).report(error.message)
            return nil
        }
    }
    return endpoint
}
