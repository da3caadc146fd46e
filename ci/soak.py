#!/usr/bin/env python3
"""The soak run's measurements and verdict, run by ci/soak once the stack is up.

One `clima load` drives the stack for the whole soak: an open loop of single
tweets at CLIMA_SOAK_RATE, and alongside it arrays of 100 at
CLIMA_SOAK_ARRAYS_RATE, with --verify (counts exact in both stores at the end)
and --report-every 60s (a line a minute: accepted/s, request latency,
POST→counted and backlog per store). Meanwhile this script samples each
service's RSS and CPU and the Kafka database's size once a minute.

It fails when (the issue's rules, each printed with its figures):
- the last 5 minutes' request p99 is over 2x the first 5 minutes';
- a service's RSS keeps growing (see `leaking`);
- the counts are not exact;
- the load fell behind its schedule (clima load's own rule: over 1 % short).
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

from stack import SERVICES, all_time_totals, kafka_records, load, machine, sample, say, service_pids, tansu_db_mib

OUT = Path(os.environ["CLIMA_SOAK_OUT"])
MINUTES = float(os.environ.get("CLIMA_SOAK_MINUTES", "30"))
RATE = float(os.environ.get("CLIMA_SOAK_RATE", "2000"))
ARRAYS_RATE = float(os.environ.get("CLIMA_SOAK_ARRAYS_RATE", "100"))
INTERVAL_S = float(os.environ.get("CLIMA_SOAK_INTERVAL_S", "60"))
# The first minutes are warm-up (allocators and pools grow to their working
# set); the leak rule looks at what comes after.
WARMUP_INTERVALS = 2
MAX_P99_GROWTH = 2.0


class Sampler:
    """Every service's RSS and CPU, and the Kafka database size, once an interval."""

    def __init__(self):
        self.pids = service_pids()
        self.rows = []
        self.stop = threading.Event()

    def __enter__(self):
        self.take()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def take(self):
        now = time.monotonic()
        self.rows.append({"at": now, "db_mib": tansu_db_mib(),
                          "services": {name: sample(pid) for name, pid in self.pids.items()}})

    def run(self):
        while not self.stop.wait(INTERVAL_S):
            self.take()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def per_interval(self):
        """One row per interval: RSS at its end (MiB), CPU over it (cores), database size."""
        rows = []
        for before, after in zip(self.rows, self.rows[1:]):
            wall = after["at"] - before["at"]
            rows.append({
                "db_mib": round(after["db_mib"], 1),
                "rss_mib": {name: round(after["services"][name][0], 1) for name in SERVICES},
                "cpu_cores": {name: round((after["services"][name][1] - before["services"][name][1]) / wall, 3)
                              for name in SERVICES},
            })
        return rows


def leaking(series):
    """A service leaks if, after the warm-up, its RSS grew from each third of
    the run to the next and ended over 10 % (and 4 MiB) above the first third:
    steady growth, not a working set that settled or a one-off step."""
    rest = series[WARMUP_INTERVALS:]
    if len(rest) < 6:
        return False
    third = len(rest) // 3
    medians = [sorted(part)[len(part) // 2] for part in (rest[:third], rest[third:2 * third], rest[2 * third:])]
    return medians[0] < medians[1] < medians[2] and medians[2] > medians[0] * 1.10 + 4


def full_intervals(timeline):
    """The timeline without its last, shorter interval (the tail after the
    last tick: a few requests, whose rate would spike the chart)."""
    return [row for row in timeline if row["end_s"] - row["start_s"] >= 0.5 * INTERVAL_S]


def chart(timeline, samples, path):
    timeline = full_intervals(timeline)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["end_s"] / 60 for row in timeline]
    figure, (latency, memory) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    latency.plot(minutes, [row["request_latency_ms"]["p99"] for row in timeline], label="POST /input p99")
    latency.plot(minutes, [row["request_latency_ms"]["p50"] for row in timeline], label="POST /input p50")
    for store in ("redis", "valkey"):
        if timeline[0].get(store):
            latency.plot(minutes, [row[store]["post_to_counted_ms"]["p99"] for row in timeline], linestyle="--",
                         label=f"POST→counted p99, {store.capitalize()}")
    latency.set_ylabel("ms")
    latency.set_yscale("log")
    latency.legend(fontsize=8)
    latency.grid(alpha=0.3)
    latency.set_title(f"clima soak: {RATE:,.0f} single tweets/s + {ARRAYS_RATE:,.0f}/s in arrays of 100")
    sample_minutes = [(index + 1) * INTERVAL_S / 60 for index in range(len(samples))]
    for name in SERVICES:
        memory.plot(sample_minutes, [row["rss_mib"][name] for row in samples], label=name)
    memory.set_ylabel("RSS (MiB)")
    memory.set_xlabel("minutes")
    memory.legend(fontsize=8, ncol=3)
    memory.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(result):
    m, load_report, rules = result["machine"], result["load"], result["rules"]
    start = result["start"]
    lines = [
        f"# Soak: {MINUTES:g} minutes at {RATE:,.0f} tweets/s",
        "",
        f"Machine: {m['cpus']} × {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}; load generator, "
        f"services and brokers on one machine; Kafka = {m['kafka']}; commit {m['commit']}, {m['date']}.",
        f"Command: `ci/soak` (CLIMA_SOAK_MINUTES={MINUTES:g}, CLIMA_SOAK_RATE={RATE:g}, "
        f"CLIMA_SOAK_ARRAYS_RATE={ARRAYS_RATE:g}): `clima load --rate {RATE:g} --arrays-rate {ARRAYS_RATE:g} "
        f"--report-every {INTERVAL_S:g}s --verify`, no database reset.",
        f"At the start: Kafka database {start['db_mib']:,.0f} MiB, {start['kafka_records']:,} records; "
        f"all-time tweets counted: Redis {start['totals']['redis']:,}, Valkey {start['totals']['valkey']:,}.",
        "",
        "| rule | figures | passed |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {rule['rule']} | {rule['figures']} | {'yes' if rule['passed'] else '**NO**'} |" for rule in rules]
    lines += ["", "| min | accepted/s | p50 / p99 / max (ms) | POST→counted p50 / p99 Redis (ms) | "
              "POST→counted p50 / p99 Valkey (ms) | backlog Redis / Valkey | Kafka DB (MiB) | RSS (MiB) "
              + " / ".join(SERVICES) + " | CPU (cores) api / writers / consumers |",
              "| ---: | ---: | --- | --- | --- | --- | ---: | --- | --- |"]
    for row, sampled in zip(load_report["timeline"], result["samples"] + [None] * len(load_report["timeline"])):
        latency = row["request_latency_ms"]
        redis, valkey = row.get("redis") or {}, row.get("valkey") or {}

        def counted(store):
            if not store:
                return "–"
            return f"{store['post_to_counted_ms']['p50']:.0f} / {store['post_to_counted_ms']['p99']:.0f}"

        rss = " / ".join(f"{sampled['rss_mib'][name]:.0f}" for name in SERVICES) if sampled else "–"
        cpu = "–"
        if sampled:
            c = sampled["cpu_cores"]
            cpu = (f"{c['api']:.2f} / {c['writer-kafka'] + c['writer-rabbitmq']:.2f} / "
                   f"{c['consumer-kafka'] + c['consumer-rabbitmq']:.2f}")
        minute = f"{row['end_s'] / 60:.1f}"
        if row not in full_intervals(load_report["timeline"]):
            minute += f" (tail, {row['end_s'] - row['start_s']:.1f} s)"
        lines.append(
            f"| {minute} | {row['accepted_per_s']:,.0f} | {latency['p50']:.1f} / {latency['p99']:.1f} / "
            f"{latency['max']:.1f} | {counted(redis)} | {counted(valkey)} | {redis.get('backlog', '–')} / "
            f"{valkey.get('backlog', '–')} | {sampled['db_mib'] if sampled else '–'} | {rss} | {cpu} |")
    lines += ["", "![p99 and RSS per minute](soak.png)", ""]
    return "\n".join(lines)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    start = {"db_mib": round(tansu_db_mib(), 1), "kafka_records": kafka_records() or 0, "totals": all_time_totals()}
    say(f"soak: {MINUTES:g} min at {RATE:g} tweets/s (+{ARRAYS_RATE:g}/s in arrays of 100), starting on "
        f"{start['db_mib']:,.0f} MiB of Kafka database ({start['kafka_records']:,} records), "
        f"{start['totals']['redis']:,} tweets counted so far")
    count = int(RATE * MINUTES * 60)
    with Sampler() as sampler:
        report, code = load("--rate", RATE, "--count", count, "--arrays-rate", ARRAYS_RATE,
                            "--report-every", f"{INTERVAL_S:g}s", "--timeline", OUT / "timeline.jsonl",
                            "--verify", "--verify-timeout", "600s", check=False)
    if report is None:
        raise SystemExit(f"clima load failed before it wrote its report (exit {code})")
    samples = sampler.per_interval()
    rules = []
    edges = report.get("edges")
    if edges:
        first, last = edges["first"]["p99"], edges["last"]["p99"]
        rules.append({"rule": f"last {edges['intervals']} intervals' p99 ≤ {MAX_P99_GROWTH:g}× the first's",
                      "figures": f"first {first:.1f} ms, last {last:.1f} ms", "passed": last <= MAX_P99_GROWTH * first})
    else:
        rules.append({"rule": "p99 first vs last 5 intervals", "figures": "run too short to compare",
                      "passed": False})
    for name in SERVICES:
        series = [row["rss_mib"][name] for row in samples]
        if series:
            rules.append({"rule": f"{name} RSS does not keep growing",
                          "figures": f"{series[0]:.0f} → {max(series):.0f} (peak) → {series[-1]:.0f} MiB",
                          "passed": not leaking(series)})
    counted = report.get("counted") or {}
    rules.append({"rule": "every accepted tweet counted exactly once in both stores",
                  "figures": f"{report['accepted']:,} accepted, {report['failed']} failed",
                  "passed": bool(counted.get("exact")) and report["failed"] == 0})
    schedules = [report["schedule"]] + ([report["arrays"]["schedule"]] if report.get("arrays") else [])
    rules.append({"rule": "the load kept its schedule (≤ 1 % short)",
                  "figures": ", ".join(f"{s['sent_tweets_per_s']:,.0f} of {s['asked_tweets_per_s']:,.0f}/s sent"
                                       for s in schedules),
                  "passed": not any(s["behind"] for s in schedules)})
    result = {"machine": machine(), "minutes": MINUTES, "rate": RATE, "arrays_rate": ARRAYS_RATE, "start": start,
              "end": {"db_mib": round(tansu_db_mib(), 1), "kafka_records": kafka_records() or 0},
              "load": report, "samples": samples, "rules": rules, "load_exit_code": code}
    (OUT / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (OUT / "soak.md").write_text(text)
    if full_intervals(report["timeline"]):
        chart(report["timeline"], samples, OUT / "soak.png")
    print(text)
    failed = [rule["rule"] for rule in rules if not rule["passed"]]
    if failed or code != 0:
        raise SystemExit(f"soak failed: {'; '.join(failed) or f'clima load exited {code}'} (see {OUT / 'soak.md'})")
    say(f"soak passed: {OUT / 'soak.md'}, {OUT / 'soak.png'}")


if __name__ == "__main__":
    sys.exit(main())
