"""What ci/bench.py and ci/soak.py share about the running local stack (ci/up):
where it lives, its services' PIDs, /proc samples of them, the machine, and
`clima load --json` runs."""

import contextlib
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
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
