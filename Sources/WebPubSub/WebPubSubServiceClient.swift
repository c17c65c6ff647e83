package import AsyncHTTPClient
package import AzureIdentity
import BridgeJSON
import BridgeObservability
import Foundation
package import Logging
package import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
package import WebPubSubProtocol

/// The Web PubSub data-plane REST API: every operation of api-version 2024-12-01.
///
/// Requests carry access-key JWTs (cached per URL until shortly before they expire) or Entra ID
/// tokens (scope `https://webpubsub.azure.com/.default`, renewed before expiry); requests go
/// over pooled keep-alive HTTP/1.1 connections (``HTTP1ConnectionPool``).
/// Operations throw ``WebPubSubError``, carrying the status code and body of a refused request.
package final class WebPubSubServiceClient: Sendable {
    package struct Configuration: Sendable {
        package var apiVersion = "2024-12-01"
        /// Deadline of one request.
        package var requestTimeout: Duration = .seconds(30)
        package var connectTimeout: Duration = .seconds(10)
        /// Lifetime of the access-key JWTs this client signs; renewed with 10% left.
        package var tokenLifetime: Duration = .seconds(3600)
        /// Keep-alive HTTP/1.1 connections to the endpoint.
        package var maxConnections = 64
        /// A PEM file of certificate authorities trusted for `https` besides the system's (a
        /// private endpoint behind a proxy with its own CA, a test server).
        package var caFile: String?

        package init() {}
    }

    /// How requests are authorized.
    package enum Authentication: Sendable {
        /// Access-key JWTs signed here; client tokens too.
        case accessKey(AccessKey)
        /// Entra ID tokens; client tokens come from the service (`:generateToken`).
        case entra(any TokenCredential)
    }

    /// The scope of Entra ID tokens for Web PubSub.
    package static let entraScope = "https://webpubsub.azure.com/.default"

    /// The connection string's endpoint, e.g. `https://x.webpubsub.azure.com`.
    package let endpoint: String
    package let authentication: Authentication
    package let configuration: Configuration
    /// Every request to the endpoint.
    let pool: HTTP1ConnectionPool?
    /// Requests elsewhere (a `nextLink` to another origin).
    let httpClient: HTTPClient
    let ownsHTTPClient: Bool
    let logger: Logger
    let tokenCache = Mutex<[String: (token: String, renewAt: Date)]>([:])
    let entraTokens: TokenCache?

    package convenience init(
        connectionString: ConnectionString, configuration: Configuration = Configuration(), httpClient: HTTPClient? = nil,
        logger: Logger = Logger(label: LogKey.webpubsub)
    ) {
        self.init(
            validEndpoint: connectionString.endpoint, authentication: .accessKey(connectionString.accessKey), configuration: configuration,
            httpClient: httpClient, logger: logger)
    }

    /// - Parameter endpoint: `http(s)://host[:port]`.
    package convenience init(
        endpoint: String, authentication: Authentication, configuration: Configuration = Configuration(), httpClient: HTTPClient? = nil,
        logger: Logger = Logger(label: LogKey.webpubsub)
    ) throws(WebPubSubError) {
        self.init(
            validEndpoint: try ConnectionString.normalizeEndpoint(endpoint), authentication: authentication, configuration: configuration,
            httpClient: httpClient, logger: logger)
    }

    private init(
        validEndpoint: String, authentication: Authentication, configuration: Configuration, httpClient: HTTPClient?, logger: Logger
    ) {
        self.endpoint = validEndpoint
        self.authentication = authentication
        if case .entra(let credential) = authentication {
            entraTokens = TokenCache(credential: credential, scope: Self.entraScope)
        } else {
            entraTokens = nil
        }
        self.configuration = configuration
        self.logger = logger
        pool = HTTP1ConnectionPool.Origin(endpoint: validEndpoint).map {
            HTTP1ConnectionPool(
                origin: $0, caFile: configuration.caFile, maxConnections: configuration.maxConnections,
                connectTimeout: configuration.connectTimeout)
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile = configuration.caFile { tls.additionalTrustRoots = [.file(caFile)] }
        if let httpClient {
            self.httpClient = httpClient
            ownsHTTPClient = false
        } else {
            var config = HTTPClient.Configuration(
                timeout: .init(connect: timeAmount(configuration.connectTimeout)),
                connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: configuration.maxConnections))
            config.httpVersion = .automatic
            config.redirectConfiguration = .disallow
            config.tlsConfiguration = tls
            // No spans: with the default (no-op) tracer AsyncHTTPClient still parses each URL again
            // for the span's attributes, about 5% of a send's CPU.
            config.tracing.tracer = nil
            self.httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
            ownsHTTPClient = true
        }
    }

    /// Task executors on the event loops that carry this client's connections: a task that runs
    /// on one finds a connection on its own loop, so a request and its answer cause no thread hop.
    package var taskExecutors: [any TaskExecutor] { EventLoopTaskExecutor.all }

    /// Closes pooled connections (when the client created its own HTTP client).
    package func shutdown() async throws {
        await pool?.shutdown()
        if ownsHTTPClient { try await httpClient.shutdown() }
    }

    // MARK: Sends

    /// `POST /api/hubs/{hub}/:send`, to every connection of the hub.
    package func sendToAll(
        hub: String, payload: ByteBuffer, contentType: String, excluded: [String] = [], filter: String? = nil,
        messageTTLSeconds: Int? = nil, metadata: [MetadataEntry] = []
    ) async throws(WebPubSubError) {
        var query = excluded.map { ("excluded", $0) }
        if let filter { query.append(("filter", filter)) }
        if let messageTTLSeconds { query.append(("messageTtlSeconds", String(messageTTLSeconds))) }
        try await call(
            "sendToAll", .POST, try hubPath(hub, [":send"]), query: query, body: payload, contentType: contentType,
            headers: metadata.map { ($0.headerName, $0.value) })
    }

    /// `POST /api/hubs/{hub}/groups/{group}/:send`.
    package func sendToGroup(
        hub: String, group: String, payload: ByteBuffer, contentType: String, excluded: [String] = [], filter: String? = nil,
        messageTTLSeconds: Int? = nil, metadata: [MetadataEntry] = []
    ) async throws(WebPubSubError) {
        var query = excluded.map { ("excluded", $0) }
        if let filter { query.append(("filter", filter)) }
        if let messageTTLSeconds { query.append(("messageTtlSeconds", String(messageTTLSeconds))) }
        try await call(
            "sendToGroup", .POST, try hubPath(hub, ["groups", .group(group), ":send"]), query: query, body: payload,
            contentType: contentType, headers: metadata.map { ($0.headerName, $0.value) })
    }

    /// `POST /api/hubs/{hub}/users/{userId}/:send`, to every connection of the user.
    package func sendToUser(
        hub: String, userId: String, payload: ByteBuffer, contentType: String, filter: String? = nil, messageTTLSeconds: Int? = nil,
        metadata: [MetadataEntry] = []
    ) async throws(WebPubSubError) {
        var query: [(String, String)] = []
        if let filter { query.append(("filter", filter)) }
        if let messageTTLSeconds { query.append(("messageTtlSeconds", String(messageTTLSeconds))) }
        try await call(
            "sendToUser", .POST, try hubPath(hub, ["users", .user(userId), ":send"]), query: query, body: payload,
            contentType: contentType, headers: metadata.map { ($0.headerName, $0.value) })
    }

    /// `POST /api/hubs/{hub}/connections/{connectionId}/:send`.
    package func sendToConnection(
        hub: String, connectionId: String, payload: ByteBuffer, contentType: String, messageTTLSeconds: Int? = nil,
        metadata: [MetadataEntry] = []
    ) async throws(WebPubSubError) {
        var query: [(String, String)] = []
        if let messageTTLSeconds { query.append(("messageTtlSeconds", String(messageTTLSeconds))) }
        try await call(
            "sendToConnection", .POST, try hubPath(hub, ["connections", .connection(connectionId), ":send"]),
            query: query, body: payload, contentType: contentType, headers: metadata.map { ($0.headerName, $0.value) })
    }

    // MARK: Groups

    /// `PUT /api/hubs/{hub}/groups/{group}/connections/{connectionId}`.
    package func addConnectionToGroup(hub: String, group: String, connectionId: String) async throws(WebPubSubError) {
        try await call(
            "addConnectionToGroup", .PUT,
            try hubPath(hub, ["groups", .group(group), "connections", .connection(connectionId)]))
    }

    /// `DELETE /api/hubs/{hub}/groups/{group}/connections/{connectionId}`.
    package func removeConnectionFromGroup(hub: String, group: String, connectionId: String) async throws(WebPubSubError) {
        try await call(
            "removeConnectionFromGroup", .DELETE,
            try hubPath(hub, ["groups", .group(group), "connections", .connection(connectionId)]))
    }

    /// `DELETE /api/hubs/{hub}/connections/{connectionId}/groups`.
    package func removeConnectionFromAllGroups(hub: String, connectionId: String) async throws(WebPubSubError) {
        try await call(
            "removeConnectionFromAllGroups", .DELETE,
            try hubPath(hub, ["connections", .connection(connectionId), "groups"]))
    }

    /// `PUT /api/hubs/{hub}/users/{userId}/groups/{group}`.
    package func addUserToGroup(hub: String, group: String, userId: String) async throws(WebPubSubError) {
        try await call(
            "addUserToGroup", .PUT,
            try hubPath(hub, ["users", .user(userId), "groups", .group(group)]))
    }

    /// `DELETE /api/hubs/{hub}/users/{userId}/groups/{group}`.
    package func removeUserFromGroup(hub: String, group: String, userId: String) async throws(WebPubSubError) {
        try await call(
            "removeUserFromGroup", .DELETE,
            try hubPath(hub, ["users", .user(userId), "groups", .group(group)]))
    }

    /// `DELETE /api/hubs/{hub}/users/{userId}/groups`.
    package func removeUserFromAllGroups(hub: String, userId: String) async throws(WebPubSubError) {
        try await call(
            "removeUserFromAllGroups", .DELETE, try hubPath(hub, ["users", .user(userId), "groups"]))
    }

    /// `POST /api/hubs/{hub}/:addToGroups`: adds the connections matching `filter` to `groups`.
    package func addConnectionsToGroups(hub: String, groups: [String], filter: String) async throws(WebPubSubError) {
        try checkGroups(groups)
        let body = JSONValue.object([("groups", .array(groups.map { .string($0) })), ("filter", .string(filter))]).serialized
        try await call(
            "addConnectionsToGroups", .POST, try hubPath(hub, [":addToGroups"]), body: ByteBuffer(string: body),
            contentType: "application/json")
    }

    /// `POST /api/hubs/{hub}/:removeFromGroups`: removes the connections matching `filter` from `groups`.
    package func removeConnectionsFromGroups(hub: String, groups: [String], filter: String) async throws(WebPubSubError) {
        try checkGroups(groups)
        let body = JSONValue.object([("groups", .array(groups.map { .string($0) })), ("filter", .string(filter))]).serialized
        try await call(
            "removeConnectionsFromGroups", .POST, try hubPath(hub, [":removeFromGroups"]), body: ByteBuffer(string: body),
            contentType: "application/json")
    }

    private func checkGroups(_ groups: [String]) throws(WebPubSubError) {
        for group in groups {
            if let problem = WebPubSubNames.groupProblem(group) { throw .invalidArgument(problem) }
        }
    }

    /// A member of a group.
    package struct GroupMember: Sendable, Equatable {
        package var connectionId: String
        package var userId: String?
    }

    /// `GET /api/hubs/{hub}/groups/{group}/connections`, following `nextLink` pages.
    package func listConnections(hub: String, group: String, top: Int? = nil) async throws(WebPubSubError) -> [GroupMember] {
        var members: [GroupMember] = []
        var query: [(String, String)] = []
        if let top { query.append(("top", String(top))) }
        var url = try makeURL(try hubPath(hub, ["groups", .group(group), "connections"]), query: query)
        while true {
            let response = try await perform("listConnections", .GET, url: url, body: nil, contentType: nil)
            guard let json = try? JSONValue.parse(response.body), case .array(let items) = json["value"] ?? .null else {
                throw WebPubSubError(kind: .status, message: "listConnections: response is not a page of members", status: 200)
            }
            for item in items {
                guard let id = item["connectionId"]?.stringValue else { continue }
                members.append(GroupMember(connectionId: id, userId: item["userId"]?.stringValue))
                if let top, members.count >= top { return members }
            }
            guard let next = json["nextLink"]?.stringValue, !next.isEmpty else { return members }
            url = try resolveNextLink(next)
        }
    }

    // MARK: Close and exists

    /// `POST /api/hubs/{hub}/:closeConnections`.
    package func closeAllConnections(hub: String, excluded: [String] = [], reason: String? = nil) async throws(WebPubSubError) {
        var query = excluded.map { ("excluded", $0) }
        if let reason { query.append(("reason", reason)) }
        try await call("closeAllConnections", .POST, try hubPath(hub, [":closeConnections"]), query: query)
    }

    /// `POST /api/hubs/{hub}/groups/{group}/:closeConnections`.
    package func closeGroupConnections(hub: String, group: String, excluded: [String] = [], reason: String? = nil) async throws(WebPubSubError) {
        var query = excluded.map { ("excluded", $0) }
        if let reason { query.append(("reason", reason)) }
        try await call(
            "closeGroupConnections", .POST, try hubPath(hub, ["groups", .group(group), ":closeConnections"]), query: query)
    }

    /// `POST /api/hubs/{hub}/users/{userId}/:closeConnections`.
    package func closeUserConnections(hub: String, userId: String, excluded: [String] = [], reason: String? = nil) async throws(WebPubSubError) {
        var query = excluded.map { ("excluded", $0) }
        if let reason { query.append(("reason", reason)) }
        try await call(
            "closeUserConnections", .POST, try hubPath(hub, ["users", .user(userId), ":closeConnections"]), query: query)
    }

    /// `DELETE /api/hubs/{hub}/connections/{connectionId}`.
    package func closeConnection(hub: String, connectionId: String, reason: String? = nil) async throws(WebPubSubError) {
        var query: [(String, String)] = []
        if let reason { query.append(("reason", reason)) }
        try await call(
            "closeConnection", .DELETE, try hubPath(hub, ["connections", .connection(connectionId)]), query: query)
    }

    /// `HEAD /api/hubs/{hub}/connections/{connectionId}`.
    package func connectionExists(hub: String, connectionId: String) async throws(WebPubSubError) -> Bool {
        try await exists("connectionExists", try hubPath(hub, ["connections", .connection(connectionId)]))
    }

    /// `HEAD /api/hubs/{hub}/groups/{group}`: whether any connection is in the group.
    package func groupExists(hub: String, group: String) async throws(WebPubSubError) -> Bool {
        try await exists("groupExists", try hubPath(hub, ["groups", .group(group)]))
    }

    /// `HEAD /api/hubs/{hub}/users/{userId}`: whether the user has a connection.
    package func userExists(hub: String, userId: String) async throws(WebPubSubError) -> Bool {
        try await exists("userExists", try hubPath(hub, ["users", .user(userId)]))
    }

    /// `HEAD /api/health`.
    package func serviceIsHealthy() async throws(WebPubSubError) -> Bool {
        try await exists("getServiceStatus", "/api/health")
    }

    // MARK: Permissions

    /// The permissions a connection can be granted.
    /// Kept under the client's name for its callers; the enum is the protocol's.
    package typealias Permission = WebPubSubProtocol.Permission

    /// `PUT /api/hubs/{hub}/permissions/{permission}/connections/{connectionId}`; `targetName` is a group (all groups when nil).
    package func grantPermission(hub: String, permission: Permission, connectionId: String, targetName: String? = nil) async throws(WebPubSubError) {
        try await call(
            "grantPermission", .PUT, try permissionPath(hub, permission, connectionId), query: targetName.map { [("targetName", $0)] } ?? [])
    }

    /// `DELETE /api/hubs/{hub}/permissions/{permission}/connections/{connectionId}`.
    package func revokePermission(hub: String, permission: Permission, connectionId: String, targetName: String? = nil) async throws(WebPubSubError) {
        try await call(
            "revokePermission", .DELETE, try permissionPath(hub, permission, connectionId),
            query: targetName.map { [("targetName", $0)] } ?? [])
    }

    /// `HEAD /api/hubs/{hub}/permissions/{permission}/connections/{connectionId}`.
    package func checkPermission(
        hub: String, permission: Permission, connectionId: String, targetName: String? = nil
    ) async throws(WebPubSubError) -> Bool {
        try await exists(
            "checkPermission", try permissionPath(hub, permission, connectionId), query: targetName.map { [("targetName", $0)] } ?? [])
    }

    // MARK: Client tokens

    /// `POST /api/hubs/{hub}/:generateToken`: a client token issued by the service.
    package func generateClientToken(
        hub: String, userId: String? = nil, roles: [String] = [], groups: [String] = [], minutesToExpire: Int = 60, clientType: ClientType = .default
    ) async throws(WebPubSubError) -> String {
        var query: [(String, String)] = []
        if clientType != .default { query.append(("clientType", clientType.rawValue)) }
        if let userId { query.append(("userId", userId)) }
        query += roles.map { ("role", $0) }
        query += groups.map { ("group", $0) }
        query.append(("minutesToExpire", String(minutesToExpire)))
        let url = try makeURL(try hubPath(hub, [":generateToken"]), query: query)
        let response = try await perform("generateClientToken", .POST, url: url, body: nil, contentType: nil)
        guard let token = (try? JSONValue.parse(response.body))?["token"]?.stringValue else {
            throw WebPubSubError(
                kind: .status, message: "generateClientToken: the response has no token", status: 200, operation: "generateClientToken")
        }
        return token
    }

    /// A client access URL, as the SDKs' `get_client_access_token`: signed here with the access
    /// key, or (with Entra ID) issued by the service's `:generateToken`.
    package func clientAccess(
        hub: String, userId: String? = nil, roles: [String] = [], groups: [String] = [], expiresIn: Duration = .seconds(3600),
        clientType: ClientType = .default
    ) async throws(WebPubSubError) -> ClientAccess {
        switch authentication {
        case .accessKey(let key):
            return try ClientAccess.make(
                endpoint: endpoint, hub: hub, key: key, userId: userId, roles: roles, groups: groups, expiresIn: expiresIn, clientType: clientType)
        case .entra:
            guard expiresIn > .zero else { throw .invalidArgument("token lifetime must be positive") }
            let minutes = Int((Double(expiresIn.components.seconds) / 60).rounded(.up))
            let token = try await generateClientToken(
                hub: hub, userId: userId, roles: roles, groups: groups, minutesToExpire: max(1, minutes), clientType: clientType)
            return try ClientAccess(endpoint: endpoint, hub: hub, token: token, clientType: clientType)
        }
    }
}
