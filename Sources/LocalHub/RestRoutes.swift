import BridgeJSON
import Foundation
import HTTPGuards
import HTTPTypes
import Hummingbird
import ODataFilter
import WebPubSub
import WebPubSubProtocol

/// The hub's HTTP routes, on Hummingbird's router: the data-plane REST API under `/api` (one
/// route collection per resource, at the service's paths), the demo page and `/negotiate`, and
/// the answer to a refused WebSocket upgrade at `/client`.
///
/// The router's path syntax reads a segment that starts with `:` as a parameter, so the
/// service's operations (`:send`, `:closeConnections`, ...) are an `operation` parameter that
/// the handler checks.
extension LocalHub {
    func makeRouter() -> Router<HubRequestContext> {
        let router = Router(context: HubRequestContext.self)
        router.add(middleware: JSONNotFound(hub: self))
        router.add(middleware: RESTGate(hub: self))
        router.on("api/health", method: .get) { _, _ in Response(status: .ok) }
        router.on("api/health", method: .head) { _, _ in Response(status: .ok) }
        for method in [HTTPRequest.Method.post, .put, .delete, .patch] {
            router.on("api/health", method: method) { [self] _, _ in methodNotAllowed() }
        }
        router.group("api/hubs/:hub")
            .add(middleware: HubScopeMiddleware(hub: self))
            .addRoutes(hubRoutes())
            .addRoutes(groupRoutes(), atPath: "groups/:group")
            .addRoutes(userRoutes(), atPath: "users/:user")
            .addRoutes(connectionRoutes(), atPath: "connections/:connectionId")
            .addRoutes(permissionRoutes(), atPath: "permissions/:permission/connections/:connectionId")
        router.get("/") { [self] request, _ in demoPage() }
        router.get("index.html") { [self] request, _ in demoPage() }
        router.get("negotiate") { [self] request, _ in
            configuration.negotiate ? negotiate(Query(request.uri.query)) : negotiateOff()
        }
        router.get("client") { [self] _, context in clientEndpoint(context) }
        router.get("client/**") { [self] _, context in clientEndpoint(context) }
        router.get("clients/**") { [self] _, context in clientEndpoint(context) }
        return router
    }

    /// A plain GET of the WebSocket endpoint: a refused upgrade lands here, and is answered with its reason.
    func clientEndpoint(_ context: HubRequestContext) -> Response {
        if let rejection = rejectionStore.take(ObjectIdentifier(context.channel)) {
            return errorResponse(rejection.status, rejection.status == 401 ? "Unauthorized" : "Forbidden", rejection.message)
        }
        return errorResponse(400, "InvalidRequest", "this is a WebSocket endpoint: connect with a WebSocket client")
    }

    // MARK: Resources

    /// `/api/hubs/{hub}/:operation`: the hub as a whole.
    func hubRoutes() -> RouteCollection<HubRequestContext> {
        let routes = RouteCollection(context: HubRequestContext.self)
        routes.post(":operation") { [self] request, context in
            let scope = context.hubScope
            switch try context.parameter("operation") {
            case ":send":
                return send(request, body: context.body, hub: scope.hub, scope: .all, excluded: scope.excluded, filter: scope.filter)
            case ":closeConnections":
                await close(registry.targets(hub: scope.hub, scope: .all, excluded: scope.excluded, filter: nil), scope.query)
                return Response(status: .noContent)
            case let operation where operation == ":addToGroups" || operation == ":removeFromGroups":
                return updateGroups(body: context.body, hub: scope.hub, add: operation == ":addToGroups")
            case ":generateToken":
                return generateToken(hub: scope.hub, query: scope.query)
            default:
                return notFound(request.uri.path)
            }
        }
        return routes
    }

    /// `/api/hubs/{hub}/groups/{group}...`: a group, its members, sends to it.
    func groupRoutes() -> RouteCollection<HubRequestContext> {
        let routes = RouteCollection(context: HubRequestContext.self)
        routes.post(":operation") { [self] request, context in
            let (scope, group) = (context.hubScope, try context.parameter("group"))
            switch try context.parameter("operation") {
            case ":send":
                return validGroup(group)
                    ?? send(request, body: context.body, hub: scope.hub, scope: .group(group), excluded: scope.excluded, filter: scope.filter)
            case ":closeConnections":
                await close(registry.targets(hub: scope.hub, scope: .group(group), excluded: scope.excluded, filter: nil), scope.query)
                return Response(status: .noContent)
            default:
                return notFound(request.uri.path)
            }
        }
        routes.head { [self] _, context in
            Response(status: registry.groupExists(hub: context.hubScope.hub, group: try context.parameter("group")) ? .ok : .notFound)
        }
        routes.get("connections") { [self] _, context in
            listConnections(hub: context.hubScope.hub, group: try context.parameter("group"), query: context.hubScope.query)
        }
        routes.put("connections/:connectionId") { [self] _, context in
            let (group, id) = (try context.parameter("group"), try context.parameter("connectionId"))
            if let bad = validGroup(group) { return bad }
            guard connection(id, in: context.hubScope.hub) != nil else { return connectionNotFound(id) }
            switch registry.join(id, group: group) {
            case .joined: return Response(status: .ok)
            case .noSuchConnection: return connectionNotFound(id)
            case .tooManyGroups:
                return errorResponse(
                    400, "InvalidRequest", "connection \(id) is in \(registry.maxGroupsPerConnection) groups already, the most one may join")
            }
        }
        routes.delete("connections/:connectionId") { [self] _, context in
            let (group, id) = (try context.parameter("group"), try context.parameter("connectionId"))
            if connection(id, in: context.hubScope.hub) != nil { _ = registry.leave(id, group: group) }
            return Response(status: .noContent)
        }
        return routes
    }

    /// `/api/hubs/{hub}/users/{user}...`: a user's connections and groups, sends to them.
    func userRoutes() -> RouteCollection<HubRequestContext> {
        let routes = RouteCollection(context: HubRequestContext.self)
        routes.post(":operation") { [self] request, context in
            let (scope, user) = (context.hubScope, try context.parameter("user"))
            switch try context.parameter("operation") {
            case ":send":
                return send(request, body: context.body, hub: scope.hub, scope: .user(user), excluded: [], filter: scope.filter)
            case ":closeConnections":
                await close(registry.targets(hub: scope.hub, scope: .user(user), excluded: scope.excluded, filter: nil), scope.query)
                return Response(status: .noContent)
            default:
                return notFound(request.uri.path)
            }
        }
        routes.head { [self] _, context in
            Response(status: registry.userExists(hub: context.hubScope.hub, user: try context.parameter("user")) ? .ok : .notFound)
        }
        routes.put("groups/:group") { [self] _, context in
            let (user, group) = (try context.parameter("user"), try context.parameter("group"))
            if let bad = validGroup(group) { return bad }
            registry.addUser(user, hub: context.hubScope.hub, group: group)
            return Response(status: .ok)
        }
        routes.delete("groups/:group") { [self] _, context in
            registry.removeUser(try context.parameter("user"), hub: context.hubScope.hub, group: try context.parameter("group"))
            return Response(status: .noContent)
        }
        routes.delete("groups") { [self] _, context in
            registry.removeUser(try context.parameter("user"), hub: context.hubScope.hub, group: nil)
            return Response(status: .noContent)
        }
        return routes
    }

    /// `/api/hubs/{hub}/connections/{connectionId}...`: one connection.
    func connectionRoutes() -> RouteCollection<HubRequestContext> {
        let routes = RouteCollection(context: HubRequestContext.self)
        routes.post(":operation") { [self] request, context in
            let (scope, id) = (context.hubScope, try context.parameter("connectionId"))
            guard try context.parameter("operation") == ":send" else { return notFound(request.uri.path) }
            return send(request, body: context.body, hub: scope.hub, scope: .connection(id), excluded: [], filter: nil)
        }
        routes.head { [self] _, context in
            let id = try context.parameter("connectionId")
            return Response(
                status: registry.targets(hub: context.hubScope.hub, scope: .connection(id), excluded: [], filter: nil).isEmpty ? .notFound : .ok)
        }
        routes.delete { [self] _, context in
            let id = try context.parameter("connectionId")
            await close(registry.targets(hub: context.hubScope.hub, scope: .connection(id), excluded: [], filter: nil), context.hubScope.query)
            return Response(status: .noContent)
        }
        routes.delete("groups") { [self] _, context in
            let id = try context.parameter("connectionId")
            if connection(id, in: context.hubScope.hub) != nil { _ = registry.leaveAll(id) }
            return Response(status: .noContent)
        }
        return routes
    }

    /// `/api/hubs/{hub}/permissions/{permission}/connections/{connectionId}`: grants.
    func permissionRoutes() -> RouteCollection<HubRequestContext> {
        let routes = RouteCollection(context: HubRequestContext.self)
        for method in [HTTPRequest.Method.get, .post, .patch] {
            routes.on("", method: method) { [self] _, _ in methodNotAllowed() }
        }
        for method in [HTTPRequest.Method.put, .delete, .head] {
            routes.on("", method: method) { [self] request, context in
                permission(
                    method: request.method, hub: context.hubScope.hub, permission: try context.parameter("permission"),
                    connectionId: try context.parameter("connectionId"), target: context.hubScope.query.first("targetName"))
            }
        }
        return routes
    }

    // MARK: Operations

    func updateGroups(body: [UInt8], hub: String, add: Bool) -> Response {
        guard let json = try? JSONValue.parse(body), case .array(let items) = json["groups"] ?? .null, let filterText = json["filter"]?.stringValue
        else {
            return errorResponse(400, "InvalidRequest", "the body must be {\"groups\": [...], \"filter\": \"...\"}")
        }
        let groups = items.compactMap(\.stringValue)
        for g in groups { if let bad = validGroup(g) { return bad } }
        do {
            registry.updateGroups(hub: hub, groups: groups, filter: try Filter(filterText), add: add)
        } catch {
            return errorResponse(400, "InvalidRequest", "Invalid filter: \(error) (Parameter 'filter')")
        }
        return Response(status: .ok)
    }

    func generateToken(hub: String, query: Query) -> Response {
        let minutes = Int(query.first("minutesToExpire") ?? "60") ?? 0
        guard (1...525_600).contains(minutes) else { return errorResponse(400, "InvalidRequest", "minutesToExpire must be from 1 to 525600") }
        guard let clientType = ClientType(parsing: query.first("clientType") ?? "Default") else {
            return errorResponse(400, "InvalidRequest", "clientType must be one of \(ClientType.choices) (Parameter 'clientType')")
        }
        let port = listening.current ?? configuration.port
        do {
            let access = try ClientAccess.make(
                endpoint: "http://\(configuration.host):\(port)", hub: hub, key: configuration.accessKeys[0], userId: query.first("userId"),
                roles: query.all("role"), groups: query.all("group"), expiresIn: .seconds(minutes * 60), clientType: clientType)
            return json(.object([("token", .string(access.token))]))
        } catch {
            return errorResponse(400, "InvalidRequest", "\(error)")
        }
    }

    func demoPage() -> Response {
        guard configuration.negotiate else { return negotiateOff() }
        return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: DemoPage.html)))
    }

    func negotiateOff() -> Response {
        errorResponse(
            404, "NotFound",
            "the demo page and /negotiate are off: start the hub with --negotiate (or embedded.negotiate: true), for loopback development only")
    }
}

// MARK: Middleware

/// What every `/api` request passes before its route, in this order: the token (from the
/// headers alone, so that a stranger's body is never read), the body limit (413 by
/// Content-Length without reading, or while reading), the rate limit (429), and `api-version`.
struct RESTGate: RouterMiddleware {
    typealias Context = HubRequestContext
    let hub: LocalHub

    func handle(_ request: Request, context: HubRequestContext, next: (Request, HubRequestContext) async throws -> Response) async throws -> Response
    {
        let path = request.uri.path
        guard isAPIPath(path) else { return try await next(request, context) }
        if let refused = await hub.authenticateREST(request, rawPath: path) { return refused }
        let limit = hub.configuration.maxMessageBytes
        let tooLarge = hub.errorResponse(413, "RequestEntityTooLarge", "the body is larger than \(limit) bytes")
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit { return tooLarge }
        var request = request
        var context = context
        do {
            context.body = Array(try await request.collectBody(upTo: limit + 1).readableBytesView)
        } catch {
            return tooLarge
        }
        if context.body.count > limit { return tooLarge }
        if let wait = hub.checkRate() {
            // Retry-After has whole seconds only; retry-after-ms (which the Azure SDKs read first) says when exactly.
            let ms = max(1, Int((wait / .milliseconds(1)).rounded(.up)))
            return hub.errorResponse(
                429, "TooManyRequests", "rate limit of \(hub.configuration.rateLimit ?? 0) requests per second exceeded",
                headers: [.retryAfter: String(max(1, (ms + 999) / 1000)), HTTPField.Name("retry-after-ms")!: String(ms)])
        }
        if path.trimmingSuffix("/") != "/api/health", Query(request.uri.query).first("api-version")?.isEmpty != false {
            return hub.errorResponse(400, "InvalidRequest", "the api-version query parameter is required")
        }
        return try await next(request, context)
    }
}

/// For every `/api/hubs/{hub}/...` route: the hub name checked, and the query parameters that
/// sends and closes share read once (`excluded`, `filter`, `messageTtlSeconds`).
struct HubScopeMiddleware: RouterMiddleware {
    typealias Context = HubRequestContext
    let hub: LocalHub

    func handle(_ request: Request, context: HubRequestContext, next: (Request, HubRequestContext) async throws -> Response) async throws -> Response
    {
        let name = try context.parameter("hub")
        if let problem = WebPubSubNames.hubProblem(name) { return hub.errorResponse(400, "InvalidRequest", problem) }
        let query = Query(request.uri.query)
        var filter: Filter?
        if let text = query.first("filter") {
            do { filter = try Filter(text) } catch {
                return hub.errorResponse(400, "InvalidRequest", "Invalid filter: \(error) (Parameter 'filter')")
            }
        }
        if let ttl = query.first("messageTtlSeconds"), !(Int(ttl).map { (0...300).contains($0) } ?? false) {
            return hub.errorResponse(400, "InvalidRequest", "messageTtlSeconds must be 0 to 300")
        }
        var context = context
        context.hubScope = HubScope(hub: name.lowercased(), query: query, excluded: Set(query.all("excluded")), filter: filter)
        return try await next(request, context)
    }
}

/// Requests no route takes get the service's JSON error body rather than an empty 404.
struct JSONNotFound: RouterMiddleware {
    typealias Context = HubRequestContext
    let hub: LocalHub

    func handle(_ request: Request, context: HubRequestContext, next: (Request, HubRequestContext) async throws -> Response) async throws -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let path = request.uri.path
            if isAPIPath(path) { return hub.notFound(path) }
            return hub.errorResponse(404, "NotFound", "no such resource: \(request.method) \(path)")
        }
    }
}

/// Whether a path is the REST API's, decided as the router splits paths (empty segments
/// skipped): `//api/...` is routed to the API, so it is authenticated as the API.
func isAPIPath(_ path: String) -> Bool {
    path.split(separator: "/").first == "api"
}

/// The hub and query of an `/api/hubs/{hub}/...` request, read once by ``HubScopeMiddleware``.
struct HubScope: Sendable {
    /// Lower-cased: hub names are case-insensitive.
    var hub = ""
    var query = Query(nil)
    var excluded: Set<String> = []
    var filter: Filter?
}

extension HubRequestContext {
    /// A path parameter, percent-decoded (the router hands them over as they were sent).
    func parameter(_ name: String) throws -> String {
        percentDecode(try parameters.require(name))
    }
}
