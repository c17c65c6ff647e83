import Testing

@testable import BridgeApp

/// The text log format: one event is one line, whatever a hostile name or value holds.
@Suite struct LogTextTests {
    @Test(arguments: [
        ("chat\n2026-12-03T00:00:00Z info wps-bridge: forged", #"chat\n2026-12-03T00:00:00Z info wps-bridge: forged"#),
        ("a\r\nb\tc", #"a\r\nb\tc"#),
        ("bell\u{07}esc\u{1B}[31mdel\u{7F}c1\u{85}ls\u{2028}", #"bell\u{7}esc\u{1B}[31mdel\u{7F}c1\u{85}ls\u{2028}"#),
        ("plain text, é and 日本", "plain text, é and 日本"),
    ])
    func controlCharactersAreEscaped(input: String, expected: String) {
        let out = BridgeLogHandler.escaped(input)
        #expect(out == expected)
        #expect(!out.unicodeScalars.contains { BridgeLogHandler.isControl($0) })
    }

    @Test func valuesThatCouldPoseAsFieldsAreQuoted() {
        #expect(BridgeLogHandler.textValue("chat") == "chat")
        #expect(BridgeLogHandler.textValue("x wps.route=admin") == #""x wps.route=admin""#)
        #expect(BridgeLogHandler.textValue(#"say "hi"\"#) == #""say \"hi\"\\""#)
        // The escape's backslash is escaped inside quotes: `\\n` reads back as the two characters `\n`.
        #expect(BridgeLogHandler.textValue("a\nb=c") == #""a\\nb=c""#)
    }
}
