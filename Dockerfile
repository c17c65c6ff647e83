# syntax=docker/dockerfile:1
# wps-bridge as a sidecar image: built with the Swift toolchain, run on Swift's slim runtime.
#   docker build -t wps-bridge .
#   docker run --rm -v $PWD/bridge.yaml:/etc/wps-bridge/bridge.yaml:ro \
#     -e WEBPUBSUB_CONNECTION_STRING -p 8081:8081 wps-bridge
ARG SWIFT_VERSION=6.3

FROM swift:${SWIFT_VERSION}-bookworm AS build
WORKDIR /src
# The C libraries first (a layer of its own): librdkafka >= 2.2 and hiredis >= 1.0 with TLS, built
# from Debian trixie's source packages, exactly as on a developer machine.
COPY scripts/bootstrap scripts/bootstrap
RUN scripts/bootstrap
# The whole package (SwiftPM checks every target's folder, tests included); .dockerignore
# keeps build output and virtualenvs out.
COPY . .
RUN swift build -c release --static-swift-stdlib --product wps-bridge \
    && cp "$(swift build -c release --static-swift-stdlib --show-bin-path)/wps-bridge" /usr/local/bin/wps-bridge

FROM swift:${SWIFT_VERSION}-bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libsasl2-2 libssl3 zlib1g liblz4-1 libzstd1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/lib/librdkafka.so.1 /usr/local/lib/libhiredis.so.1.1.0 /usr/local/lib/libhiredis_ssl.so.1.1.0 /usr/local/lib/
RUN ldconfig && useradd --system --uid 10001 --home-dir /var/lib/wps-bridge --create-home wps
COPY --from=build /usr/local/bin/wps-bridge /usr/local/bin/wps-bridge
# Fail the build, not the first start, when a runtime library is missing.
RUN ! ldd /usr/local/bin/wps-bridge /usr/local/lib/librdkafka.so.1 /usr/local/lib/libhiredis_ssl.so.1.1.0 | grep 'not found' \
    && wps-bridge --version
USER 10001
WORKDIR /var/lib/wps-bridge
# server.listen in the config: event handler, /healthz, /readyz, /metrics.
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/wps-bridge"]
CMD ["run", "--config", "/etc/wps-bridge/bridge.yaml", "--log-format", "json"]
