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
