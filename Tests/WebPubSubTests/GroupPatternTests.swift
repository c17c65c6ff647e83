import Testing
import WebPubSubProtocol

/// Wildcard group roles, as the service reads them.
@Suite struct GroupPatternTests {
    @Test(arguments: [
        ("chat.*", "chat.room", true), ("chat.*", "chat.", true), ("chat.*", "chat.room.1", false), ("chat.*", "chatroom", false),
        ("chat.**", "chat.a.b.c", true), ("chat.**", "chat", false), ("**", "anything.at.all", true),
        ("room?", "room1", true), ("room?", "room", false), ("room?", "room12", false), ("room?", "room.", false),
        ("*.news", "eu.news", true), ("*.news", "eu.west.news", false), ("**.news", "eu.west.news", true),
        ("a*b*c", "axxbyyc", true), ("a*b*c", "ab.c", false),
        (#"a\*b"#, "a*b", true), (#"a\*b"#, "axb", false), (#"a\?"#, "a?", true), (#"a\\"#, #"a\"#, true),
        ("Chat.*", "chat.x", false), ("room-1", "room-1", true), ("room-1", "room-2", false),
    ])
    func matches(pattern: String, group: String, expected: Bool) throws {
        let p = try #require(GroupPattern(pattern))
        #expect(p.matches(group) == expected, "\(pattern) ~ \(group)")
    }

    @Test(arguments: [
        ("", "must not be empty"), (#"a\b"#, "escapes only"), (#"room\"#, "escapes only"),
        ("*.*.*.*.*.*", "at most 5"), ("a**b**c**", "at most 5"), ("??????", "at most 5"), ("**.**.**", "at most 5"), ("*.*.?.?.?.?", "at most 5"),
        (String(repeating: "a", count: 1025), "at most 1024"),
    ])
    func refuses(pattern: String, reason: String) {
        #expect(GroupPattern(pattern) == nil)
        #expect(GroupPattern.problem(pattern)?.contains(reason) == true, "\(GroupPattern.problem(pattern) ?? "nil")")
    }

    /// The most a pattern may hold against the longest group: an answer, whatever it is, without backtracking.
    @Test func theWorstPatternIsStillOnePass() throws {
        let p = try #require(GroupPattern("*a*a*a*a*b"))
        #expect(!p.matches(String(repeating: "a", count: 1024)))
        #expect(p.matches(String(repeating: "a", count: 1023) + "b"))
    }

    /// Names are counted in UTF-16 units, as the service counts them: one "character" of many
    /// combining marks is not one.
    @Test func groupNamesAreBoundedInUTF16Units() {
        let marks = "a" + String(repeating: "\u{0301}", count: 1100)
        #expect(marks.count == 1)
        #expect(WebPubSubNames.groupProblem(marks) != nil)
        #expect(WebPubSubNames.groupProblem(String(repeating: "a", count: 1024)) == nil)
        #expect(GroupPattern.escape(#"a*b?c\"#) == #"a\*b\?c\\"#)
    }

    @Test func rolesGrantPerPermissionAndSkipWhatIsNotValid() {
        var roles = ["webpubsub.sendToGroups.room.*", "webpubsub.joinLeaveGroups.lobby?", "webpubsub.sendToGroups.a\\b", "webpubsub.other.*"]
        roles += (0..<11).map { "webpubsub.joinLeaveGroups.team\($0).*" }
        let grants = RoleGrants(roles: roles)
        #expect(grants.allows(.sendToGroup, group: "room.1") && !grants.allows(.joinLeaveGroup, group: "room.1"))
        #expect(grants.allows(.joinLeaveGroup, group: "lobby1") && !grants.allows(.sendToGroup, group: "lobby1"))
        #expect(grants.skipped.map(\.role).contains("webpubsub.sendToGroups.a\\b"))
        #expect(grants.skipped.contains { $0.reason.contains("more than 10") }, "\(grants.skipped)")
        #expect(grants.allows(.joinLeaveGroup, group: "lobby2"), "the first patterns count, whatever their order")
    }
}
