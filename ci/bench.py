#!/usr/bin/env python3
"""The benchmark's measurements, run by ci/bench once the stack is up.

One run, one machine: raw ceilings first, then clima end to end, so the ratio
between them is not skewed by a machine that got busier in between. Every
clima figure comes from `clima load --json` (HDR histograms, counts verified
in both stores); RSS and CPU come from /proc of each service's PID.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from stack import (ROOT, SERVICES, histograms, kafka_records, machine, mean, mean_ms, sample, say, service_pids,
                   service_settings, tansu_db_mib)
from stack import load as load_report

OUT = Path(os.environ["CLIMA_BENCH_OUT"])
SCALE = float(os.environ.get("CLIMA_BENCH_SCALE", "1"))
BENCH = [str(ROOT / "target/release/clima"), "bench"]
HELLO_PORT, OTLP_PORT = 8099, 4317
# Tweets ci/bench adds before its runs on an aged database (issue 15: a user's
# Kafka holds millions; the fresh-database figures alone hid a 100x slowdown).
AGED_TWEETS = 1_000_000


def n(count):
    return max(100, int(count * SCALE))


# Connections of the single-object runs, and of the hello world they are set against.
SINGLE_CONCURRENCY = 1024


def per_million(cpu_s, count):
    """CPU seconds per million requests or tweets."""
    return round(cpu_s / max(count, 1) * 1e6, 1)


def cpu_per_million(run):
    """Each service's CPU seconds per million accepted tweets of a sampled run, and their sum."""
    services = {name: per_million(figures["cpu_s"], run["accepted"]) for name, figures in run["services"].items()}
    return {**services, "all": round(sum(services.values()), 1)}


class Sampler:
    """Peak RSS and CPU use (cores) of every service while a block runs."""

    def __init__(self):
        self.pids = service_pids()
        self.peak = {name: 0.0 for name in self.pids}
        self.stop = threading.Event()

    def __enter__(self):
        self.started = time.monotonic()
        self.cpu_before = {name: sample(pid)[1] for name, pid in self.pids.items()}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self):
        while not self.stop.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], sample(pid)[0])
            self.stop.wait(0.2)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        wall = time.monotonic() - self.started
        cpu = {name: sample(pid)[1] - self.cpu_before[name] for name, pid in self.pids.items()}
        self.result = {
            name: {"rss_peak_mib": round(self.peak[name], 1), "cpu_cores": round(cpu[name] / wall, 3),
                   "cpu_s": round(cpu[name], 3)}
            for name in self.pids
        }


def json_lines(command):
    command = [str(part) for part in command]
    say(" ".join(command))
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


class RowFailed(Exception):
    """A `clima load` run that wrote no report: nothing of it can be shown."""


def load(*args):
    """Runs `clima load` with --json and returns its report. A run that failed
    but reported (behind its schedule, counts not exact, requests refused) is a
    result: its report says what failed (`failed`) and the bench goes on."""
    report, code = load_report(*args, check=False)
    if report is None:
        raise RowFailed(f"clima load {' '.join(map(str, args))} exited {code} without a report")
    if code != 0:
        behind = (report.get("schedule") or {}).get("behind")
        report["failed"] = "behind its schedule" if behind else f"clima load exited {code}"
        # Every failed run fails the bench at its end, shown in a row or not (ageing, baselines).
        FAILED_RUNS.append(f"{' '.join(map(str, args))}: {report['failed']}")
    return report


FAILED_RUNS = []


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def restart_stack(extra_env):
    say("restarting the clima services" + (f" with {extra_env}" if extra_env else ""))
    subprocess.run(["bash", str(ROOT / "ci/up")], check=True, env={**os.environ, **extra_env}, stdout=sys.stderr)


def ceilings():
    rates = []
    # More than ~35,000 messages and tansu 0.6 stopped delivering to the consumer (seen here).
    kafka = ["--kafka-brokers", f"127.0.0.1:{os.environ['KAFKA_PORT']}"]
    rabbitmq = ["--amqp-url", f"amqp://guest:guest@127.0.0.1:{os.environ['RABBITMQ_PORT']}/%2f"]
    rates += json_lines([*BENCH, "kafka", *kafka, "--messages", n(30_000)])
    rates += json_lines([*BENCH, "rabbitmq", *rabbitmq, "--queue-type", "quorum", "--messages", n(50_000)])
    rates += json_lines([*BENCH, "rabbitmq", *rabbitmq, "--queue-type", "classic", "--messages", n(30_000)])
    rates += json_lines([*BENCH, "store", "--name", "redis", "--url", f"redis://127.0.0.1:{os.environ['REDIS_PORT']}",
                         "--operations", n(1_000_000)])
    rates += json_lines([*BENCH, "store", "--name", "valkey", "--url", f"redis://127.0.0.1:{os.environ['VALKEY_PORT']}",
                         "--operations", n(1_000_000)])
    # Driven as the single-object clima run is, so their CPU per request compares.
    hello = subprocess.Popen([*BENCH, "http-hello", "--listen", f"127.0.0.1:{HELLO_PORT}"])
    try:
        wait_port(HELLO_PORT)
        cpu_before = sample(hello.pid)[1]
        report = load("--url", f"http://127.0.0.1:{HELLO_PORT}/input", "--count", n(200_000),
                      "--concurrency", SINGLE_CONCURRENCY)
        cpu_s = sample(hello.pid)[1] - cpu_before
    finally:
        hello.send_signal(signal.SIGTERM)
        hello.wait()
    rates.append({"ceiling": "http (axum hello world)", "operation": "POST → 202", "count": report["accepted"],
                  "seconds": report["elapsed_s"], "per_second": report["accepted_per_s"],
                  "cpu_s_per_million": per_million(cpu_s, report["accepted"])})
    return rates


def idle():
    say("idle services: 5 s")
    with Sampler() as sampler:
        time.sleep(5)
    return sampler.result


def sampled_load(*args):
    """`load`, with each service's peak RSS and CPU over the run (`services`)."""
    with Sampler() as sampler:
        run = load(*args)
    run["services"] = sampler.result
    return run


def single_objects():
    """The single-object run: the one clima run tracing and CPU are measured on."""
    return sampled_load("--count", n(200_000), "--concurrency", SINGLE_CONCURRENCY, "--verify")


def end_to_end(runs):
    """The clima runs, each stored in `runs` as soon as it is measured."""
    # Latency first, on the fresh Kafka database: tansu's produce latency grows
    # with the database (see ci/bench).
    for rate in (1000, 5000):
        before = histograms()
        runs[f"open_{rate}"] = load("--rate", rate, "--count", n(rate * 10), "--verify")
        runs[f"open_{rate}"]["breakdown"] = breakdown(before, histograms(), runs[f"open_{rate}"])
    runs["single"] = single_objects()
    runs["arrays_of_100"] = sampled_load("--count", n(500_000), "--batch", 100, "--concurrency", 32, "--verify")


def breakdown(before, after, run):
    """Where a request's milliseconds went (means, which add up, unlike
    percentiles): the client's view, the API's handler stage by stage (its
    `clima_api_request_stage_seconds`), and inside the writer calls each
    writer's gRPC handler and broker publish."""
    api = lambda metric, **labels: mean_ms(before, after, "api", metric, **labels)  # noqa: E731
    stages = {stage: api("clima_api_request_stage_seconds", stage=stage)
              for stage in ("body", "decode", "queue", "writers", "wake")}
    handler = api("http_server_request_duration_seconds", route="/input")
    result = {"client_mean_ms": run["request_latency_ms"]["mean"], "handler_mean_ms": handler, "stages_ms": stages,
              "tweets_per_writer_call": mean(before, after, "api", "clima_api_batch_tweets"), "writers": {}}
    for broker, port in (("kafka", os.environ["KAFKA_WRITER_PORT"]), ("rabbitmq", os.environ["RABBITMQ_WRITER_PORT"])):
        service = f"writer-{broker}"
        result["writers"][broker] = {
            "call_ms": api("grpc_client_request_duration_seconds", method="Publish", target=f"http://127.0.0.1:{port}"),
            "handler_ms": mean_ms(before, after, service, "grpc_server_request_duration_seconds", method="Publish"),
            "publish_ms": mean_ms(before, after, service, "clima_publish_duration_seconds"),
        }
    return result


def breakdown_rows(label, result):
    """The breakdown as table rows: each stage's mean, indented under what holds it."""
    stages, writers = result["stages_ms"], result["writers"]
    ms = lambda value: "–" if value is None else f"{value:.2f}"  # noqa: E731
    known = sum(value or 0 for value in stages.values())
    rows = [f"| {label}: request, as the client saw it | {ms(result['client_mean_ms'])} |",
            f"| · outside the API's handler: client, TCP, HTTP parse, answer | "
            f"{ms(result['client_mean_ms'] - (result['handler_mean_ms'] or 0))} |",
            f"| · the API's handler | {ms(result['handler_mean_ms'])} |",
            f"| · · read the body | {ms(stages['body'])} |",
            f"| · · decode and validate | {ms(stages['decode'])} |",
            f"| · · wait for a batch slot | {ms(stages['queue'])} |",
            f"| · · the batch's writer calls, until the last confirmed "
            f"({result['tweets_per_writer_call'] or 0:.1f} tweets a call) | {ms(stages['writers'])} |"]
    for broker, writer in writers.items():
        gap = None if None in (writer["call_ms"], writer["handler_ms"]) else writer["call_ms"] - writer["handler_ms"]
        rows += [f"| · · · {broker}: the gRPC call, as the API saw it | {ms(writer['call_ms'])} |",
                 f"| · · · · encode, transport, decode, scheduling (call − handler) | {ms(gap)} |",
                 f"| · · · · the writer's handler | {ms(writer['handler_ms'])} |",
                 f"| · · · · · of it, the broker's publish and ack | {ms(writer['publish_ms'])} |"]
    rows += [f"| · · wake-up after the answer | {ms(stages['wake'])} |",
             f"| · · rest of the handler | {ms((result['handler_mean_ms'] or 0) - known)} |"]
    return rows


def age_kafka():
    """Fills the local Kafka as a user's stack has it after hours of use: single
    tweets (many small records, the case tansu's sqlite engine is slowest at)
    until its database holds about AGED_TWEETS more tweets."""
    before = {"db_mib": round(tansu_db_mib(), 1), "kafka_records": kafka_records() or 0}
    load("--count", n(AGED_TWEETS), "--concurrency", 256, "--verify", "--verify-timeout", "600s")
    return {"before": before, "after": {"db_mib": round(tansu_db_mib(), 1), "kafka_records": kafka_records() or 0}}


def traced(sampler, ratio=None):
    """Single objects as in end_to_end(), with every service exporting its
    spans (to an OTLP sink that counts them) under `sampler`."""
    sink = subprocess.Popen([*BENCH, "otlp-sink", "--listen", f"127.0.0.1:{OTLP_PORT}"],
                            stdout=subprocess.PIPE, text=True)
    settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{OTLP_PORT}", "OTEL_TRACES_SAMPLER": sampler}
    if ratio is not None:
        settings["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    try:
        wait_port(OTLP_PORT)
        restart_stack(settings)
        run = single_objects()
    finally:
        restart_stack({})
        sink.send_signal(signal.SIGTERM)
        spans = json.loads(sink.communicate()[0].strip().splitlines()[-1])["spans_received"]
    run["spans_received"] = spans
    run["settings"] = settings
    return run


def run_name(key, run):
    """A run's row label, with what failed in it (a run behind its schedule
    shows the rate it reached in its accepted/s column)."""
    failed = run.get("failed")
    return f"{RUN_NAMES[key]} (**{failed}**)" if failed else RUN_NAMES[key]


def run_rows(runs):
    rows = []
    for key, run in runs.items():
        latency, counted = run["request_latency_ms"], run.get("counted") or UNCOUNTED
        rows.append(f"| {run_name(key, run)} | {run['accepted_per_s']:,.0f} | {counted['end_to_end_per_s']:,.0f} | "
                    f"{latency['p50']:.1f} / {latency['p99']:.1f} / {latency['max']:.1f} | "
                    f"{counted['redis_post_to_counted_ms']['p50']:.0f} / {counted['redis_post_to_counted_ms']['p99']:.0f} | "
                    f"{counted['valkey_post_to_counted_ms']['p50']:.0f} / "
                    f"{counted['valkey_post_to_counted_ms']['p99']:.0f} | {'yes' if counted['exact'] else 'NO'} |")
    return rows


# What a run that reported no counts shows in its row.
UNCOUNTED = {"end_to_end_per_s": 0, "exact": False, "redis_post_to_counted_ms": {"p50": 0, "p99": 0},
             "valkey_post_to_counted_ms": {"p50": 0, "p99": 0}}

RUN_HEADER = ["| clima run | accepted/s | counted end to end/s | POST p50 / p99 / max (ms) | "
              "POST→counted p50 / p99 Redis (ms) | POST→counted p50 / p99 Valkey (ms) | exact |",
              "| --- | ---: | ---: | --- | --- | --- | --- |"]
RUN_NAMES = {"single": "single objects, closed loop, 1024 connections",
             "arrays_of_100": "arrays of 100, closed loop, 32 connections",
             "open_1000": "open loop, 1,000 tweets/s", "open_5000": "open loop, 5,000 tweets/s",
             "traced": "single objects, tracing on (100 % sampled)",
             "traced_1pct": "single objects, tracing on (parentbased_traceidratio 1 %)"}


def targets(result):
    """The speed issue's targets, each against this run's figures on both
    database states: (target, fresh, aged, met)."""
    fresh, aged = result["clima"], result["aged"]["clima"]
    slowest = result["slowest_ceiling"]["per_second"]

    def latency(runs, rate):
        latency = runs[f"open_{rate}"]["request_latency_ms"]
        return latency["p50"], latency["p99"]

    def kafka_p50(runs):
        return max(run["counted"]["redis_post_to_counted_ms"]["p50"] for run in (runs["open_1000"], runs["open_5000"]))

    def row(target, figure, met):
        return target, figure(fresh), figure(aged), all(met(runs) for runs in (fresh, aged))

    rows = [
        row("open loop 5,000/s: p50 ≤ 10 ms, p99 ≤ 50 ms",
            lambda runs: "p50 {:.1f}, p99 {:.1f} ms".format(*latency(runs, 5000)),
            lambda runs: latency(runs, 5000)[0] <= 10 and latency(runs, 5000)[1] <= 50),
        row("open loop 1,000/s: p99 ≤ 20 ms", lambda runs: f"p99 {latency(runs, 1000)[1]:.1f} ms",
            lambda runs: latency(runs, 1000)[1] <= 20),
        row("single objects ≥ 20,000 tweets/s end to end, counted exactly",
            lambda runs: f"{runs['single']['counted']['end_to_end_per_s']:,.0f}/s",
            lambda runs: runs["single"]["counted"]["end_to_end_per_s"] >= 20_000 and runs["single"]["counted"]["exact"]),
        row("arrays of 100 ≥ 80 % of the slowest raw ceiling",
            lambda runs: f"{runs['arrays_of_100']['counted']['end_to_end_per_s'] / slowest:.0%}",
            lambda runs: runs["arrays_of_100"]["counted"]["end_to_end_per_s"] >= 0.8 * slowest),
        row("Kafka side POST→counted p50 ≤ 100 ms",
            lambda runs: f"{kafka_p50(runs):.0f} ms (open loops, the higher)",
            lambda runs: kafka_p50(runs) <= 100),
    ]
    rows.append(("tracing at 100 % costs ≤ 25 % (fresh only)", f"{result['tracing_cost']:.0%}", "–",
                 result["tracing_cost"] <= 0.25))
    rows.append(("tracing at 1 % costs ≤ 3 % (fresh only)", f"{result['tracing_cost_1pct']:.0%}", "–",
                 result["tracing_cost_1pct"] <= 0.03))
    rows.append(("tracing at 100 % costs ≤ 25 % of CPU per tweet (fresh only)", f"{result['traced_cpu_cost']:.0%}",
                 "–", result["traced_cpu_cost"] <= 0.25))
    rows.append(("tracing at 1 % costs ≤ 3 % of CPU per tweet (fresh only)", f"{result['traced_1pct_cpu_cost']:.0%}",
                 "–", result["traced_1pct_cpu_cost"] <= 0.03))
    hello = next(rate for rate in result["ceilings"] if rate["ceiling"] == "http (axum hello world)")

    def api_ratio(runs):
        return cpu_per_million(runs["single"])["api"] / hello["cpu_s_per_million"]
    rows.append(row("API CPU per single-tweet request ≤ 2 × the hello world's", lambda runs: f"{api_ratio(runs):.1f} ×",
                    lambda runs: api_ratio(runs) <= 2))
    peak = max(service["rss_peak_mib"] for service in fresh["single"]["services"].values())
    rows.append(("peak RSS ≤ 50 MiB per service under single objects (fresh only)", f"{peak:.0f} MiB (highest)", "–",
                 peak <= 50))
    return rows


def markdown(result):
    m, runs, idle_services = result["machine"], result["clima"], result["idle"]
    lines = [f"Machine: {m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
             f"load generator, services and brokers on the same machine; Kafka = {m['kafka']}; "
             f"commit {m['commit']}, {m['date']}; CLIMA_BENCH_SCALE={m['scale']}.", "",
             "Each service as ci/up started it (flags and CLIMA_/OTEL_/TOKIO_ variables; everything else is "
             "its default):", "", *(f"- {name}: `{line}`" for name, line in result["settings"].items()), "",
             "| raw ceiling | operation | per second |", "| --- | --- | ---: |"]
    lines += [f"| {r['ceiling']} | {r['operation']} | {r['per_second']:,.0f} |" for r in result["ceilings"]]
    slowest = result["slowest_ceiling"]
    aged = result["aged"]
    lines += ["", "On a fresh Kafka database (tansu restarted on an empty one):", ""] + RUN_HEADER + run_rows(runs)
    lines += ["", f"The same runs on an aged Kafka database: {aged['after']['kafka_records']:,} records, "
              f"{aged['after']['db_mib']:,.0f} MiB, after {n(AGED_TWEETS):,} more single tweets "
              f"(from {aged['before']['kafka_records']:,} records, {aged['before']['db_mib']:,.0f} MiB):", ""]
    lines += RUN_HEADER + run_rows(aged["clima"])
    lines += ["", f"Slowest raw ceiling: {slowest['ceiling']} {slowest['operation']}, {slowest['per_second']:,.0f}/s; "
              f"clima end to end (single objects) = **{result['ratio_to_slowest_ceiling']:.0%}** of it. "
              f"Tracing at 100 % sampling costs {result['tracing_cost']:.0%} of the end-to-end rate of untraced "
              f"runs just before and after ({' and '.join(f'{rate:,.0f}/s' for rate in result['untraced_per_s'])}) "
              f"({runs['traced']['spans_received']:,} spans exported); at 1 % (parentbased_traceidratio) "
              f"{result['tracing_cost_1pct']:.0%} ({runs['traced_1pct']['spans_received']:,} spans).", "",
              "| service | RSS idle (MiB) | RSS peak, single objects (MiB) | CPU, single objects (cores) |",
              "| --- | ---: | ---: | ---: |"]
    load_services = runs["single"]["services"]
    for name in SERVICES:
        lines.append(f"| {name} | {idle_services[name]['rss_peak_mib']} | {load_services[name]['rss_peak_mib']} | "
                     f"{load_services[name]['cpu_cores']} |")
    hello = next(rate for rate in result["ceilings"] if rate["ceiling"] == "http (axum hello world)")
    lines += ["", f"CPU seconds per million tweets, single objects over {SINGLE_CONCURRENCY} connections (the axum "
              f"hello world, driven so: {hello['cpu_s_per_million']} per million requests; untraced, all services: "
              f"{result['untraced_cpu_s_per_million']}):", "",
              "| run | " + " | ".join(SERVICES) + " | all |", "| --- |" + " ---: |" * (len(SERVICES) + 1)]
    for label, run in (("fresh", runs["single"]), ("aged", aged["clima"]["single"]),
                       ("tracing 1 %", runs["traced_1pct"]), ("tracing 100 %", runs["traced"])):
        cpu = cpu_per_million(run)
        lines.append(f"| {label} | " + " | ".join(str(cpu[name]) for name in [*SERVICES, "all"]) + " |")
    lines += ["", "The speed issue's targets in this run:", "", "| target | fresh database | aged database | met |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {target} | {fresh} | {aged_figure} | {'yes' if met else '**no**'} |"
              for target, fresh, aged_figure, met in targets(result)]
    lines += ["", "Where a request's milliseconds go (means, which add up; from the services' /metrics over each "
              "open-loop run):", "", "| stage | mean (ms) |", "| --- | ---: |"]
    for state, state_runs in (("fresh", runs), ("aged", aged["clima"])):
        for key in ("open_1000", "open_5000"):
            lines += breakdown_rows(f"{state}, {RUN_NAMES[key]}", state_runs[key]["breakdown"])
    return "\n".join(lines) + "\n"


def measure(result):
    """Every measurement, each stored in `result` as soon as it is made."""
    result["ceilings"] = ceilings()
    result["idle"] = idle()
    result["clima"] = {}
    end_to_end(result["clima"])
    # Tracing's cost against untraced runs on either side of the traced ones
    # (the Kafka database grows with every run, and a growing one is slower).
    untraced = result["untraced"] = [single_objects()]
    result["clima"]["traced_1pct"] = traced("parentbased_traceidratio", 0.01)
    result["clima"]["traced"] = traced("always_on")
    untraced.append(single_objects())
    result["untraced_per_s"] = [(run.get("counted") or UNCOUNTED)["end_to_end_per_s"] for run in untraced]
    # Tracing's cost in CPU per tweet, summed over the services: far less noisy
    # than tweets/s on a shared machine.
    untraced_cpu = sum(cpu_per_million(run)["all"] for run in untraced) / len(untraced)
    result["untraced_cpu_s_per_million"] = round(untraced_cpu, 1)
    for key in ("traced", "traced_1pct"):
        result[f"{key}_cpu_cost"] = cpu_per_million(result["clima"][key])["all"] / untraced_cpu - 1
    say("ageing the Kafka database, then the same runs again")
    result["aged"] = age_kafka()
    result["aged"]["clima"] = {}
    end_to_end(result["aged"]["clima"])
    slowest = min(result["ceilings"], key=lambda rate: rate["per_second"])
    single = result["clima"]["single"]["counted"]["end_to_end_per_s"]
    result["slowest_ceiling"] = slowest
    result["ratio_to_slowest_ceiling"] = single / slowest["per_second"]
    baseline = sum(result["untraced_per_s"]) / len(result["untraced_per_s"])
    result["tracing_cost"] = 1 - result["clima"]["traced"]["counted"]["end_to_end_per_s"] / baseline
    result["tracing_cost_1pct"] = 1 - result["clima"]["traced_1pct"]["counted"]["end_to_end_per_s"] / baseline


def partial_markdown(result):
    """What a bench that stopped early measured: the rows it has, and why it stopped."""
    lines = [f"**The bench stopped early**: {result['error']}", ""]
    if result.get("ceilings"):
        lines += ["| raw ceiling | operation | per second |", "| --- | --- | ---: |"]
        lines += [f"| {r['ceiling']} | {r['operation']} | {r['per_second']:,.0f} |" for r in result["ceilings"]]
    for label, runs in (("fresh", result.get("clima")), ("aged", (result.get("aged") or {}).get("clima"))):
        if runs:
            lines += ["", f"On the {label} Kafka database:", ""] + RUN_HEADER + run_rows(runs)
    return "\n".join(lines) + "\n"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": {**machine(), "scale": SCALE}, "settings": service_settings()}
    try:
        measure(result)
        table = markdown(result)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - whatever stopped it, the rows measured are kept
        result["error"] = f"{type(error).__name__}: {error}"
        table = partial_markdown(result)
    result["failed_runs"] = FAILED_RUNS
    # Written whatever happened: a bench that stops keeps every row it measured.
    (OUT / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "bench.md").write_text(table)
    print(table)
    if "error" in result:
        raise SystemExit(f"the bench stopped early ({result['error']}); what it measured is in {OUT}/bench.md")
    if FAILED_RUNS:
        raise SystemExit("runs that failed (behind their schedule, not exact, requests refused): "
                         + "; ".join(FAILED_RUNS))


if __name__ == "__main__":
    main()
