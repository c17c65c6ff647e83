import BridgeTestSupport
import Foundation
import Testing

/// The test helpers themselves: a leak here brings down the whole test process.
@Suite struct TestSupportTests {
    /// `runProcess` closes the pipes it reads. Session 12 saw the test process crash in
    /// `Process.run` (a `memcpy` past the end of its list of open descriptors, numbered past
    /// 1,300) during the lease tests, which run `redis-cli` every 10-15 ms: its readers never
    /// closed their pipes (2 descriptors a run). Checked on the handle, not by counting
    /// /proc/self/fd: other tests open hundreds of descriptors alongside.
    @Test func theReaderClosesWhatItRead() async throws {
        let pipe = Pipe()
        pipe.fileHandleForWriting.write(Data("both ends".utf8))
        try pipe.fileHandleForWriting.close()
        let reading = pipe.fileHandleForReading
        #expect(reading.fileDescriptor >= 0)
        let data = await readAll(reading).value
        #expect(String(decoding: data, as: UTF8.self) == "both ends")
        #expect(reading.fileDescriptor == -1, "the read end is still open")
        // And through runProcess, many times over.
        for i in 0..<20 {
            let result = try await runProcess("/bin/cat", [], input: "line \(i)")
            #expect(result.stdout == "line \(i)")
        }
    }
}
