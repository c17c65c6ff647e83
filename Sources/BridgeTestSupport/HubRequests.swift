import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// `POST {endpoint}{path}?api-version=2024-12-01` with this bearer token and a small text body:
/// the hub's answer (status and body), for tests of the REST API's authentication.
package func postToHub(_ endpoint: String, path: String = "/api/hubs/chat/:send", token: String) async throws -> (Int, String) {
    var request = HTTPClientRequest(url: endpoint + path + "?api-version=2024-12-01")
    request.method = .POST
    request.headers.add(name: "Authorization", value: "Bearer " + token)
    request.headers.add(name: "Content-Type", value: "text/plain")
    request.body = .bytes(ByteBuffer(string: "hi"))
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
    let body = try await response.body.collect(upTo: 65536)
    return (Int(response.status.code), String(buffer: body))
}
