import Foundation

/// A certificate authority, a server certificate and (on request) client certificates, made with
/// openssl for one test.
package struct TestPKI: Sendable {
    package let directory: String
    package var caFile: String { directory + "/ca.pem" }
    package var certFile: String { directory + "/server.pem" }
    package var keyFile: String { directory + "/server.key" }

    /// - Parameter names: the server certificate's subject alternative names.
    package init(names: [String] = ["DNS:localhost", "IP:127.0.0.1"]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("wps-pki-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let d = directory
        try Self.openssl([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=wps-bridge test CA", "-keyout", "\(d)/ca.key", "-out",
            "\(d)/ca.pem",
        ])
        try issue("server", subject: "wps-bridge test server", extensions: "subjectAltName=\(names.joined(separator: ","))")
    }

    /// A client certificate signed by this CA, for mutual TLS: its certificate and key files.
    package func client(_ name: String = "client") throws -> (certFile: String, keyFile: String) {
        try issue(name, subject: "wps-bridge test \(name)", extensions: "extendedKeyUsage=clientAuth")
        return (directory + "/\(name).pem", directory + "/\(name).key")
    }

    private func issue(_ name: String, subject: String, extensions: String) throws {
        let d = directory
        try Self.openssl([
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(subject)", "-keyout", "\(d)/\(name).key", "-out", "\(d)/\(name).csr",
        ])
        try "\(extensions)\n".write(toFile: "\(d)/\(name).ext", atomically: true, encoding: .utf8)
        try Self.openssl([
            "x509", "-req", "-in", "\(d)/\(name).csr", "-CA", "\(d)/ca.pem", "-CAkey", "\(d)/ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "\(d)/\(name).ext", "-out", "\(d)/\(name).pem",
        ])
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestEnvironmentError("openssl \(arguments.joined(separator: " ")) failed") }
    }
}
