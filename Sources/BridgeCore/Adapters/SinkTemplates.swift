import BridgeConfig

extension Template {
    /// Renders the template over a sink record: `{key}`, `{header.NAME}`, `{json.PATH}`.
    package func render(_ record: SinkRecord) throws(TemplateResolutionError) -> String {
        let message = Message(
            payload: record.payload, dataType: record.dataType, key: record.key, headers: record.headers, origin: Origin(source: "sink"))
        return try render(MessageContext(message))
    }
}

extension ConfigMapping {
    /// Reads a sink's template setting; reading a source's fields (`{topic}`, `{offset}` ...),
    /// which a sink record does not have, is reported.
    package func sinkTemplate(_ key: String, required: Bool = false) -> Template? {
        let template = template(key, required: required)
        for field in template?.fields ?? [] where field.originField != nil || field == .position || field == .source {
            value(key)?.report("{\(field)} is not known when writing to a sink; use {key}, {header.NAME} or {json.PATH}")
        }
        return template
    }
}
