import Testing
import WebPubSubProtocol

@Suite struct MessageMetadataTests {
    @Test func keysAreLowerCasedTokensAndValuesPrintableASCII() throws {
        let ok = try MessageMetadata.validated([("TraceId", "abc-123"), ("x.y_z", "")]).get()
        #expect(ok == [MetadataEntry(key: "traceid", value: "abc-123"), MetadataEntry(key: "x.y_z", value: "")])
        for (entries, reason) in [
            ([("", "v")], "1 to 256"), ([("a b", "v")], "header names may not"), ([("k", "caf\u{E9}")], "printable ASCII"),
            ([("k", "line\nbreak")], "printable ASCII"), ([("k", String(repeating: "v", count: 1025))], "at most 1024"),
            ([(String(repeating: "k", count: 257), "v")], "1 to 256"), ([("K", "1"), ("k", "2")], "given twice"),
            ((0..<9).map { ("k\($0)", String(repeating: "v", count: 1000)) }, "8192 bytes"),
        ] {
            guard case .failure(let error) = MessageMetadata.validated(entries) else {
                Issue.record("\(entries.map(\.0)) was taken")
                continue
            }
            #expect(error.description.contains(reason), "\(error)")
        }
    }
}
