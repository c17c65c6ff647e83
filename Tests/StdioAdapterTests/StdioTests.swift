import BridgeCore
import BridgeJSON
import Foundation
import Logging
import NIOCore
import StdioAdapter
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Runs a stdin source over a pipe fed with `input` and returns what it emitted.
func emitted(_ input: String, format: StdinFormat = .ndjson, dataType: DataType = .text, maxLineBytes: Int = 1024) async throws -> [Delivery] {
    var fds: [Int32] = [0, 0]
    #expect(pipe(&fds) == 0)
    let writeEnd = fds[1]
    let writer = Thread {
        var bytes = Array(input.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(writeEnd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes = bytes.dropFirst(n)
        }
        close(writeEnd)
    }
    writer.start()
    let source = StdinSource(name: "in", format: format, linesDataType: dataType, maxLineBytes: maxLineBytes, fd: fds[0], logger: quiet)
    let collected = Mutex<[Delivery]>([])
    try await source.run(emit: DeliveryEmitter { d in collected.withLock { $0.append(d) } })
    close(fds[0])
    return collected.withLock { $0 }
}

@Suite struct StdinSourceTests {
    @Test func ndjsonLines() async throws {
        let input = """
            {"data": {"n": 1.50}, "key": "k1", "headers": {"h": "v", "n": 2}}
            not json

            {"data": "hello", "dataType": "text"}\r
            {"data": "AAH/", "dataType": "binary"}
            {"dataType": "json"}
            {"data": 1, "extra": true}
            {"data": 5, "dataType": "xml"}
            {"data": 7}
            """
        let d = try await emitted(input)
        #expect(d.count == 8)
        #expect(String(buffer: d[0].message.payload) == #"{"n": 1.50}"#)
        #expect(d[0].message.dataType == .json && d[0].message.key == "k1")
        #expect(d[0].message.headers == ["h": "v", "n": "2"])
        #expect(d[0].message.origin.position == "1" && d[0].message.origin.source == "in")
        #expect(d[1].rejection?.hasPrefix("line 2:") == true)
        #expect(String(buffer: d[1].message.payload) == "not json")
        #expect(String(buffer: d[2].message.payload) == "hello" && d[2].message.dataType == .text)
        #expect(d[2].message.origin.position == "4")
        #expect(Array(d[3].message.payload.readableBytesView) == [0, 1, 255] && d[3].message.dataType == .binary)
        #expect(d[4].rejection?.contains("missing \"data\"") == true)
        #expect(d[5].rejection?.contains("unknown field \"extra\"") == true)
        #expect(d[6].rejection?.contains("dataType") == true)
        #expect(d[7].rejection == nil && String(buffer: d[7].message.payload) == "7")
    }

    @Test func plainLinesAndJSONLines() async throws {
        let lines = try await emitted("one\ntwo\n", format: .lines)
        #expect(lines.map { String(buffer: $0.message.payload) } == ["one", "two"])
        #expect(lines.allSatisfy { $0.message.dataType == .text })
        let json = try await emitted("{\"a\":1}\n[1,2]\nnope", format: .json)
        #expect(json.count == 3)
        #expect(json[0].rejection == nil && json[1].rejection == nil)
        #expect(json[2].rejection?.hasPrefix("line 3:") == true)
    }

    @Test func overlongLineIsRejectedAndTheNextOneRead() async throws {
        let long = String(repeating: "x", count: 5000)
        let d = try await emitted("\(long)\nshort\n", format: .lines, maxLineBytes: 100)
        #expect(d.count == 2)
        #expect(d[0].rejection?.contains("longer than 100 bytes") == true)
        #expect(String(buffer: d[1].message.payload) == "short")
        #expect(d[1].message.origin.position == "2")
    }

    @Test func lastLineWithoutNewline() async throws {
        let d = try await emitted("a\nb", format: .lines)
        #expect(d.map { String(buffer: $0.message.payload) } == ["a", "b"])
    }

    @Test func cancellationStopsAWaitingRead() async throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        let source = StdinSource(name: "in", format: .lines, fd: fds[0], logger: quiet)
        let task = Task { try await source.run(emit: DeliveryEmitter { _ in }) }
        try await Task.sleep(for: .milliseconds(100))
        let started = ContinuousClock.now
        task.cancel()
        try await task.value
        #expect(ContinuousClock.now - started < .seconds(2))
    }
}

@Suite struct EnvelopeAndSinkTests {
    @Test func encodeThenDecodeGivesTheRecordBack() throws {
        let pretty = "{\n  \"a\": [1, 2.0],\r\n\t\"s\": \"two  spaces, a \\\" quote\\n and \\\\\"\n}\n"
        let records = [
            SinkRecord(payload: ByteBuffer(string: #"{"a": [1, 2.0]}"#), dataType: .json, key: "k", headers: ["x": "y\"z"]),
            // Pretty-printed, as Kafka and Redis payloads often are: still one line.
            SinkRecord(payload: ByteBuffer(string: pretty), dataType: .json),
            SinkRecord(payload: ByteBuffer(string: "line\nbreak é"), dataType: .text),
            SinkRecord(payload: ByteBuffer(bytes: [0, 255, 10]), dataType: .binary),
        ]
        for record in records {
            let line = NDJSONEnvelope.encode(record)
            #expect(line.hasSuffix("\n") && line.dropLast().firstIndex(of: "\n") == nil, "\(line)")
            let back = try NDJSONEnvelope.decode(Array(line.dropLast().utf8)).get()
            if record.dataType == .json {
                // The same JSON, numbers and escapes as written; only the white space between tokens went.
                let original = Array(record.payload.readableBytesView)
                #expect(try JSONValue.parse(back.payload.readableBytesView) == JSONValue.parse(original))
                #expect(Array(back.payload.readableBytesView) == JSONValue.removingWhitespace(original))
            } else {
                #expect(back.payload == record.payload)
            }
            #expect(back.dataType == record.dataType)
            #expect(back.key == record.key)
            #expect(back.headers == record.headers)
        }
        let prettyBack = try NDJSONEnvelope.decode(Array(NDJSONEnvelope.encode(records[1]).dropLast().utf8)).get()
        #expect(String(buffer: prettyBack.payload) == #"{"a":[1,2.0],"s":"two  spaces, a \" quote\n and \\"}"#)
    }

    @Test func invalidJSONPayloadIsKeptAsBinary() throws {
        let line = NDJSONEnvelope.encode(SinkRecord(payload: ByteBuffer(string: "{oops"), dataType: .json))
        let back = try NDJSONEnvelope.decode(Array(line.dropLast().utf8)).get()
        #expect(back.dataType == .binary)
        #expect(String(buffer: back.payload) == "{oops")
    }

    @Test func fileSinkAppendsLines() async throws {
        let path = NSTemporaryDirectory() + "wps-sink-\(UUID().uuidString).ndjson"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = FileSink(path: path)
        #expect(!FileManager.default.fileExists(atPath: path))  // opened at the first write
        try await sink.write(SinkRecord(payload: ByteBuffer(string: "1"), dataType: .json))
        try await sink.write(SinkRecord(payload: ByteBuffer(string: "two"), dataType: .text, key: "k"))
        try await sink.close()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        #expect(lines == [#"{"data":1,"dataType":"json"}"#, #"{"data":"two","dataType":"text","key":"k"}"#])
    }

    @Test func fileSinkReportsAnUnwritablePath() async throws {
        let sink = FileSink(path: "/nonexistent-folder/x.ndjson")
        await #expect(throws: (any Error).self) {
            try await sink.write(SinkRecord(payload: ByteBuffer(string: "1"), dataType: .json))
        }
    }
}
