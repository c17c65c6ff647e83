import HTTPTypes

extension HTTPFields {
    /// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case, RFC 6750
    /// 2.1), nil when there is none or it is empty.
    package var bearerToken: String? {
        guard let value = self[.authorization], value.count > 7, value.prefix(7).lowercased() == "bearer " else { return nil }
        let token = value.dropFirst(7).drop { $0 == " " }
        return token.isEmpty ? nil : String(token)
    }
}
