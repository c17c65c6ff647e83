/// What a client connection may do beyond what every connection may, granted by a role in its
/// token (`webpubsub.sendToGroup`, `webpubsub.joinLeaveGroup.room1`) or through the REST API.
package enum Permission: String, Sendable, CaseIterable {
    case sendToGroup
    case joinLeaveGroup

    /// The role that grants it for every group.
    package var role: String { "webpubsub.\(rawValue)" }

    /// The role that grants it for `group` alone.
    package func role(group: String) -> String { "webpubsub.\(rawValue).\(group)" }
}

extension Permission {
    /// The prefix of its wildcard roles: `webpubsub.sendToGroups.` and `webpubsub.joinLeaveGroups.`
    /// followed by a ``GroupPattern``.
    package var patternRolePrefix: String { "webpubsub.\(rawValue)s." }
}

/// The wildcard roles of a connection, read once when it connects: per permission, the group
/// patterns it may use. Roles whose pattern is not valid, and patterns past
/// ``maxPatterns`` per permission, are skipped (and reported in ``skipped``), as the service does.
package struct RoleGrants: Sendable {
    package static let maxPatterns = 10

    private var patterns: [Permission: [GroupPattern]] = [:]
    /// Roles that grant nothing, with why.
    package private(set) var skipped: [(role: String, reason: String)] = []

    package init(roles: some Sequence<String>) {
        for role in roles.sorted() {
            for permission in Permission.allCases where role.hasPrefix(permission.patternRolePrefix) {
                let text = String(role.dropFirst(permission.patternRolePrefix.count))
                guard let pattern = GroupPattern(text) else {
                    skipped.append((role, GroupPattern.problem(text) ?? "not a group pattern"))
                    continue
                }
                guard patterns[permission, default: []].count < Self.maxPatterns else {
                    skipped.append((role, "more than \(Self.maxPatterns) group patterns for \(permission.rawValue)"))
                    continue
                }
                patterns[permission, default: []].append(pattern)
            }
        }
    }

    package func allows(_ permission: Permission, group: String) -> Bool {
        patterns[permission]?.contains { $0.matches(group) } ?? false
    }
}
