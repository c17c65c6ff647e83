/// The kinds of client a token is for (`:generateToken?clientType=`, the SDKs'
/// `client_protocol`), and where each connects: the audience of its tokens.
package enum ClientType: String, CaseIterable, Sendable {
    case `default` = "Default"
    case mqtt = "MQTT"
    case socketIO = "SocketIO"

    /// Case-insensitive, as the service reads `clientType`.
    package init?(parsing text: String) {
        guard let match = Self.allCases.first(where: { $0.rawValue.lowercased() == text.lowercased() }) else { return nil }
        self = match
    }

    /// The path before the hub's name: `/client/hubs/`, `/clients/mqtt/hubs/`, `/clients/socketio/hubs/`.
    package var hubsPath: String {
        switch self {
        case .default: "/client/hubs/"
        case .mqtt: "/clients/mqtt/hubs/"
        case .socketIO: "/clients/socketio/hubs/"
        }
    }

    package static let choices = allCases.map(\.rawValue).joined(separator: ", ")
}
