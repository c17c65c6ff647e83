import BridgeJSON
import Testing

@Suite struct JSONValueTests {
    @Test func keepsNumbersAsWritten() throws {
        let v = try JSONValue(parsing: #"{"a": 1.0, "b": -0.5e3, "c": 12345678901234567890}"#)
        #expect(v["a"] == .number("1.0"))
        #expect(v.serialized == #"{"a":1.0,"b":-0.5e3,"c":12345678901234567890}"#)
    }

    @Test func stringsAndEscapes() throws {
        let v = try JSONValue(parsing: #""a\"b\\c\n\u00e9\ud83d\ude00""#)
        #expect(v == .string("a\"b\\c\né😀"))
        #expect(JSONValue.quoted("a\"\u{1}\n") == #""a\"\u0001\n""#)
    }

    @Test func objectMembersKeepTheirBytes() throws {
        let text = #" {"data": {"n" : 1.50}, "key":"k"} "#
        let members = try JSONValue.parseObjectMembers(Array(text.utf8))
        #expect(members.map(\.key) == ["data", "key"])
        let data = try #require(members.first)
        #expect(String(decoding: Array(text.utf8)[data.range], as: UTF8.self) == #"{"n" : 1.50}"#)
    }

    @Test func pathLookup() throws {
        let v = try JSONValue(parsing: #"{"items":[{"id":7}],"t":true,"n":null}"#)
        #expect(v.value(at: ["items", "0", "id"]) == .number("7"))
        #expect(v.value(at: ["items", "1"]) == nil)
        #expect(v.value(at: ["t"]) == .bool(true))
        #expect(v.value(at: ["n"]) == .null)
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"\\x\"", "\"a", "{} x", "\"\\ud800\"", "\u{1}"])
    func rejects(text: String) {
        #expect(throws: JSONParseError.self, "\(text)") { try JSONValue(parsing: text) }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONParseError.self) { try JSONValue.parse([0x22, 0xFF, 0x22]) }
    }
}
