import ODataFilter
import Synchronization
import WebPubSubProtocol

/// A permission granted at run time through the REST API.
struct Grant: Hashable, Sendable {
    let permission: Permission
    /// A group; nil for every group.
    let target: String?
}

/// Who a send reaches.
enum Scope: Sendable {
    case all
    case group(String)
    case user(String)
    case connection(String)
}

/// Connections, groups, users and permissions of every hub, in memory. Hub names are
/// case-insensitive and kept lower-cased.
final class HubRegistry: Sendable {
    private struct State {
        var connections: [String: ClientConnection] = [:]
        /// connection id -> groups
        var memberships: [String: Set<String>] = [:]
        /// hub -> group -> connection ids
        var groups: [String: [String: Set<String>]] = [:]
        /// hub -> user -> connection ids
        var users: [String: [String: Set<String>]] = [:]
        /// hub -> user -> groups the user was added to (applied to the user's new connections too)
        var userGroups: [String: [String: Set<String>]] = [:]
        /// connection id -> permissions granted through REST
        var grants: [String: Set<Grant>] = [:]
    }

    private let state = Mutex(State())
    /// The most groups a client may join itself (`joinGroup`, REST add-to-group); groups from
    /// the token, the user's groups and filters are the server's own and are not counted against it.
    let maxGroupsPerConnection: Int

    init(maxGroupsPerConnection: Int = 1000) {
        self.maxGroupsPerConnection = maxGroupsPerConnection
    }

    enum JoinResult: Equatable {
        case joined, noSuchConnection, tooManyGroups
    }

    var connectionCount: Int { state.withLock { $0.connections.count } }

    /// Connections and non-empty groups, by hub.
    func sizes() -> [String: (connections: Int, groups: Int)] {
        state.withLock { s in
            var result: [String: (connections: Int, groups: Int)] = [:]
            for c in s.connections.values { result[c.hub, default: (0, 0)].connections += 1 }
            for (hub, groups) in s.groups { result[hub, default: (0, 0)].groups = groups.values.filter { !$0.isEmpty }.count }
            return result
        }
    }

    func connection(_ id: String) -> ClientConnection? {
        state.withLock { $0.connections[id] }
    }

    /// Registers a new connection and joins its initial groups (and the groups its user was added to).
    func add(_ c: ClientConnection, groups: [String]) {
        state.withLock { s in
            s.connections[c.id] = c
            if let user = c.userId {
                s.users[c.hub, default: [:]][user, default: []].insert(c.id)
                for g in s.userGroups[c.hub]?[user] ?? [] { Self.join(&s, c, g) }
            }
            for g in groups { Self.join(&s, c, g) }
        }
    }

    /// Forgets a connection; returns whether it was registered.
    @discardableResult
    func remove(_ id: String) -> Bool {
        state.withLock { s in
            guard let c = s.connections.removeValue(forKey: id) else { return false }
            for g in s.memberships.removeValue(forKey: id) ?? [] {
                s.groups[c.hub]?[g]?.remove(id)
                if s.groups[c.hub]?[g]?.isEmpty == true { s.groups[c.hub]?[g] = nil }
            }
            if let user = c.userId {
                s.users[c.hub]?[user]?.remove(id)
                if s.users[c.hub]?[user]?.isEmpty == true { s.users[c.hub]?[user] = nil }
            }
            s.grants[id] = nil
            return true
        }
    }

    private static func join(_ s: inout State, _ c: ClientConnection, _ group: String) {
        s.memberships[c.id, default: []].insert(group)
        s.groups[c.hub, default: [:]][group, default: []].insert(c.id)
    }

    private static func leave(_ s: inout State, _ hub: String, _ id: String, _ group: String) {
        s.memberships[id]?.remove(group)
        s.groups[hub]?[group]?.remove(id)
        if s.groups[hub]?[group]?.isEmpty == true { s.groups[hub]?[group] = nil }
    }

    func join(_ id: String, group: String) -> JoinResult {
        state.withLock { s in
            guard let c = s.connections[id] else { return .noSuchConnection }
            let current = s.memberships[id] ?? []
            guard current.contains(group) || current.count < maxGroupsPerConnection else { return .tooManyGroups }
            Self.join(&s, c, group)
            return .joined
        }
    }

    func leave(_ id: String, group: String) -> Bool {
        state.withLock { s in
            guard let c = s.connections[id] else { return false }
            Self.leave(&s, c.hub, id, group)
            return true
        }
    }

    func leaveAll(_ id: String) -> Bool {
        state.withLock { s in
            guard let c = s.connections[id] else { return false }
            for g in s.memberships[id] ?? [] { Self.leave(&s, c.hub, id, g) }
            return true
        }
    }

    func groups(of id: String) -> Set<String> {
        state.withLock { $0.memberships[id] ?? [] }
    }

    /// The groups `user` was added to (through the REST API), which its connections join.
    func groups(ofUser user: String, hub: String) -> Set<String> {
        state.withLock { $0.userGroups[hub]?[user] ?? [] }
    }

    func addUser(_ user: String, hub: String, group: String) {
        state.withLock { s in
            s.userGroups[hub, default: [:]][user, default: []].insert(group)
            for id in s.users[hub]?[user] ?? [] {
                if let c = s.connections[id] { Self.join(&s, c, group) }
            }
        }
    }

    func removeUser(_ user: String, hub: String, group: String?) {
        state.withLock { s in
            if let group {
                s.userGroups[hub]?[user]?.remove(group)
            } else {
                s.userGroups[hub]?[user] = nil
            }
            for id in s.users[hub]?[user] ?? [] {
                for g in group.map({ [$0] }) ?? Array(s.memberships[id] ?? []) { Self.leave(&s, hub, id, g) }
            }
        }
    }

    /// Adds (or removes) every connection matching `filter` to (from) `groups`.
    func updateGroups(hub: String, groups: [String], filter: Filter, add: Bool) {
        for c in targets(hub: hub, scope: .all, excluded: [], filter: filter) {
            state.withLock { s in
                guard s.connections[c.id] != nil else { return }  // closed meanwhile
                for g in groups {
                    if add { Self.join(&s, c, g) } else { Self.leave(&s, hub, c.id, g) }
                }
            }
        }
    }

    /// The connections a send reaches.
    func targets(hub: String, scope: Scope, excluded: Set<String>, filter: Filter?) -> [ClientConnection] {
        state.withLock { s in
            let ids: [String]
            switch scope {
            case .all:
                ids = s.connections.values.filter { $0.hub == hub }.map(\.id)
            case .group(let g):
                ids = Array(s.groups[hub]?[g] ?? [])
            case .user(let u):
                ids = Array(s.users[hub]?[u] ?? [])
            case .connection(let id):
                ids = s.connections[id]?.hub == hub ? [id] : []
            }
            var out: [ClientConnection] = []
            out.reserveCapacity(ids.count)
            for id in ids where !excluded.contains(id) {
                guard let c = s.connections[id] else { continue }
                if let filter {
                    let groups = s.memberships[id] ?? []
                    let matches = filter.matches { name in
                        switch name.lowercased() {
                        case "userid": c.userId.map { .string($0) } ?? .null
                        case "connectionid": .string(c.id)
                        case "groups": .collection(Array(groups))
                        default: .null
                        }
                    }
                    if !matches { continue }
                }
                out.append(c)
            }
            return out
        }
    }

    func groupExists(hub: String, group: String) -> Bool {
        state.withLock { !($0.groups[hub]?[group]?.isEmpty ?? true) }
    }

    func userExists(hub: String, user: String) -> Bool {
        state.withLock { !($0.users[hub]?[user]?.isEmpty ?? true) }
    }

    func members(hub: String, group: String) -> [ClientConnection] {
        state.withLock { s in (s.groups[hub]?[group] ?? []).sorted().compactMap { s.connections[$0] } }
    }

    func grant(_ grant: Grant, to id: String) -> Bool {
        state.withLock { s in
            guard s.connections[id] != nil else { return false }
            s.grants[id, default: []].insert(grant)
            return true
        }
    }

    func revoke(_ grant: Grant, from id: String) {
        state.withLock { s in
            if grant.target == nil {
                s.grants[id] = s.grants[id]?.filter { $0.permission != grant.permission }
            } else {
                s.grants[id]?.remove(grant)
            }
        }
    }

    /// Whether the connection may `permission` (`joinLeaveGroup`, `sendToGroup`) on `group`:
    /// from its roles (`webpubsub.P`, `webpubsub.P.group`) or from REST grants.
    func isAllowed(_ c: ClientConnection, _ permission: Permission, group: String) -> Bool {
        if c.roles.contains(permission.role) || c.roles.contains(permission.role(group: group)) { return true }
        if c.roleGrants.allows(permission, group: group) { return true }
        return state.withLock { s in
            let grants = s.grants[c.id] ?? []
            return grants.contains(Grant(permission: permission, target: nil)) || grants.contains(Grant(permission: permission, target: group))
        }
    }

    /// `HEAD .../permissions/P/connections/C[?targetName=G]`.
    func hasGrant(_ c: ClientConnection, _ permission: Permission, target: String?) -> Bool {
        if let target { return isAllowed(c, permission, group: target) }
        if c.roles.contains(permission.role) { return true }
        return state.withLock { s in (s.grants[c.id] ?? []).contains(Grant(permission: permission, target: nil)) }
    }

    func all(hub: String?) -> [ClientConnection] {
        state.withLock { s in s.connections.values.filter { hub == nil || $0.hub == hub } }
    }
}
