import ODataFilter
import Testing

@Suite struct FilterTests {
    /// A connection as the hub sees it.
    func connection(user: String?, id: String, groups: [String]) -> (String) -> FilterValue {
        { name in
            switch name.lowercased() {
            case "userid": user.map { .string($0) } ?? .null
            case "connectionid": .string(id)
            case "groups": .collection(groups)
            default: .null
            }
        }
    }

    @Test(arguments: [
        ("userId eq 'alice'", true),
        ("userId ne 'alice'", false),
        ("userId eq 'alice' and connectionId ne '123'", true),
        ("'vip' in groups", true),
        ("'other' in groups", false),
        ("'g1' in groups or 'g2' in groups or 'vip' in groups", true),
        ("userId in ('bob', 'alice')", true),
        ("userId in ('bob', 'carol')", false),
        ("userId eq 'alice' and (not ('vip' in groups))", false),
        ("not (userId eq 'bob')", true),
        ("not not (userId eq 'bob')", false),
        ("not not not (userId eq 'bob')", true),
        ("startswith(userId, 'ali')", true),
        ("endswith(userId, 'ce') and contains(userId, 'lic')", true),
        ("length(userId) gt 4", true),
        ("length(groups) eq 2", true),
        ("tolower('ALICE') eq userId", true),
        ("toupper(userId) eq 'ALICE'", true),
        ("indexof(userId, 'ice') eq 2", true),
        ("substring(userId, 1) eq 'lice'", true),
        ("substring(userId, 1, 2) eq 'li'", true),
        ("concat(userId, '-x') eq 'alice-x'", true),
        ("trim('  a ') eq 'a'", true),
        ("USERID eq 'alice'", true),
        ("userId eq null", false),
        ("userId ne null", true),
        ("true", true),
        ("userId gt 'aaa' and userId lt 'b'", true),
        ("userId eq 'o''brien'", false),
    ])
    func evaluates(text: String, expected: Bool) throws {
        let filter = try Filter(text)
        #expect(filter.matches(connection(user: "alice", id: "c1", groups: ["vip", "news"])) == expected, "\(text)")
    }

    @Test func quoteEscaping() throws {
        let filter = try Filter("userId eq 'o''brien'")
        #expect(filter.matches(connection(user: "o'brien", id: "c", groups: [])))
    }

    @Test func anonymousUserIsNull() throws {
        #expect(try Filter("userId eq null").matches(connection(user: nil, id: "c", groups: [])))
    }

    @Test func collectsIdentifiers() throws {
        #expect(try Filter("userId eq 'a' or 'g' in groups").identifiers == ["userId", "groups"])
    }

    @Test(arguments: [
        "",
        "userId eq",
        "userId eq 'unterminated",
        "(userId eq 'a'",
        "userId eq 'a')",
        "userId eq 'a' and",
        "frobnicate(userId)",
        "length(userId, 'x') eq 1",
        "userId in ()",
        "not length(userId) gt 5",
        "'a'",
        "userId eq 'a' # comment",
        "and",
    ])
    func rejects(text: String) {
        #expect(throws: FilterSyntaxError.self, "\(text)") { try Filter(text) }
    }

    /// Each bound refuses for its own reason, and just under it the same shape parses: a
    /// refusal for any other reason (a bad token, `true` not being a boolean here) cannot pass.
    @Test func boundsNestingAndLength() throws {
        func refusal(_ text: String) -> String {
            do {
                _ = try Filter(text)
                return "parsed"
            } catch {
                return error.message
            }
        }
        let valid = "userId eq 'a'"
        #expect(refusal(String(repeating: "(", count: 10_000) + valid + String(repeating: ")", count: 10_000)).contains("nested too deeply"))
        #expect(refusal(String(repeating: "not ", count: 10_000) + "(" + valid + ")").contains("nested too deeply"))
        #expect(refusal(String(repeating: "not ", count: 65) + "(" + valid + ")").contains("nested too deeply"))
        _ = try Filter(String(repeating: "not ", count: 30) + "(" + valid + ")")
        _ = try Filter(String(repeating: "(", count: 30) + valid + String(repeating: ")", count: 30))
        #expect(throws: FilterSyntaxError.self) { try Filter(Array(repeating: valid, count: 5000).joined(separator: " and ")) }
        #expect((try? Filter(Array(repeating: valid, count: 100).joined(separator: " or "))) != nil)
    }

    @Test func typeErrorNamesTheExpression() {
        #expect {
            try Filter("not length(userId) gt 5")
        } throws: { error in
            "\(error)".contains("not length(userId)")
        }
    }
}
