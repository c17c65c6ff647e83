import BridgeCore
import BridgeObservability
import CRdKafka
import Foundation
import Logging
import Synchronization

/// The librdkafka this process runs with, e.g. `2.8.0`.
package var librdkafkaVersion: String { String(cString: rd_kafka_version_str()) }

/// The oldest librdkafka that talks to current brokers: before 2.2.0 it skips tagged fields
/// wrongly and the first ApiVersions request fails with "Read underflow".
let minimumLibrdkafkaVersion = 0x0202_0000

/// The text in a NUL-terminated buffer librdkafka wrote into.
func text(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// An error from librdkafka or from using it.
package struct KafkaError: Error, Sendable, CustomStringConvertible {
    /// librdkafka's error code (`rd_kafka_resp_err_t`), or nil for a usage error.
    package let code: Int32?
    package let message: String

    init(code: rd_kafka_resp_err_t, _ context: String) {
        self.code = code.rawValue
        self.message = "\(context): \(String(cString: rd_kafka_err2str(code)))"
    }

    init(_ message: String) {
        self.code = nil
        self.message = message
    }

    package var description: String { message }
}

/// Builds an `rd_kafka_conf_t` from properties, reporting the first one librdkafka refuses.
struct KafkaConfiguration: Sendable {
    var properties: [(String, String)]

    init(_ properties: [(String, String)]) {
        self.properties = properties
    }

    /// A new conf object, owned by the caller until `rd_kafka_new` takes it.
    func make() throws(KafkaError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        for (name, value) in properties {
            if let problem = Self.set(conf, name, value) {
                rd_kafka_conf_destroy(conf)
                throw KafkaError(problem)
            }
        }
        return conf
    }

    /// nil when accepted, otherwise librdkafka's explanation.
    static func set(_ conf: OpaquePointer, _ name: String, _ value: String) -> String? {
        var errstr = [CChar](repeating: 0, count: 512)
        let result = rd_kafka_conf_set(conf, name, value, &errstr, errstr.count)
        guard result != RD_KAFKA_CONF_OK else { return nil }
        return text(errstr)
    }

    /// Checks properties without creating a client: for config validation. Returns a problem per
    /// refused property.
    static func check(_ properties: [(String, String)]) -> [(String, String)] {
        let conf = rd_kafka_conf_new()!
        defer { rd_kafka_conf_destroy(conf) }
        return properties.compactMap { name, value in set(conf, name, value).map { (name, $0) } }
    }
}

/// Client-wide callbacks (errors, logs) and what they feed: the logger and a health state.
/// Passed to librdkafka as the opaque pointer, retained for the client's lifetime.
class KafkaClientContext: @unchecked Sendable {
    let logger: Logger
    let role: String
    /// Set from librdkafka's threads: the last error that made the client unhealthy, logged once
    /// per reason and per 30 s (a broker that stays down gives one line every 30 s rather than
    /// one per retry), and its code (0 while healthy).
    let health: ConnectionHealth
    private let problemCode = Atomic<Int32>(0)
    let fatal = Mutex<String?>(nil)

    init(logger: Logger, role: String) {
        self.logger = logger
        self.role = role
        health = ConnectionHealth(logger: logger)
    }

    /// The current problem, e.g. "all brokers are down", for readiness.
    var currentProblem: String? { fatal.withLock { $0 } ?? health.problem }

    /// Whether the current problem is about reaching the brokers (down, unresolvable, timing
    /// out), which a broker's answer shows to be over.
    var problemIsConnectivity: Bool {
        let err = rd_kafka_resp_err_t(rawValue: problemCode.load(ordering: .relaxed))
        return [RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__RESOLVE, RD_KAFKA_RESP_ERR__TIMED_OUT].contains(
            err)
    }

    /// Called when the client made progress (a message, an assignment, a delivery report).
    func healthy() {
        guard problemCode.exchange(0, ordering: .relaxed) != 0 else { return }
        health.recovered("kafka client recovered", metadata: [LogKey.kafkaRole: "\(role)"])
    }

    /// A client-level error from librdkafka.
    func error(code: Int32, reason: String) {
        let err = rd_kafka_resp_err_t(rawValue: code)
        var metadata: Logger.Metadata = [LogKey.kafkaRole: "\(role)", LogKey.kafkaError: "\(String(cString: rd_kafka_err2name(err)))"]
        if err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN {
            metadata[LogKey.hint] = "librdkafka keeps reconnecting; check `brokers` and that the broker is up"
        } else if err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED {
            metadata[LogKey.hint] = "check the sasl.* / ssl.* settings under `librdkafka:`"
        }
        // The problem first, then its code: a `healthy()` in between (another librdkafka
        // thread) sees no code and leaves the problem, and the next one clears both.
        health.failed(reason, "kafka client error", metadata: metadata)
        problemCode.store(code == 0 ? -1 : code, ordering: .relaxed)
    }

    /// librdkafka's own log lines: warnings and errors as such, the rest at debug.
    func log(level: Int32, facility: String, message: String) {
        let swiftLevel: Logger.Level =
            switch level {
            case ...3: .error
            case 4: .warning
            case 5, 6: .debug
            default: .trace
            }
        logger.log(level: swiftLevel, "librdkafka \(facility): \(message)", metadata: [LogKey.kafkaRole: "\(role)"])
    }

    /// Installs the error and log callbacks and this context as the opaque pointer.
    func install(on conf: OpaquePointer) {
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(self).toOpaque())
        rd_kafka_conf_set_error_cb(conf) { rk, code, reason, opaque in
            guard let opaque else { return }
            let context = Unmanaged<KafkaClientContext>.fromOpaque(opaque).takeUnretainedValue()
            let reasonText = reason.map { String(cString: $0) } ?? "unknown error"
            if code == RD_KAFKA_RESP_ERR__FATAL.rawValue, let rk {
                var errstr = [CChar](repeating: 0, count: 512)
                let underlying = rd_kafka_fatal_error(rk, &errstr, errstr.count)
                let message = "fatal: \(text(errstr)) (\(String(cString: rd_kafka_err2name(underlying))))"
                context.fatal.withLock { $0 = message }
                context.logger.critical("kafka client failed", metadata: [LogKey.kafkaRole: "\(context.role)", LogKey.error: "\(message)"])
                return
            }
            context.error(code: code, reason: reasonText)
        }
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, message in
            guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
            let context = Unmanaged<KafkaClientContext>.fromOpaque(opaque).takeUnretainedValue()
            context.log(
                level: level, facility: facility.map { String(cString: $0) } ?? "", message: message.map { String(cString: $0) } ?? "")
        }
    }

    static func from(_ rk: OpaquePointer?) -> KafkaClientContext? {
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return nil }
        return Unmanaged<KafkaClientContext>.fromOpaque(opaque).takeUnretainedValue()
    }
}

/// A topic and partition.
struct TopicPartition: Hashable, Sendable, CustomStringConvertible {
    let topic: String
    let partition: Int32
    var description: String { "\(topic)[\(partition)]" }
}

extension UnsafeMutablePointer where Pointee == rd_kafka_topic_partition_list_t {
    /// The entries of a partition list.
    var partitions: [TopicPartition] {
        (0..<Int(pointee.cnt)).map { i in
            let e = pointee.elems[i]
            return TopicPartition(topic: String(cString: e.topic), partition: e.partition)
        }
    }
}

/// Builds a partition list (with offsets when given); the caller destroys it.
func makePartitionList(_ entries: [(TopicPartition, Int64?)]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
    let list = rd_kafka_topic_partition_list_new(Int32(max(entries.count, 1)))!
    for (tp, offset) in entries {
        let e = rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition)!
        if let offset { e.pointee.offset = offset }
    }
    return list
}
