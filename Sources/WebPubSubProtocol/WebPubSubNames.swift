/// Names that Web PubSub accepts, checked before a request is made.
package enum WebPubSubNames {
    /// `^[A-Za-z][A-Za-z0-9_`,.[\]]{0,127}$`
    package static func hubProblem(_ hub: String) -> String? {
        guard let first = hub.unicodeScalars.first else { return "hub name is empty" }
        guard hub.unicodeScalars.count <= 128 else { return "hub name '\(hub)' is longer than 128 characters" }
        guard ("a"..."z").contains(first) || ("A"..."Z").contains(first) else { return "hub name '\(hub)' must start with a letter" }
        for c in hub.unicodeScalars {
            let ok = ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || "_`,.[]".unicodeScalars.contains(c)
            if !ok { return "hub name '\(hub)' may only contain letters, digits and _ ` , . [ ]" }
        }
        return nil
    }

    /// Not empty, not only white space, not `.` or `..` (a path would lose its segment), at most
    /// 1,024 characters.
    package static func groupProblem(_ group: String) -> String? {
        // UTF-16 units, as the service counts (.NET's Length): a "character" of many combining
        // marks must not make a name, and the patterns matched against it, unbounded.
        if group.utf16.count > 1024 { return "group name is longer than 1024 characters" }
        return nameProblem(group, kind: "group name")
    }

    /// Not empty, not only white space, not `.` or `..`.
    package static func userProblem(_ user: String) -> String? { nameProblem(user, kind: "user id") }

    /// Not empty, not only white space, not `.` or `..`.
    package static func connectionProblem(_ connection: String) -> String? { nameProblem(connection, kind: "connection id") }

    /// A client event's name: `^[a-z][a-z0-9_.-]{0,127}$`, case-insensitive (it becomes the
    /// `ce-eventName` header and a URL segment upstream).
    package static func eventProblem(_ name: String) -> String? {
        let scalars = Array(name.unicodeScalars)
        guard let first = scalars.first else { return "event name is empty" }
        guard scalars.count <= 128 else { return "event name is longer than 128 characters" }
        func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        guard isLetter(first) else { return "event name must start with a letter" }
        for c in scalars where !(isLetter(c) || ("0"..."9").contains(c) || "_.-".unicodeScalars.contains(c)) {
            return "event name may only contain letters, digits and _ . -"
        }
        return nil
    }

    static func nameProblem(_ name: String, kind: String) -> String? {
        if name.isEmpty { return "\(kind) is empty" }
        if name.allSatisfy(\.isWhitespace) { return "\(kind) is only white space" }
        if name == "." || name == ".." { return "\(kind) '\(name)' is not allowed (a URL path would drop it)" }
        return nil
    }
}
