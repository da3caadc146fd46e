"""What ci/bench.py and ci/soak.py share about the running local stack (ci/up):
where it lives, its services' PIDs, /proc samples of them, the machine, and
`clima load --json` runs."""

import contextlib
import datetime
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(os.environ["CLIMA_ROOT"])
STATE = Path(os.environ["CLIMA_STATE"])
CLIMA = ROOT / "target/release/clima"
API = f"http://127.0.0.1:{os.environ['API_PORT']}/input"
# The clima services of ci/services, the API first: the column order of the soak and bench
# reports since they began (ci/lib.sh starts them in the file's order).
_STARTED = [line for line in (ROOT / "ci/services").read_text().splitlines() if line and not line.startswith("#")]
SERVICES = ["api", *(name for name in _STARTED if name != "api")]
TICKS = os.sysconf("SC_CLK_TCK")
TANSU_DB = Path(os.environ.get("CLIMA_TANSU_DIR", STATE / "data/tansu")) / "tansu.db"


def say(message):
    print(f"\033[1;34m==>\033[0m {message}", file=sys.stderr, flush=True)


def service_pids():
    return {name: int((STATE / "pids" / f"{name}.pid").read_text()) for name in SERVICES}


def sample(pid):
    """(RSS in MiB, CPU seconds so far) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / TICKS


def service_settings():
    """What each running service was started with beyond its defaults: its
    command line (minus the binary) and the CLIMA_*, OTEL_* and TOKIO_*
    variables of its environment, read from /proc."""
    settings = {}
    for name, pid in service_pids().items():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[1:-1]
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        env = sorted(var for var in environ if var.startswith(("CLIMA_", "OTEL_", "TOKIO_")))
        # URLs, keys, headers and client options can carry credentials: their names only.
        secret = re.compile(r"_(URL|KEY|OPTIONS|PASSWORD|HEADERS|TOKEN|SECRET)\b")
        env = [var.split("=", 1)[0] + "=…" if secret.search(var.split("=", 1)[0]) else var for var in env]
        settings[name] = " ".join(argv + env)
    return settings


def tansu_db_mib():
    """Size of the local Kafka's sqlite database with its write-ahead log (0 if in memory)."""
    files = [TANSU_DB, TANSU_DB.with_name("tansu.db-wal")]
    return sum(path.stat().st_size for path in files if path.exists()) / 2**20


def kafka_records():
    """Records (Kafka messages; each carries a batch of tweets) in the local Kafka's database."""
    if not TANSU_DB.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{TANSU_DB}?mode=ro", uri=True, timeout=30)) as connection:
        return connection.execute("select count(*) from record").fetchone()[0]


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                            text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(os.sysconf("SC_PAGE_SIZE") *
            os.sysconf("SC_PHYS_PAGES") / 2**30), "kernel": platform.release(), "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kafka": "tansu 0.6 (memory)" if "memory" in os.environ.get("CLIMA_KAFKA_STORAGE", "") else "tansu 0.6 (sqlite)"}


def load(*args, check=True, env=None):
    """Runs `clima load` with --json; returns (its report, its exit code)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        command = [str(CLIMA), "load", "--json", report.name, *map(str, args)]
        say(" ".join(command))
        code = subprocess.run(command, check=check, stdout=sys.stderr, env=env).returncode
        text = Path(report.name).read_text()
        return (json.loads(text) if text else None), code


def all_time_totals():
    """All-time totals of both stores (`clima stats --json`)."""
    output = subprocess.run([str(CLIMA), "stats", "--json", "--minutes", "0"], check=True, stdout=subprocess.PIPE,
                            text=True).stdout
    counts = json.loads(output)
    return {store: counts[store]["total"] for store in ("redis", "valkey")}


# Each service's admin port (/metrics) as ci/lib.sh starts it: ADMIN_PORT_BASE + this.
ADMIN_OFFSETS = {"api": 0, "writer-kafka": 1, "writer-rabbitmq": 2, "consumer-kafka": 3, "consumer-rabbitmq": 4,
                 "dashboard": 5}
_HISTOGRAM_LINE = re.compile(r"^(\w+)_(sum|count)(\{[^}]*\})? (\S+)$")


def scrape(service):
    """A service's /metrics, as Prometheus text."""
    port = int(os.environ.get("ADMIN_PORT_BASE", "9100")) + ADMIN_OFFSETS[service]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def series_labels(series):
    """The labels of one Prometheus series (`name{a="1",b="2"}`) as a dict."""
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def histograms():
    """Every histogram's sum and count on the API's and the writers' /metrics:
    {(service, metric, labels): [sum, count]}, labels as sorted (key, value) pairs."""
    found = {}
    for service in ("api", "writer-kafka", "writer-rabbitmq"):
        for line in scrape(service).splitlines():
            match = _HISTOGRAM_LINE.match(line)
            if match:
                name, part, labels, value = match.groups()
                key = (service, name, tuple(sorted(series_labels(labels or "").items())))
                found.setdefault(key, [0.0, 0.0])[0 if part == "sum" else 1] = float(value)
    return found


def mean(before, after, service, metric, **labels):
    """The mean of a histogram (every series whose labels include `labels`)
    over what it recorded between two `histograms()`; None if it recorded nothing."""
    total = count = 0.0
    for key, (after_sum, after_count) in after.items():
        if key[:2] == (service, metric) and labels.items() <= dict(key[2]).items():
            before_sum, before_count = before.get(key, (0.0, 0.0))
            total, count = total + after_sum - before_sum, count + after_count - before_count
    return total / count if count else None


def mean_ms(before, after, service, metric, **labels):
    """`mean` of a duration histogram (seconds), in milliseconds."""
    seconds = mean(before, after, service, metric, **labels)
    return None if seconds is None else seconds * 1000
