import BridgeObservability
import CRdKafka
import Foundation
import Logging
import Synchronization

/// An idempotent librdkafka producer whose `produce` returns once the broker acknowledged the
/// record (its delivery report arrived), or throws the delivery error.
///
/// A thread of its own serves delivery reports (`rd_kafka_poll`), so nothing blocks Swift's
/// cooperative pool.
final class KafkaProducer: @unchecked Sendable {
    let context: KafkaClientContext
    let logger: Logger
    private let rk: OpaquePointer
    private let waiting = Mutex<[Int: CheckedContinuation<Bool, any Error>]>([:])
    private let nextId = Atomic<Int>(1)
    /// `users`: `produce` calls between their check of `closing` and their enqueue; the handle is
    /// destroyed only once none is left.
    private let state = Mutex<(closing: Bool, users: Int, done: CheckedContinuation<Void, Never>?, finished: Bool)>((false, 0, nil, false))
    let flushTimeout: Duration

    init(properties: [(String, String)], flushTimeout: Duration = .seconds(30), logger: Logger) throws(KafkaError) {
        self.logger = logger
        self.flushTimeout = flushTimeout
        self.context = KafkaClientContext(logger: logger, role: "producer")
        let conf = try KafkaConfiguration(properties).make()
        context.install(on: conf)
        rd_kafka_conf_set_dr_msg_cb(conf) { rk, message, _ in
            guard let message, let producer = KafkaProducer.registry(rk) else { return }
            producer.delivered(message.pointee)
        }
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError("cannot create the Kafka producer: \(text(errstr))")
        }
        self.rk = rk
        KafkaProducer.producers.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] = self }
        let thread = Thread { [self] in serve() }
        thread.name = "wps-kafka-producer"
        thread.start()
    }

    private static let producers = Mutex<[Int: KafkaProducer]>([:])
    fileprivate static func registry(_ rk: OpaquePointer?) -> KafkaProducer? {
        guard let rk else { return nil }
        return producers.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] }
    }

    /// Produces one record and waits for the broker's acknowledgement.
    func produce(topic: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) async throws {
        while true {
            if let fatal = context.fatal.withLock({ $0 }) { throw KafkaError("producer failed: \(fatal)") }
            let open = state.withLock { s -> Bool in
                if s.closing { return false }
                s.users += 1
                return true
            }
            guard open else { throw KafkaError("producer is closed") }
            let id = nextId.wrappingAdd(1, ordering: .relaxed).oldValue
            // Registered before the record is queued: its delivery report may come at once.
            let queueFull = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Bool, any Error>) in
                waiting.withLock { $0[id] = continuation }
                let result = enqueue(id: id, topic: topic, key: key, value: value, headers: headers)
                state.withLock { $0.users -= 1 }
                guard let code = result else { return }
                guard let continuation = waiting.withLock({ $0.removeValue(forKey: id) }) else { return }
                if code == RD_KAFKA_RESP_ERR__QUEUE_FULL.rawValue {
                    continuation.resume(returning: true)
                } else {
                    continuation.resume(throwing: KafkaError(code: rd_kafka_resp_err_t(rawValue: code), "cannot produce to '\(topic)'"))
                }
            }
            guard queueFull else { return }
            // The local queue is full (the broker is slow or away): wait for room.
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Hands the record to librdkafka; nil when queued, otherwise the error code.
    private func enqueue(id: Int, topic: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) -> Int32? {
        let hdrs = rd_kafka_headers_new(headers.count)!
        for (name, v) in headers {
            rd_kafka_header_add(hdrs, name, -1, v, -1)
        }
        let result: OpaquePointer? = topic.withCString { topicPtr in
            value.withUnsafeBytes { valuePtr in
                (key ?? []).withUnsafeBytes { keyPtr in
                    var vus = [rd_kafka_vu_t](repeating: rd_kafka_vu_t(), count: 6)
                    var n = 0
                    vus[n].vtype = RD_KAFKA_VTYPE_TOPIC
                    vus[n].u.cstr = topicPtr
                    n += 1
                    vus[n].vtype = RD_KAFKA_VTYPE_VALUE
                    vus[n].u.mem.ptr = UnsafeMutableRawPointer(mutating: valuePtr.baseAddress)
                    vus[n].u.mem.size = valuePtr.count
                    n += 1
                    if key != nil {
                        vus[n].vtype = RD_KAFKA_VTYPE_KEY
                        vus[n].u.mem.ptr = UnsafeMutableRawPointer(mutating: keyPtr.baseAddress)
                        vus[n].u.mem.size = keyPtr.count
                        n += 1
                    }
                    vus[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS
                    vus[n].u.i = RD_KAFKA_MSG_F_COPY
                    n += 1
                    vus[n].vtype = RD_KAFKA_VTYPE_OPAQUE
                    vus[n].u.ptr = UnsafeMutableRawPointer(bitPattern: id)
                    n += 1
                    vus[n].vtype = RD_KAFKA_VTYPE_HEADERS
                    vus[n].u.headers = hdrs
                    n += 1
                    return rd_kafka_produceva(rk, vus, n)
                }
            }
        }
        guard let result else { return nil }
        let code = rd_kafka_error_code(result)
        rd_kafka_error_destroy(result)
        // Headers belong to librdkafka only when the record was queued.
        rd_kafka_headers_destroy(hdrs)
        return code.rawValue
    }

    private func delivered(_ message: rd_kafka_message_t) {
        let id = Int(bitPattern: message._private)
        guard let continuation = waiting.withLock({ $0.removeValue(forKey: id) }) else { return }
        if message.err == RD_KAFKA_RESP_ERR_NO_ERROR {
            context.healthy()
            continuation.resume(returning: false)
        } else {
            let topic = message.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
            continuation.resume(throwing: KafkaError(code: message.err, "delivery to '\(topic)' failed"))
        }
    }

    private func serve() {
        // Until closed and no `produce` is between its check and its enqueue.
        while !state.withLock({ $0.closing && $0.users == 0 }) {
            rd_kafka_poll(rk, 100)
        }
        let flushed = rd_kafka_flush(rk, Int32(flushTimeout.components.seconds * 1000))
        if flushed != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("kafka producer closed with records undelivered", metadata: [LogKey.timeout: "\(flushTimeout)"])
        }
        let left = waiting.withLock { w in
            defer { w.removeAll() }
            return Array(w.values)
        }
        for continuation in left { continuation.resume(throwing: KafkaError("producer closed before the broker acknowledged")) }
        KafkaProducer.producers.withLock { _ = $0.removeValue(forKey: Int(bitPattern: UnsafeMutableRawPointer(rk))) }
        rd_kafka_destroy(rk)
        state.withLock { s in
            s.finished = true
            let done = s.done
            s.done = nil
            return done
        }?.resume()
    }

    /// Flushes what is queued (up to `flushTimeout`) and frees the client.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = state.withLock { s -> Bool in
                s.closing = true
                if s.finished { return true }
                s.done = continuation
                return false
            }
            if finished { continuation.resume() }
        }
    }
}
