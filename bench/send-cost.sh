#!/bin/bash
# The CPU one send costs the bridge (BENCHMARKS.md, "The cost of one send"): 100,000 NDJSON lines
# of 256 bytes from stdin into a standalone `wps-bridge hub` with no subscribers; prints the
# bridge's wall, user and system time, and the hub's CPU seconds.
#   bench/send-cost.sh [ORDERING] [ROUTE_LINE]      e.g.  bench/send-cost.sh strict "    batch: {maxMessages: 100}"
# Release binaries from `make bench-build` (BIN overrides the folder). Figures only.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build-static/release}
ORDERING=${1:-none}
ROUTE=${2:-}
KEY=send-cost-key-0123456789ABCDEFGHIJKLMNOP
WORK=$(mktemp -d)
trap 'kill $HUB 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 -c "
import sys
for i in range(100000):
    head = '{\"i\":%d,\"pad\":\"' % i
    sys.stdout.write(head + 'x' * (256 - len(head) - 2) + '\"}\n')" > "$WORK/input.ndjson"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/wps-bridge" hub --port "$PORT" --access-key "$KEY" > "$WORK/hub.out" 2> "$WORK/hub.log" &
HUB=$!
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
cat > "$WORK/bridge.yaml" <<YAML
webpubsub:
  connectionString: "Endpoint=http://127.0.0.1;Port=$PORT;AccessKey=$KEY;Version=1.0;"
  hub: bench
sources:
  - {name: in, type: stdin, format: json}
routes:
  - name: bench
    from: in
    to: [{group: bench}]
    ordering: $ORDERING
$ROUTE
deadLetter: {type: file, path: $WORK/dead.ndjson}
YAML
/usr/bin/time -f "bridge: wall %e s, user %U s, sys %S s (per message: divide by 100,000)" \
  "$BIN/wps-bridge" run --config "$WORK/bridge.yaml" --quiet < "$WORK/input.ndjson" 2> "$WORK/bridge.log" || true
tail -1 "$WORK/bridge.log"
echo "hub: $(awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' /proc/$HUB/stat) s of CPU"
