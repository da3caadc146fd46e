#!/usr/bin/env python3
"""The experiments behind docs/FINDINGS.md, run by ci/experiments once the stack is up.

Each experiment runs side by side in this one run on this machine, on the stack
as the user keeps it (its Kafka database and its stores are neither reset nor
emptied; the figures say how full they were). Every number in FINDINGS.md comes
from this run: raw clients (`clima bench`), `clima load --json` (HDR
histograms, counts verified in both stores), the services' own /metrics
(histogram deltas), redis-cli against both stores, and ci/faults.
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stack import CLIMA, ROOT, STATE, kafka_records, load, machine, say, scrape, series_labels, tansu_db_mib

OUT = Path(os.environ.get("CLIMA_EXPERIMENTS_OUT", ROOT / "docs"))
CHARTS = OUT / "findings"
SCALE = float(os.environ.get("CLIMA_EXPERIMENTS_SCALE", "1"))
BENCH = [str(ROOT / "target/release/clima"), "bench"]
PORTS = {name: int(os.environ[f"{name.upper()}_PORT"]) for name in ("redis", "valkey", "kafka", "rabbitmq", "api")}
# Bytes of one TweetRecord on the brokers (id, time, a short description, country, weather).
RECORD_BYTES = 110
BATCHES = (1, 100, 1000)


def n(count):
    return max(10, int(count * SCALE))


def json_lines(command):
    command = [str(part) for part in command]
    say(" ".join(command))
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def run(command):
    return subprocess.run([str(part) for part in command], check=True, stdout=subprocess.PIPE, text=True).stdout


# --- /metrics histograms ----------------------------------------------------------------

def buckets(text, name, labels):
    """Cumulative bucket counts {le: count} of histogram `name` whose labels include `labels`."""
    found = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{"):
            continue
        series, value = line.rsplit(" ", 1)
        pairs = series_labels(series)
        if all(pairs.get(key) == wanted for key, wanted in labels.items()):
            le = float("inf") if pairs["le"] == "+Inf" else float(pairs["le"])
            found[le] = found.get(le, 0) + float(value)
    return found


def quantiles(before, after, qs=(0.5, 0.99)):
    """Upper bucket bounds (ms) holding each quantile of what was observed between two scrapes."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    if total <= 0:
        return {f"p{int(q * 100)}": None for q in qs} | {"count": 0}
    result = {"count": int(total)}
    for q in qs:
        bound = next(le for le in sorted(delta) if delta[le] >= q * total)
        result[f"p{int(q * 100)}"] = None if bound == float("inf") else bound * 1000
    return result


class Histograms:
    """Deltas of the services' latency histograms around a block."""

    WATCHED = {
        "kafka publish": ("writer-kafka", "clima_publish_duration_seconds", {"broker": "kafka"}),
        "rabbitmq publish": ("writer-rabbitmq", "clima_publish_duration_seconds", {"broker": "rabbitmq"}),
        "redis count": ("consumer-kafka", "clima_store_write_duration_seconds", {"store": "redis"}),
        "valkey count": ("consumer-rabbitmq", "clima_store_write_duration_seconds", {"store": "valkey"}),
    }

    def __enter__(self):
        self.before = {key: buckets(scrape(service), name, labels)
                       for key, (service, name, labels) in self.WATCHED.items()}
        return self

    def __exit__(self, *exc):
        self.result = {key: quantiles(self.before[key], buckets(scrape(service), name, labels))
                       for key, (service, name, labels) in self.WATCHED.items()}


# --- the experiments ----------------------------------------------------------------------

def brokers_raw():
    """Plain rdkafka and lapin clients, equal batch sizes: one message carries
    `batch` tweets' worth of bytes, as clima's writers send them."""
    rows = []
    messages = {1: n(30_000), 100: n(3_000), 1000: n(600)}
    for batch in BATCHES:
        size = batch * RECORD_BYTES
        kafka = json_lines([*BENCH, "kafka", "--kafka-brokers", f"127.0.0.1:{PORTS['kafka']}", "--messages",
                            messages[batch], "--size", size])
        rabbit = json_lines([*BENCH, "rabbitmq", "--amqp-url", f"amqp://guest:guest@127.0.0.1:{PORTS['rabbitmq']}/%2f",
                             "--queue-type", "quorum", "--messages", messages[batch], "--size", size])
        for broker, rates in (("Kafka (tansu)", kafka), ("RabbitMQ (quorum)", rabbit)):
            for rate in rates:
                rows.append({"broker": broker, "batch": batch, "operation": rate["operation"],
                             "messages_per_s": rate["per_second"], "tweets_per_s": rate["per_second"] * batch,
                             "mib_per_s": rate["per_second"] * size / 2**20})
    return rows


def clima_batches():
    """clima end to end at the same batch sizes (arrays of `batch` tweets, each
    one writer call and one broker message per broker), with each writer's own
    publish time and each consumer's store time from their /metrics."""
    rows = []
    counts = {1: n(60_000), 100: n(200_000), 1000: n(400_000)}
    for batch in BATCHES:
        with Histograms() as histograms:
            report, _ = load("--count", counts[batch], "--batch", batch, "--concurrency", 64 if batch == 1 else 8,
                             "--verify", "--verify-timeout", "600s")
        rows.append({"batch": batch, "report": report, "histograms": histograms.result})
    return rows


def age():
    """A user's Kafka holds hours of traffic. A younger one here gets a million
    single tweets first (half a million records or more is left as it is)."""
    before = {"records": kafka_records() or 0, "db_mib": tansu_db_mib()}
    if before["records"] >= 500_000:
        return {"before": before, "added_tweets": 0}
    report, _ = load("--count", n(1_000_000), "--concurrency", 256, "--verify", "--verify-timeout", "900s")
    return {"before": before, "added_tweets": report["accepted"]}


def burst():
    """Consumer lag under a burst: 10 s of open-loop load, in arrays of 100 so
    that the load tool keeps its schedule, at a rate above what the Kafka side
    counts here; then how long each side takes to count it."""
    before = {"db_mib": tansu_db_mib(), "records": kafka_records() or 0}
    with Histograms() as histograms:
        report, code = load("--rate", max(1000, int(40_000 * SCALE)), "--batch", 100, "--count", n(400_000),
                            "--verify", "--verify-timeout", "600s", check=False)
    after = {"db_mib": tansu_db_mib(), "records": kafka_records() or 0}
    return {"report": report, "exit_code": code, "histograms": histograms.result, "kafka_before": before,
            "kafka_after": after}


def cli(port, *args):
    return run(["redis-cli", "-p", port, *args]).strip()


def stores():
    """Redis and Valkey side by side: versions, the raw counting rate, memory of
    clima's counters as kept, and the cost of append-only persistence on
    scratch servers of each (the machine's Redis keeps nothing on disk)."""
    result = {"versions": {}, "raw": [], "counters": {}, "aof": []}
    for store in ("redis", "valkey"):
        info = dict(line.split(":", 1) for line in cli(PORTS[store], "INFO", "server").splitlines()
                    if ":" in line and not line.startswith("#"))
        result["versions"][store] = {key: info[key].strip() for key in ("redis_version", "valkey_version",
                                                                         "server_name") if key in info}
        result["raw"] += json_lines([*BENCH, "store", "--name", store, "--url", f"redis://127.0.0.1:{PORTS[store]}",
                                     "--operations", n(1_000_000)])
        counters = {}
        for key in ("clima:country", "clima:weather", "clima:country_weather"):
            counters[key] = {"bytes": int(cli(PORTS[store], "MEMORY", "USAGE", key) or 0),
                             "fields": int(cli(PORTS[store], "HLEN", key) or 0)}
        total = int(cli(PORTS[store], "GET", "clima:total") or 0)
        result["counters"][store] = {"keys": counters, "total": total,
                                     "dbsize": int(cli(PORTS[store], "DBSIZE")),
                                     "used_memory": int(dict(line.split(":", 1) for line in cli(
                                         PORTS[store], "INFO", "memory").splitlines() if ":" in line)["used_memory"])}
    binaries = {"redis": "redis-server", "valkey": os.environ["VALKEY_SERVER"]}
    scratch = STATE / "experiments-stores"
    for store, binary in binaries.items():
        for appendonly in ("no", "yes"):
            port = 6395 if store == "redis" else 6396
            folder = scratch / f"{store}-{appendonly}"
            subprocess.run(["rm", "-rf", str(folder)], check=True)
            folder.mkdir(parents=True)
            server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", appendonly, "--appendfsync", "everysec", "--dir", str(folder)],
                                      stdout=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    if subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).returncode == 0:
                        break
                    time.sleep(0.1)
                rate = json_lines([*BENCH, "store", "--name", store, "--url", f"redis://127.0.0.1:{port}",
                                   "--operations", n(1_000_000)])[0]
                memory = json_lines([*BENCH, "dedupe-memory", "--url", f"redis://127.0.0.1:{port}",
                                     "--tweets", n(200_000)]) if appendonly == "no" else []
            finally:
                server.terminate()
                server.wait()
            result["aof"].append({"store": store, "appendonly": appendonly, "per_second": rate["per_second"],
                                  "dedupe": memory[0] if memory else None})
    return result


def grpc_vs_json():
    """The API→writer hop's two encodings, same calls, same process: tonic
    (HTTP/2 + protobuf) against HTTP/1.1 + the proto's JSON mapping."""
    rows = []
    for batch in (1, 100, 1000):
        rows += json_lines([*BENCH, "hop", "--records", batch, "--calls", n({1: 40_000, 100: 4_000, 1000: 600}[batch]),
                            "--concurrency", 8])
    return rows


def restart_stack(extra_env):
    say("restarting the clima services" + (f" with {extra_env}" if extra_env else ""))
    subprocess.run(["bash", str(ROOT / "ci/up")], check=True, env={**os.environ, **extra_env}, stdout=sys.stderr)


def consumer_design():
    """Per-message against batched counting: the consumers with
    --batch-size 1 (one message, so one writer call's tweets, per count-script
    round trip) and with the default 500, under the same closed-loop load of
    single tweets, each side's end-to-end rate and POST→counted time."""
    rows = []
    try:
        for label, env in (("per message (--batch-size 1)", {"CLIMA_CONSUMER_BATCH_SIZE": "1"}),
                           ("batched (--batch-size 500, the default)", {})):
            restart_stack(env)
            with Histograms() as histograms:
                report, _ = load("--count", n(100_000), "--concurrency", 256, "--verify", "--verify-timeout", "600s")
            rows.append({"design": label, "report": report, "histograms": histograms.result})
    finally:
        restart_stack({})
    return rows


def wait_ready(url, times=5, timeout=60):
    """Until `url` answers 200 `times` in a row (with several processes on one
    port, each connection may reach another of them)."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < times:
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready in {timeout} s")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                streak = streak + 1 if response.status == 200 else 0
        except OSError:
            streak = 0
            time.sleep(0.2)


def replicas():
    """1, 2 and 3 API processes on one port (SO_REUSEPORT, as a Service spreads
    connections over pods) with 1 writer per broker, then 1 and 2 APIs with 2
    writers per broker (the API balancing each broker's calls over `a|b`)."""
    env = {**os.environ, "CLIMA_KAFKA_BROKERS": f"127.0.0.1:{PORTS['kafka']}", "CLIMA_KAFKA_IDEMPOTENCE": "false",
           "CLIMA_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{PORTS['rabbitmq']}/%2f", "CLIMA_LOG_FORMAT": "json"}
    started = []

    def spawn(name, *args):
        log = (STATE / "logs" / f"experiments-{name}.log").open("w")
        process = subprocess.Popen([str(ROOT / "target/release/clima"), *map(str, args)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=log)
        started.append(process)
        return process

    def stop(processes):
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()

    port, one, two = 8180, "http://127.0.0.1:50051,http://127.0.0.1:50052", \
        "http://127.0.0.1:50051|http://127.0.0.1:50061,http://127.0.0.1:50052|http://127.0.0.1:50062"
    rows = []
    try:
        spawn("writer-kafka-2", "writer", "kafka", "--listen", "127.0.0.1:50061",
              "--admin-listen", "127.0.0.1:9131")
        spawn("writer-rabbitmq-2", "writer", "rabbitmq", "--listen", "127.0.0.1:50062",
              "--admin-listen", "127.0.0.1:9132")
        for apis, writers in ((1, one), (2, one), (3, one), (1, two), (2, two)):
            group = [spawn(f"api-{index}", "api", "--listen", f"127.0.0.1:{port}", "--reuse-port",
                           "--admin-listen", f"127.0.0.1:{9120 + index}", "--writer", writers) for index in range(apis)]
            wait_ready(f"http://127.0.0.1:{port}/readyz", times=5 * apis)
            report, _ = load("--url", f"http://127.0.0.1:{port}/input", "--count", n(100_000), "--concurrency", 256,
                             "--verify", "--verify-timeout", "600s")
            rows.append({"apis": apis, "writers_per_broker": 1 if writers == one else 2, "report": report})
            stop(group)
    finally:
        stop([process for process in started if process.poll() is None])
    return rows


def ordering():
    """How far each broker's order departs from the API's acceptance order:
    `clima bench order` taps the topic (a reader of no group) and the exchange
    (a private queue bound beside clima's) while one client sends single tweets
    one at a time, then 64 at once."""
    rows = []
    for concurrency, tweets in ((1, n(3_000)), (64, n(50_000))):
        ready = STATE / "experiments-order.ready"
        ready.unlink(missing_ok=True)
        command = [*BENCH, "order", "--kafka-brokers", f"127.0.0.1:{PORTS['kafka']}", "--amqp-url",
                   f"amqp://guest:guest@127.0.0.1:{PORTS['rabbitmq']}/%2f", "--tweets", tweets, "--timeout", "600s",
                   "--ready-file", ready]
        say(" ".join(map(str, command)))
        tap = subprocess.Popen([str(part) for part in command], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if tap.poll() is not None or time.monotonic() > deadline:
                tap.kill()
                raise SystemExit("clima bench order did not start listening")
            time.sleep(0.1)
        try:
            report, _ = load("--count", tweets, "--concurrency", concurrency, "--verify", "--verify-timeout", "600s")
        except BaseException:
            tap.kill()
            raise
        output, _ = tap.communicate(timeout=660)
        if tap.returncode != 0:
            raise SystemExit(f"clima bench order failed ({tap.returncode})")
        rows += [{"concurrency": concurrency, "accepted": report["accepted"], **json.loads(line)}
                 for line in output.splitlines() if line.startswith("{")]
    return rows


def kill_and_restart(service, env):
    pidfile = STATE / "pids" / f"{service}.pid"
    with contextlib.suppress(ProcessLookupError, FileNotFoundError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", f"source ci/lib.sh && start_service {service}"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


# kill -9s per run. The RabbitMQ consumer's restart is cheap; the Kafka
# consumer is killed once, because tansu's group coordinator holds a killed
# member for its session timeout (45 s) before the new one gets partitions, and
# a trial with five kills in 7.5 s crashed tansu (an `unreachable!` in its
# update_group).
KILLS = {"consumer-rabbitmq": 40, "consumer-kafka": 1}


def counting(service, timeout=20):
    """Until the (restarted) consumer has counted tweets since it started, so
    that a kill lands on one at work, not on one still starting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in scrape(service).splitlines():
                if line.startswith("clima_counted_tweets_total{") and float(line.split()[-1]) > 0:
                    return True
        time.sleep(0.05)
    return False


def ack_timing():
    """Acking after the store (clima) against acking before it, under
    `kill -9` of both consumers while a load runs; then each store's count of
    the run is compared with what was accepted."""
    rows = []
    phase = random.Random(12)
    try:
        for label, ack in (("after the store (clima)", "after-store"), ("before the store", "before-store")):
            # Counted under keys of its own: what acking first loses must not
            # leave the user's counts short of the log.
            extra = {"CLIMA_CONSUMER_ACK": ack, "CLIMA_KEY_PREFIX": "clima-experiment-ack"}
            env = {**os.environ, **extra}
            restart_stack(extra)
            # Until both consumers count (tansu takes seconds to give a new
            # group member its partitions).
            load("--count", 100, "--verify", "--verify-timeout", "300s", env=env)
            killed = dict.fromkeys(KILLS, 0)
            with tempfile.NamedTemporaryFile(suffix=".json") as report_file:
                command = [str(CLIMA), "load", "--json", report_file.name, "--count", str(n(1_000_000)), "--batch",
                           "100", "--concurrency", "8", "--verify", "--verify-timeout", "150s"]
                say(" ".join(command))
                loading = subprocess.Popen(command, stdout=sys.stderr, env=env)
                time.sleep(1)
                working = set(KILLS)
                for kill in range(max(KILLS.values())):
                    for service, kills in KILLS.items():
                        if kill >= kills or service not in working:
                            continue
                        if counting(service):
                            # At a random point of its work: right after a
                            # count shows in /metrics it is between batches.
                            time.sleep(phase.uniform(0, 0.25))
                            kill_and_restart(service, env)
                            killed[service] += 1
                        else:  # its backlog is counted: a kill now would land on an idle consumer
                            working.discard(service)
                code = loading.wait()
                report = json.loads(Path(report_file.name).read_text() or "null") or {}
            counted = report.get("counted") or {}
            rows.append({"ack": label, "accepted": report.get("accepted", 0), "exit_code": code, "killed": killed,
                         "redis": counted.get("redis_total"), "valkey": counted.get("valkey_total"),
                         "exact": counted.get("exact")})
    finally:
        restart_stack({})
    return rows


def recount():
    """Kafka's replay: `clima recount --from-beginning` reads the whole
    retained topic and rebuilds the counts (RabbitMQ keeps nothing to replay)."""
    command = [str(CLIMA), "recount", "--from-beginning", "--json", "--kafka-brokers", f"127.0.0.1:{PORTS['kafka']}",
               "--store-url", f"redis://127.0.0.1:{PORTS['redis']}"]
    say(" ".join(command))
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    result = next((json.loads(line) for line in output.splitlines() if line.startswith("{")), {})
    return {"exit_code": process.returncode, "max_rss_mib": usage.ru_maxrss / 1024,
            **{key: result.get(key) for key in ("messages", "invalid_messages", "seconds", "agree")},
            "tweets": (result.get("recount") or {}).get("total"), "live": (result.get("live") or {}).get("total")}


def faults():
    """Crash and restart, one side at a time, under load (ci/faults)."""
    env = {**os.environ, "CLIMA_FAULTS": "kill-consumer-kafka kill-consumer-rabbitmq restart-kafka restart-rabbitmq",
           "CLIMA_FAULT_TWEETS": str(n(3000))}
    say("ci/faults " + env["CLIMA_FAULTS"])
    output = subprocess.run(["bash", str(ROOT / "ci/faults")], env=env, stdout=subprocess.PIPE, text=True)
    rows = []
    for line in output.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[0] in env["CLIMA_FAULTS"].split() and parts[-1] == "s":
            rows.append({"fault": parts[0], "accepted": int(parts[1]), "redis": int(parts[2]),
                         "valkey": int(parts[3]), "lost": int(parts[4]), "duplicated": int(parts[5]),
                         "recovered_s": float(parts[6])})
    return {"rows": rows, "exit_code": output.returncode}


# --- the report ---------------------------------------------------------------------------

def chart_bars(path, title, groups, series, ylabel, log=False):
    """Grouped bars: `series` is {name: [value per group]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [g + index * width for g in range(len(groups))]
        axis.bar(positions, [v or 0 for v in values], width, label=name)
    axis.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if log:
        axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def ms(value):
    return "–" if value is None else f"{value:,.1f}"


def markdown(result):
    m = result["machine"]
    lines = [
        "# What we measured",
        "",
        f"Produced by `ci/experiments` at commit `{m['commit']}` on {m['date']}: {m['cpus']} × {m['cpu_model']}, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}; Kafka = {m['kafka']}, RabbitMQ 3.10 (the machine's), "
        "the load generator, every service, both brokers and both stores on the same machine"
        + (f"; every run scaled by {SCALE}" if SCALE != 1 else "") + ". Every number below comes from that one run; "
        "`docs/findings/experiments.json` holds them all. Figures on 2 cores show ratios and behaviour, not what "
        "a cluster reaches.",
        "",
        "The stack was measured as kept"
        + (f" (its Kafka held {result['aged']['before']['records']:,} records, so {result['aged']['added_tweets']:,} "
           "single tweets were added first, as hours of use would)" if result["aged"]["added_tweets"] else "")
        + f": its Kafka database held {result['kafka_at_start']['records']:,} records "
        f"({result['kafka_at_start']['db_mib']:,.0f} MiB) when the experiments began, and the stores kept their counts "
        f"(Redis {result['stores']['counters']['redis']['total']:,} tweets, Valkey "
        f"{result['stores']['counters']['valkey']['total']:,} when measured).",
        "",
        "## Kafka vs RabbitMQ here",
        "",
        "### Raw publish and consume at equal batch sizes",
        "",
        "Setup: `clima bench kafka` (rdkafka, acks=all, 3 partitions) and `clima bench rabbitmq` (lapin, persistent "
        f"messages, pipelined publisher confirms, quorum queue); one message = `batch` × {RECORD_BYTES} bytes, as "
        "a writer sends a batch of tweets.",
        "",
        "| broker | tweets per message | operation | messages/s | tweets/s | MiB/s |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in result["brokers_raw"]:
        lines.append(f"| {row['broker']} | {row['batch']:,} | {row['operation']} | {row['messages_per_s']:,.0f} | "
                     f"{row['tweets_per_s']:,.0f} | {row['mib_per_s']:,.1f} |")
    lines += ["", "![raw publish, tweets/s by batch size](findings/brokers-raw.png)", "",
              "### Inside clima: each writer's publish time and each consumer's store time",
              "",
              "Setup: `clima load --batch B --verify` (arrays of B tweets; the API groups concurrent requests "
              "into shared writer calls, one broker message each, so a call carries one request or more); p50/p99 "
              "are the upper bounds of the histogram buckets of the services' own /metrics "
              "(`clima_publish_duration_seconds`, `clima_store_write_duration_seconds`) over the run.",
              "",
              "| tweets per request | accepted tweets/s | counted end to end/s | exact | Kafka publish p50 / p99 (ms) "
              "| RabbitMQ publish p50 / p99 (ms) | Redis count p50 / p99 (ms) | Valkey count p50 / p99 (ms) "
              "| POST→counted p50 Redis / Valkey (ms) |",
              "| ---: | ---: | ---: | --- | --- | --- | --- | --- | --- |"]
    for row in result["clima_batches"]:
        report, h = row["report"], row["histograms"]
        counted = report["counted"]
        lines.append(
            f"| {row['batch']:,} | {report['accepted_per_s']:,.0f} | {counted['end_to_end_per_s']:,.0f} | "
            f"{'yes' if counted['exact'] else 'NO'} | "
            + " | ".join(f"{ms(h[key]['p50'])} / {ms(h[key]['p99'])}"
                         for key in ("kafka publish", "rabbitmq publish", "redis count", "valkey count"))
            + f" | {counted['redis_post_to_counted_ms']['p50']:,.0f} / {counted['valkey_post_to_counted_ms']['p50']:,.0f} |")
    b = result["burst"]
    report = b["report"] or {}
    counted = report.get("counted") or {}
    schedule = report.get("schedule") or {}
    grew_records = b["kafka_after"]["records"] - b["kafka_before"]["records"]
    grew_mib = b["kafka_after"]["db_mib"] - b["kafka_before"]["db_mib"]
    accepted = report.get("accepted", 0)
    lines += ["", "![publish time by batch size](findings/publish-latency.png)", "",
              "### Consumer lag under a burst, and what Kafka keeps",
              "",
              f"Setup: open loop at {report.get('target_tweets_per_s') or 0:,.0f} tweets/s in arrays of 100 for "
              f"{report.get('sent', 0):,} tweets, then `--verify` waits until both stores counted everything."
              + (f" The load tool fell behind: it sent {schedule.get('sent_tweets_per_s', 0):,.0f}/s "
                 "(BEHIND SCHEDULE)." if schedule.get("behind") else ""),
              "",
              "| | Redis (from Kafka) | Valkey (from RabbitMQ) |", "| --- | ---: | ---: |"]
    if counted:
        for q in ("p50", "p99", "max"):
            lines.append(f"| POST→counted {q} (ms) | {counted['redis_post_to_counted_ms'][q]:,.0f} | "
                         f"{counted['valkey_post_to_counted_ms'][q]:,.0f} |")
        lines.append(f"| counted exactly | {'yes' if counted['exact'] else 'NO'} | |")
    lines += ["", f"Kafka kept what it was sent: {accepted:,} accepted tweets added {grew_records:,} records and "
              f"{grew_mib:,.1f} MiB to tansu's sqlite database, i.e. "
              f"{(grew_mib / accepted * 1e6) if accepted else 0:,.0f} MiB per million tweets sent in arrays "
              "of 100 (one record carries a writer call's tweets), kept for the topic's retention (7 days in k8s) "
              "and readable again by "
              "`clima recount --from-beginning`. RabbitMQ deletes a message once it is acked: its queue holds "
              "only the backlog. (A real Kafka's log is smaller per record than tansu's sqlite rows; this is tansu.)",
              "", "### Crash and restart, one side at a time", "",
              f"Setup: `ci/faults` with {n(3000):,} tweets per row under load, retried with the same "
              "Idempotency-Key; time to recover = from the fault until the part answers its health check.", "",
              "| fault | accepted | counted Redis | counted Valkey | lost | counted twice | time to recover (s) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["faults"]["rows"]:
        lines.append(f"| {row['fault']} | {row['accepted']:,} | {row['redis']:,} | {row['valkey']:,} | {row['lost']} | "
                     f"{row['duplicated']} | {row['recovered_s']:.1f} |")
    lines += ordering_section(result["ordering"]) + recount_section(result["recount"])

    s = result["stores"]
    lines += ["## Redis vs Valkey", "",
              "| | Redis | Valkey |", "| --- | --- | --- |",
              f"| version (`INFO server`) | {s['versions']['redis'].get('redis_version')} | "
              f"{s['versions']['valkey'].get('valkey_version', '?')} (reports redis_version "
              f"{s['versions']['valkey'].get('redis_version', '?')} for clients) |"]
    raw = {rate["ceiling"]: rate["per_second"] for rate in s["raw"]}
    lines.append(f"| pipelined HINCRBY on the stack's store (ops/s; this Redis keeps nothing on disk, this Valkey "
                 f"is append-only) | {raw.get('redis', 0):,.0f} | "
                 f"{raw.get('valkey', 0):,.0f} |")
    for key in ("clima:country", "clima:weather", "clima:country_weather"):
        cells = []
        for st in ("redis", "valkey"):
            usage = s["counters"][st]["keys"][key]
            cells.append(f"{usage['bytes']:,} B for {usage['fields']} fields "
                         f"({usage['bytes'] / max(1, usage['fields']):,.0f} B each)")
        lines.append(f"| `{key}` (`MEMORY USAGE`) | {cells[0]} | {cells[1]} |")
    lines.append(f"| keys / used_memory as kept | {s['counters']['redis']['dbsize']:,} / "
                 f"{s['counters']['redis']['used_memory'] / 2**20:,.1f} MiB | {s['counters']['valkey']['dbsize']:,} / "
                 f"{s['counters']['valkey']['used_memory'] / 2**20:,.1f} MiB |")
    aof = {(row["store"], row["appendonly"]): row for row in s["aof"]}
    for appendonly, label in (("no", "no persistence"), ("yes", "AOF, fsync every second")):
        lines.append(f"| scratch server, {label} (HINCRBY ops/s) | {aof[('redis', appendonly)]['per_second']:,.0f} | "
                     f"{aof[('valkey', appendonly)]['per_second']:,.0f} |")
    for store in ("redis", "valkey"):
        cost = 1 - aof[(store, "yes")]["per_second"] / aof[(store, "no")]["per_second"]
        s.setdefault("aof_cost", {})[store] = cost
    lines.append(f"| AOF everysec costs | {s['aof_cost']['redis']:.0%} | {s['aof_cost']['valkey']:.0%} |")
    dedupe = {row["store"]: row["dedupe"] for row in s["aof"] if row["dedupe"]}
    if dedupe:
        lines.append("| clima's dedupe markers, bytes each (`clima bench dedupe-memory`) | "
                     + " | ".join(f"{dedupe[st]['used_memory_growth_bytes'] / max(1, dedupe[st]['tweets']):,.0f}"
                                  for st in ("redis", "valkey")) + " |")
    lines += ["", "![Redis vs Valkey](findings/stores.png)", "",
              "Facts a user meets (not measured): Redis up to 7.2 and Valkey are BSD-3-Clause; Redis 7.4 moved to "
              "RSALv2/SSPLv1 and Redis 8 added AGPLv3 as an option. Valkey forked Redis 7.2.4 under the Linux "
              "Foundation; it ships `valkey-server` and `valkey-cli`, and `redis-cli` talks to it unchanged (this "
              "run used `redis-cli` against both). clima uses only commands both have (Lua `EVALSHA`, hashes, "
              "`EXPIRE … NX`), so the same script counts in both.", ""]

    lines += ["## gRPC/protobuf vs HTTP/JSON for the API→writer hop", "",
              "Setup: `clima bench hop`, one process: a `WriterService` server that decodes and answers (no broker), "
              "called the same number of times with the same `PublishRequest`s at 8 calls in flight, over tonic "
              "(HTTP/2, protobuf) and over HTTP/1.1 keep-alive with the proto's JSON mapping (pbjson, the mapping "
              "`POST /input` uses). CPU is the process's user+system time, client and server together, per tweet. "
              "gRPC multiplexes the 8 calls on one HTTP/2 connection, as the API does per writer; HTTP/1.1 "
              "needs a connection per call in flight, so JSON had 8. Bytes are request bodies only (no headers). "
              "The third encoding is gRPC as clima's writer served it "
              "until this run found it: its accepted sockets kept Nagle's algorithm on (tonic sets TCP_NODELAY only "
              "on listeners it binds itself), so an answer could wait for the caller's delayed ACK, up to 40 ms. "
              "The writer now sets it.", "",
              "| encoding | tweets per call | calls/s | tweets/s | p50 / p99 (ms) | request bytes per tweet | "
              "CPU µs per tweet |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in result["grpc_vs_json"]:
        lines.append(f"| {row['encoding']} | {row['records']:,} | {row['calls_per_s']:,.0f} | {row['tweets_per_s']:,.0f} | "
                     f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f} | {row['body_bytes_per_tweet']:,.0f} | "
                     f"{row['cpu_us_per_tweet']:,.1f} |")
    lines += ["", "![gRPC vs JSON](findings/grpc-vs-json.png)", "",
              "## The consumer design: per-message against batched counting", "",
              f"Setup: the same closed-loop load ({n(100_000):,} single tweets, 256 connections) with both consumers "
              "restarted with `--batch-size 1` (each count-script call takes one broker message, i.e. one writer "
              "call's tweets) and with the default 500 (up to 500 tweets from many messages per call). Both ack "
              "after the store (see below for acking before it).", "",
              "| consumers | counted end to end/s | exact | Redis count calls | Valkey count calls "
              "| Redis count p50 / p99 (ms, bucket bounds) | Valkey count p50 / p99 (ms, bucket bounds) "
              "| POST→counted p50 / p99 Redis (ms) "
              "| POST→counted p50 / p99 Valkey (ms) |",
              "| --- | ---: | --- | ---: | ---: | --- | --- | --- | --- |"]
    for row in result["consumer_design"]:
        report, h = row["report"], row["histograms"]
        counted = report["counted"]
        lines.append(
            f"| {row['design']} | {counted['end_to_end_per_s']:,.0f} | {'yes' if counted['exact'] else 'NO'} | "
            f"{h['redis count']['count']:,} | {h['valkey count']['count']:,} | "
            f"{ms(h['redis count']['p50'])} / {ms(h['redis count']['p99'])} | "
            f"{ms(h['valkey count']['p50'])} / {ms(h['valkey count']['p99'])} | "
            f"{counted['redis_post_to_counted_ms']['p50']:,.0f} / {counted['redis_post_to_counted_ms']['p99']:,.0f} | "
            f"{counted['valkey_post_to_counted_ms']['p50']:,.0f} / {counted['valkey_post_to_counted_ms']['p99']:,.0f} |")
    lines += ack_timing_section(result["ack_timing"])
    rows = result["replicas"]
    lines += ["", "## Replicas of the API and the writers", "",
              f"Setup: `clima api --reuse-port` processes on one port (the kernel spreads connections over them, as "
              f"a Service over pods), each sending every tweet to both brokers' writers; `--writer a|b` balances "
              f"each broker's calls over two writer processes. Closed loop, {n(100_000):,} single tweets over 256 "
              "connections, counted in both stores.", "",
              "| APIs | writers per broker | accepted/s | counted end to end/s | POST p50 / p99 (ms) | exact |",
              "| ---: | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        report = row["report"]
        lines.append(f"| {row['apis']} | {row['writers_per_broker']} | {report['accepted_per_s']:,.0f} | "
                     f"{report['counted']['end_to_end_per_s']:,.0f} | {report['request_latency_ms']['p50']:.1f} / "
                     f"{report['request_latency_ms']['p99']:.1f} | {'yes' if report['counted']['exact'] else 'NO'} |")
    base = rows[0]["report"]["accepted_per_s"] if rows else 0
    best = max(rows, key=lambda row: row["report"]["accepted_per_s"]) if rows else None
    if best and base:
        lines += ["", f"The best row reached {best['report']['accepted_per_s'] / base:.2f}× the single API's rate; "
                  "each row is one run: differences of a few per cent are within this machine's noise. All processes, the "
                  "brokers and the load generator share the same 2 cores, so a replica can only win what one process "
                  "leaves idle (waiting on the network), never more CPU: this shows the cost of the extra hop and "
                  "processes, not the scaling a cluster would see. For an HPA (min 1, max 3 at 30 % CPU, as the "
                  "reference uses) it means: replicas help once one pod's CPU is the limit, which a pod given its "
                  "own core reaches well below this machine's total; measure that per pod in the cluster."]
    lines += ["", "## Not measured here", "",
              "- Order after a redelivery: the taps above see no redeliveries. A RabbitMQ consumer that crashes "
              "returns its unacked messages to the queue, and a Kafka consumer that restarts reads again from its "
              "last commit; both put tweets behind newer ones.", ""]
    return "\n".join(lines)


def ordering_section(rows):
    lines = ["", "### Ordering", "",
             "Setup: `clima bench order` reads clima's topic (a reader of no group, from each partition's end) and "
             "a private queue bound to clima's exchange with its routing key (a copy of every message, in the "
             "order the exchange routed them; clima's own consumers lose nothing), while `clima load` sends single "
             "tweets, first one request at a time, then 64 at once. A tweet is late when a tweet the API accepted "
             "after it (`received_at`) came before it; its lateness is how much later that one was accepted.", "",
             "| requests in flight | broker | order read | messages | tweets | late | late share "
             "| lateness of the late ones, p50 / p99 / max (ms) |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['concurrency']} | {row['broker']} | {row['order']} | {row['messages']:,} | "
                     f"{row['tweets']:,} | {row['late']:,} | {row['late_share']:.2%} | {row['lateness_p50_ms']:.1f} / "
                     f"{row['lateness_p99_ms']:.1f} / {row['lateness_max_ms']:.1f} |")
    short = [row for row in rows if row["tweets"] < row["accepted"]]
    lines += ["", "How to read it: with one request in flight, a partition or the queue can only be out of order if "
              "clima reorders one client's sequence; with 64, the API runs several writer calls per broker at once "
              "(each one broker message), so requests accepted close together can reach a broker in either order. "
              "Kafka's messages carry no key: librdkafka spreads them over the partitions, and a reader of the whole "
              "topic interleaves partitions by fetch. Per-minute counters bucket on `received_at`, not on arrival, "
              "so no count depends on this order (ARCHITECTURE.md, guarantee 5)."
              + (f" {len(short)} row(s) read fewer tweets than were accepted (the tap timed out): partial."
                 if short else ""), ""]
    return lines


def recount_section(result):
    rate = (result["messages"] or 0) / result["seconds"] if result.get("seconds") else 0
    agreement = {True: "they agreed", False: "they differed", None: "no comparison"}[result.get("agree")]
    return ["### Replay: `clima recount --from-beginning`", "",
            f"It read the whole retained topic, {result['messages'] or 0:,} messages ({result['tweets'] or 0:,} "
            f"distinct tweets), in {result['seconds'] or 0:,.1f} s ({rate:,.0f} messages/s), with a peak RSS of "
            f"{result['max_rss_mib']:,.0f} MiB (it keeps every tweet id in memory to count each once), and "
            f"compared the rebuilt counts with Redis's live total of {result['live'] or 0:,}: {agreement} "
            f"(exit code {result['exit_code']})."
            + (" A live count below the log's means tweets the log holds that this Redis never counted or no "
               "longer holds: a Redis that restarted without its data (this machine's keeps nothing on disk), "
               "`ci/faults`, which counts into a Redis of its own while writing to the same topic, or a consumer "
               "run with `--ack before-store` that was killed; above it, client retries later than the dedupe "
               "window. The recount says that they differ, not why."
               if result.get("agree") is False else "")
            + " RabbitMQ has nothing to replay: it deletes a message once it is acked.", ""]


def ack_timing_section(rows):
    lines = ["", "### Acking before the store against after it, under `kill -9`", "",
             f"Setup: both consumers restarted with `--ack after-store` (clima's design) and then `--ack before-store` "
             f"(the batch in hand committed or acked before its count); in each, `clima load` sends "
             f"{n(1_000_000):,} tweets in arrays of 100 while the consumers are killed with `kill -9` and restarted, "
             "each kill once the consumer has counted tweets since its last start (so it lands on one at work): "
             "the RabbitMQ one up to "
             f"{KILLS['consumer-rabbitmq']} times, the Kafka one {KILLS['consumer-kafka']} time (tansu's group "
             "coordinator holds a killed member for its 45 s session timeout before the new one gets partitions; a "
             "trial with five kills in 7.5 s crashed tansu). A warm-up load counted in both stores comes first. "
             "Then each store's count of the run is compared with what was accepted.", "",
             "| ack | accepted | kills Kafka / RabbitMQ consumer | counted Redis (Kafka) | counted Valkey (RabbitMQ) "
             "| lost | counted twice |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        counts = [row["redis"] or 0, row["valkey"] or 0]
        lost = sum(max(0, row["accepted"] - count) for count in counts)
        twice = sum(max(0, count - row["accepted"]) for count in counts)
        kills = f"{row['killed']['consumer-kafka']} / {row['killed']['consumer-rabbitmq']}"
        lines.append(f"| {row['ack']} | {row['accepted']:,} | {kills} | {counts[0]:,} | {counts[1]:,} | {lost:,} "
                     f"| {twice:,} |")
    lines += ["", "Only a kill that lands between the ack and the end of that batch's count loses anything: a "
              "window of one count (the count times are in the tables above) in each cycle of gathering a batch "
              "and counting it. So what the before-store row loses is a sample of where this run's kills landed, "
              "not a rate to extrapolate; a zero means no kill landed in the window, not that the design is safe.",
              "", "A consumer killed after its ack and before its count loses that batch: the broker will not "
              "deliver it again. Killed after its count and before its ack, it gets the batch again, and the "
              "store's dedupe (offsets for Kafka, message ids for RabbitMQ, tweet ids for both) counts it once: "
              "without that dedupe, acking after the store would count those tweets twice instead. How much the "
              "before-store design loses depends on where each kill lands; it is never recovered. Only the batch in "
              "hand is acked early: messages prefetched but not yet taken are redelivered, where auto-ack would "
              "lose them too. This runs under its own key prefix (`clima-experiment-ack`), so the stack's counts "
              "are not left short.", ""]
    return lines


def charts(result):
    CHARTS.mkdir(parents=True, exist_ok=True)
    raw = [row for row in result["brokers_raw"] if "consume" not in row["operation"]]
    groups = [f"{batch} per message" for batch in BATCHES]
    chart_bars(CHARTS / "brokers-raw.png", "Raw publish, tweets/s (log scale)", groups,
               {broker: [next((r["tweets_per_s"] for r in raw if r["broker"] == broker and r["batch"] == b), 0)
                         for b in BATCHES] for broker in ("Kafka (tansu)", "RabbitMQ (quorum)")}, "tweets/s", log=True)
    rows = result["clima_batches"]
    chart_bars(CHARTS / "publish-latency.png", "Writer publish time p50 / p99 (ms, bucket bounds)",
               [f"{row['batch']} per call" for row in rows],
               {f"{broker} {q}": [row["histograms"][f"{broker} publish"][q] for row in rows]
                for broker in ("kafka", "rabbitmq") for q in ("p50", "p99")}, "ms", log=True)
    aof = {(row["store"], row["appendonly"]): row["per_second"] for row in result["stores"]["aof"]}
    chart_bars(CHARTS / "stores.png", "Pipelined HINCRBY, ops/s", ["no persistence", "AOF everysec"],
               {store: [aof[(store, "no")], aof[(store, "yes")]] for store in ("redis", "valkey")}, "ops/s")
    hop = result["grpc_vs_json"]
    batches = sorted({row["records"] for row in hop})
    encodings = list(dict.fromkeys(row["encoding"] for row in hop))
    chart_bars(CHARTS / "grpc-vs-json.png", "p99 per call (ms)", [f"{b} per call" for b in batches],
               {enc: [next((r["p99_ms"] for r in hop if r["encoding"] == enc and r["records"] == b), 0)
                      for b in batches] for enc in encodings}, "ms", log=True)


def main():
    started = time.monotonic()
    result = {"machine": {**machine(), "scale": SCALE}, "aged": age(),
              "kafka_at_start": {"records": kafka_records() or 0, "db_mib": tansu_db_mib()}}
    steps = [("brokers_raw", brokers_raw), ("grpc_vs_json", grpc_vs_json), ("clima_batches", clima_batches),
             ("burst", burst), ("ordering", ordering), ("recount", recount), ("consumer_design", consumer_design),
             ("ack_timing", ack_timing), ("replicas", replicas), ("stores", stores), ("faults", faults)]
    for key, step in steps:
        say(f"experiment: {key} ({time.monotonic() - started:,.0f} s so far)")
        result[key] = step()
    result["seconds"] = time.monotonic() - started
    CHARTS.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    charts(result)
    (CHARTS / "experiments.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (OUT / "FINDINGS.md").write_text(text + f"\nThe run took {result['seconds'] / 60:.0f} minutes.\n")
    say(f"findings written to {OUT / 'FINDINGS.md'} in {result['seconds'] / 60:.1f} min")
    exact = [row["report"]["counted"]["exact"]
             for row in result["clima_batches"] + result["consumer_design"] + result["replicas"]]
    exact += [row["exact"] for row in result["ack_timing"] if row["ack"].startswith("after")]
    if not all(exact) or result["faults"]["exit_code"] != 0:
        sys.exit("a run's counts were not exact, or a fault lost or duplicated tweets: see FINDINGS.md")


if __name__ == "__main__":
    main()
