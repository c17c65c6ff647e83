package import BridgeConfig
package import BridgeCore
import BridgeJSON
import BridgeObservability
import Foundation
package import Logging
package import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How stdin lines become messages.
package enum StdinFormat: String, Sendable, CaseIterable {
    /// Each line is an envelope: `{"data": ..., "dataType": "json|text|binary", "key": ..., "headers": {...}}`.
    case ndjson
    /// Each line is a JSON payload as it is.
    case json
    /// Each line is a text message.
    case lines
}

/// Reads messages from standard input (or any file descriptor), one per line.
///
/// Delivery is at-most-once by nature: there is nothing to commit, and a line read before a
/// shutdown that could not be sent is logged as lost. A malformed line is dead-lettered with its
/// line number; the lines after it go on.
package struct StdinSource: SourceAdapter {
    package let name: String
    package let format: StdinFormat
    /// For `lines`: the data type of each line.
    package let linesDataType: DataType
    package let maxLineBytes: Int
    let fd: Int32
    let logger: Logger
    let counters = Counters()

    final class Counters: Sendable {
        let read = Atomic<Int>(0)
        let invalid = Atomic<Int>(0)
        let lost = Atomic<Int>(0)
    }

    package init(
        name: String, format: StdinFormat = .ndjson, linesDataType: DataType = .text, maxLineBytes: Int = 1024 * 1024,
        fd: Int32 = 0, logger: Logger
    ) {
        self.name = name
        self.format = format
        self.linesDataType = linesDataType
        self.maxLineBytes = maxLineBytes
        self.fd = fd
        self.logger = logger
    }

    package func run(emit: DeliveryEmitter) async throws {
        let reader = LineReader(fd: fd, maxLineBytes: maxLineBytes)
        do {
            while let line = try await reader.next() {
                if line.bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) && !line.truncated { continue }
                counters.read.add(1, ordering: .relaxed)
                let origin = Origin(source: name, position: String(line.number))
                let lineNumber = line.number
                let settle: @Sendable (DeliveryOutcome) -> Void = { [logger, counters] outcome in
                    if case .failed(let reason) = outcome {
                        counters.lost.add(1, ordering: .relaxed)
                        logger.warning(
                            "stdin line not delivered",
                            metadata: [LogKey.source: "\(origin.source)", LogKey.line: "\(lineNumber)", LogKey.reason: "\(reason)"])
                    }
                }
                let delivery: Delivery
                switch Self.decode(line, format: format, linesDataType: linesDataType, maxLineBytes: maxLineBytes) {
                case .success(var message):
                    message.origin = origin
                    delivery = Delivery(message: message, settle: settle)
                case .failure(let problem):
                    counters.invalid.add(1, ordering: .relaxed)
                    let raw = Message(payload: ByteBuffer(bytes: line.bytes), dataType: .text, origin: origin)
                    delivery = Delivery(message: raw, rejection: "line \(line.number): \(problem.message)", settle: settle)
                }
                try await emit.emit(delivery)
            }
        } catch is CancellationError {
        }
        logger.debug(
            "stdin finished",
            metadata: [
                LogKey.source: "\(name)", LogKey.lines: "\(counters.read.load(ordering: .relaxed))",
                LogKey.invalid: "\(counters.invalid.load(ordering: .relaxed))",
            ])
    }

    struct LineProblem: Error {
        let message: String
    }

    /// Turns one line into a message (origin left for the caller).
    static func decode(_ line: LineReader.Line, format: StdinFormat, linesDataType: DataType, maxLineBytes: Int) -> Result<Message, LineProblem> {
        let origin = Origin(source: "")
        if line.truncated { return .failure(LineProblem(message: "line is longer than \(maxLineBytes) bytes")) }
        switch format {
        case .lines:
            if linesDataType == .json, (try? JSONValue.parse(line.bytes)) == nil {
                return .failure(LineProblem(message: "not valid JSON"))
            }
            if linesDataType != .binary, String(validating: line.bytes, as: UTF8.self) == nil {
                return .failure(LineProblem(message: "not valid UTF-8"))
            }
            return .success(Message(payload: ByteBuffer(bytes: line.bytes), dataType: linesDataType, origin: origin))
        case .json:
            do {
                _ = try JSONValue.parse(line.bytes)
            } catch {
                return .failure(LineProblem(message: "not valid JSON: \(error)"))
            }
            return .success(Message(payload: ByteBuffer(bytes: line.bytes), dataType: .json, origin: origin))
        case .ndjson:
            return NDJSONEnvelope.decode(line.bytes).map { envelope in
                Message(payload: envelope.payload, dataType: envelope.dataType, key: envelope.key, headers: envelope.headers, origin: origin)
            }.mapError { LineProblem(message: $0.message) }
        }
    }
}

/// The NDJSON envelope of the stdin source and of the stdout and file sinks:
/// `{"data": ..., "dataType": "json|text|binary", "key": "...", "headers": {"name": "value"}}`.
/// `data` is forwarded exactly as written for `json`; a string for `text`; base64 for `binary`.
package struct NDJSONEnvelope: Sendable {
    package var payload: ByteBuffer
    package var dataType: DataType
    package var key: String?
    package var headers: [String: String]

    package struct Problem: Error, Sendable {
        package let message: String
    }

    package static func decode(_ bytes: [UInt8]) -> Result<NDJSONEnvelope, Problem> {
        let members: [(key: String, value: JSONValue, range: Range<Int>)]
        do {
            members = try JSONValue.parseObjectMembers(bytes)
        } catch {
            return .failure(Problem(message: "not a JSON object: \(error)"))
        }
        var data: (value: JSONValue, range: Range<Int>)?
        var dataType: DataType = .json
        var key: String?
        var headers: [String: String] = [:]
        for member in members {
            switch member.key {
            case "data":
                data = (member.value, member.range)
            case "dataType":
                guard let s = member.value.stringValue, let t = DataType(rawValue: s) else {
                    return .failure(Problem(message: "\"dataType\" must be \"json\", \"text\" or \"binary\", got \(member.value.serialized)"))
                }
                dataType = t
            case "key":
                switch member.value {
                case .string(let s): key = s
                case .number(let n): key = n
                case .null: key = nil
                default: return .failure(Problem(message: "\"key\" must be a string"))
                }
            case "headers":
                guard case .object(let pairs) = member.value else {
                    return .failure(Problem(message: "\"headers\" must be an object of strings"))
                }
                for (name, value) in pairs {
                    headers[name] = value.stringValue ?? value.serialized
                }
            default:
                return .failure(Problem(message: "unknown field \"\(member.key)\" (an envelope has data, dataType, key, headers)"))
            }
        }
        guard let data else { return .failure(Problem(message: "missing \"data\"")) }
        switch dataType {
        case .json:
            return .success(NDJSONEnvelope(payload: ByteBuffer(bytes: bytes[data.range]), dataType: .json, key: key, headers: headers))
        case .text:
            guard let s = data.value.stringValue else {
                return .failure(Problem(message: "\"data\" must be a string when dataType is text"))
            }
            return .success(NDJSONEnvelope(payload: ByteBuffer(string: s), dataType: .text, key: key, headers: headers))
        case .binary:
            guard let s = data.value.stringValue, let decoded = Data(base64Encoded: s) else {
                return .failure(Problem(message: "\"data\" must be base64 text when dataType is binary"))
            }
            return .success(NDJSONEnvelope(payload: ByteBuffer(bytes: decoded), dataType: .binary, key: key, headers: headers))
        }
    }

    /// One line (with its `\n`) for `record`. A `json` payload is written without the white
    /// space between its tokens; one that is not valid JSON is written as binary, so that nothing
    /// is lost.
    package static func encode(_ record: SinkRecord) -> String {
        var out = "{\"data\":"
        let bytes = Array(record.payload.readableBytesView)
        var dataType = record.dataType
        switch record.dataType {
        case .json where (try? JSONValue.parse(bytes)) != nil:
            // A pretty-printed payload (from Kafka or Redis) must stay on one line, or stdin
            // could not read the dead letter back.
            out += String(decoding: JSONValue.removingWhitespace(bytes), as: UTF8.self)
        case .text where String(validating: bytes, as: UTF8.self) != nil:
            JSONValue.writeString(String(decoding: bytes, as: UTF8.self), to: &out)
        default:
            dataType = .binary
            JSONValue.writeString(Data(bytes).base64EncodedString(), to: &out)
        }
        out += ",\"dataType\":\"\(dataType.rawValue)\""
        if let key = record.key {
            out += ",\"key\":"
            JSONValue.writeString(key, to: &out)
        }
        if !record.headers.isEmpty {
            out += ",\"headers\":{"
            for (i, name) in record.headers.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(name, to: &out)
                out += ":"
                JSONValue.writeString(record.headers[name]!, to: &out)
            }
            out += "}"
        }
        out += "}\n"
        return out
    }
}

/// `type: stdin`.
package struct StdinSourceFactory: SourceFactory {
    package var replicaMode: ReplicaMode { .processLocal }
    package init() {}
    package var typeName: String { "stdin" }
    package var summary: String { "standard input, one message per line (format: ndjson | json | lines)" }
    package var originFields: Set<String> { [] }

    package func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        settings.checkKeys(["format", "dataType", "maxLineBytes"], what: "a stdin source")
        let format = settings.enumeration("format", StdinFormat.self) ?? .ndjson
        let dataType = settings.enumeration("dataType", DataType.self)
        if dataType != nil, format != .lines {
            settings.value("dataType")?.report("'dataType' applies to format: lines only (ndjson lines carry their own)")
        }
        let maxLineBytes = settings.int("maxLineBytes", range: 16...(64 * 1024 * 1024)) ?? 1024 * 1024
        return StdinSource(
            name: name, format: format, linesDataType: dataType ?? .text, maxLineBytes: maxLineBytes,
            logger: context.logger)
    }
}
