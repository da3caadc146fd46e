"""Peak RSS of the API under the worst-shaped bodies it admits (ci/bench-memory).

A fresh API process of its own for each run, with the prod overlay's limits, so
that its peak RSS (/proc VmHWM) is that run's alone and no memory kept from an
earlier shape hides what a shape needs. Each shape is sent by as many clients at
once as the API admits (CLIMA_MAX_CONCURRENT_REQUESTS), each body as large as it
admits (CLIMA_MAX_BODY_BYTES), while every other connection it admits
(CLIMA_MAX_CONNECTIONS) is open and idle: the bound is 3 × the bytes in flight
+ 16 MiB of growth, and the pod's memory limit for the peak. The bodies the API
accepts are counted in the local stack's stores like any others.
"""
import concurrent.futures
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import deploy_rules

ROOT = Path(os.environ.get("CLIMA_ROOT", Path(__file__).resolve().parent.parent))
OUT = Path(os.environ.get("CLIMA_BENCH_OUT", ROOT / ".clima/bench"))
PORT, ADMIN_PORT = 8180, 9180
MIB = 2**20
IDLE_CONNECTIONS = 1024


def prod_api():
    """The prod overlay's api container: its literal env and its memory limit in bytes."""
    docs = deploy_rules.render(ROOT / "k8s/overlays/prod")
    api = next(doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    env = deploy_rules.container_env(docs)(container)
    return env, deploy_rules._quantity(container["resources"]["limits"]["memory"])


def status_of(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid):
    # Linux ≥ 4.0: writing 5 resets the peak RSS (VmHWM) to the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def shapes(body_bytes, max_tweets):
    """Bodies of at most body_bytes, each shaped to cost the decoder the most memory."""
    def array_of(element, count=None):
        count = count or max(1, (body_bytes - 2) // (len(element) + 1))
        return b"[" + b",".join([element] * count) + b"]"

    four_byte = "\U0001F327"  # a cloud with rain: 4 bytes of UTF-8
    valid = json.dumps({"description": four_byte * 280, "country": "GT", "weather": "Lluvioso"},
                       ensure_ascii=False).encode()
    escaped = json.dumps({"description": "\u00e9" * 280, "country": "GT", "weather": "Lluvioso"}).encode()
    return {
        "empty objects": array_of(b"{}"),
        "most valid tweets (280 four-byte chars)": array_of(valid, min(max_tweets, (body_bytes - 2) // (len(valid) + 1))),
        "most valid tweets, escaped (\\u00e9)": array_of(escaped, min(max_tweets, (body_bytes - 2) // (len(escaped) + 1))),
        "one long Unicode description": json.dumps(
            {"description": four_byte * ((body_bytes - 64) // 4), "country": "GT", "weather": "Lluvioso"},
            ensure_ascii=False).encode(),
        "one long escaped description": json.dumps(
            {"description": "\u00e9" * ((body_bytes - 64) // 6), "country": "GT", "weather": "Lluvioso"}).encode(),
        "deep nesting": b"[" * (body_bytes // 2) + b"]" * (body_bytes // 2),
        "huge number": b'{"description": 1' + b"0" * (body_bytes - 64) + b', "country": "GT"}',
        "repeated keys": b"{" + b",".join([b'"country":"GT"'] * ((body_bytes - 2) // 15)) + b"}",
        "whitespace": b" " * (body_bytes - 2) + b"{}",
    }


def post(body):
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    try:
        connection.request("POST", "/input", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as error:
        return f"error: {error.__class__.__name__}"
    finally:
        connection.close()


def wait_ready():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("the bench's API did not become ready in 60 s")


def open_idle_connections(count):
    """`count` keep-alive connections, each idle after one valid request: (sockets, statuses)."""
    body = json.dumps({"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}).encode()
    request = (f"POST /input HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sockets, statuses = [], {}
    # One request at a time: the API answers 503 to more than it admits at once.
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", PORT))
        client.sendall(request)
        status = client.recv(65536).split(b" ", 2)[1].decode()
        statuses[status] = statuses.get(status, 0) + 1
        sockets.append(client)
    return sockets, statuses


def start_api(limits, log):
    api = subprocess.Popen(
        [os.environ["CLIMA_BIN"], "api", "--listen", f"127.0.0.1:{PORT}", f"--admin-listen=127.0.0.1:{ADMIN_PORT}",
         "--writer", f"http://127.0.0.1:{os.environ['KAFKA_WRITER_PORT']}",
         "--writer", f"http://127.0.0.1:{os.environ['RABBITMQ_WRITER_PORT']}"],
        env={**os.environ, **{name: str(value) for name, value in limits.items()}, "CLIMA_LOG_FORMAT": "json"},
        stdout=log, stderr=log)
    wait_ready()
    return api


def stop_api(api):
    api.terminate()
    api.wait(timeout=30)


def main():
    env, pod_limit = prod_api()
    defaults = deploy_rules.flag_defaults(os.environ["CLIMA_BIN"])
    limits = {name: env.get(name, defaults.get(name)) for name in
              ("CLIMA_MAX_BODY_BYTES", "CLIMA_MAX_CONCURRENT_REQUESTS", "CLIMA_MAX_CONNECTIONS", "CLIMA_MAX_TWEETS",
               "CLIMA_HEADER_READ_TIMEOUT", "CLIMA_REQUEST_TIMEOUT")}
    body_bytes, concurrency = int(limits["CLIMA_MAX_BODY_BYTES"]), int(limits["CLIMA_MAX_CONCURRENT_REQUESTS"])
    max_connections = int(limits["CLIMA_MAX_CONNECTIONS"])
    # This process and the API each hold one descriptor per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < max_connections + 256:
        wanted = max_connections + 256 if hard == resource.RLIM_INFINITY else min(hard, max_connections + 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < max_connections + 256:
            sys.exit(f"open files are limited to {hard}; {max_connections} connections need more (ulimit -n)")
    log = open(Path(os.environ["CLIMA_STATE"]) / "logs/api-memory-bench.log", "ab")
    print(f"a fresh API for each run, with the prod limits {limits}; pod limit {pod_limit / MIB:.0f} MiB", flush=True)

    # Connections alone: what each costs, and what stays after they close.
    api = start_api(limits, log)
    try:
        idle = status_of(api.pid)["VmRSS"]
        sockets, statuses = open_idle_connections(max_connections)
        held = status_of(api.pid)["VmRSS"]
        for client in sockets:
            client.close()
        time.sleep(1)
        connections = {"connections": max_connections, "statuses": statuses, "rss_before": idle, "rss_held": held,
                       "rss_after_close": status_of(api.pid)["VmRSS"]}
    finally:
        stop_api(api)
    print(f"{max_connections} idle keep-alive connections: {statuses}, RSS {idle / MIB:.1f} → {held / MIB:.1f} MiB "
          f"held, {connections['rss_after_close'] / MIB:.1f} after they closed", flush=True)

    # Each shape on a fresh API that already holds every other connection it
    # admits, idle: the most the limits let in at once.
    rows = []
    for name, body in shapes(body_bytes, int(limits["CLIMA_MAX_TWEETS"])).items():
        api = start_api(limits, log)
        try:
            sockets, _ = open_idle_connections(max_connections - concurrency)
            before = status_of(api.pid)["VmRSS"]
            reset_peak(api.pid)
            statuses = {}
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                for status in pool.map(post, [body] * concurrency):
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
            now = status_of(api.pid)
            for client in sockets:
                client.close()
        finally:
            stop_api(api)
        in_flight = concurrency * len(body)
        bound = 3 * in_flight + 16 * MIB
        growth = now["VmHWM"] - before
        rows.append({"shape": name, "body_bytes": len(body), "requests": concurrency, "statuses": statuses,
                     "rss_before": before, "peak": now["VmHWM"], "growth": growth, "bound_growth": bound,
                     "body_factor": growth / in_flight, "within_bound": growth <= bound,
                     "under_pod_limit": now["VmHWM"] <= pod_limit})
        print(f"{name:42} {statuses} with {max_connections - concurrency} idle connections {before / MIB:.1f} MiB, "
              f"peak {now['VmHWM'] / MIB:6.1f} MiB (+{growth / MIB:.1f} = {growth / in_flight:.2f} × in flight; "
              f"bound +{bound / MIB:.0f})", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"limits": limits, "pod_limit": pod_limit, "shapes": rows, "connections": connections}
    (OUT / "memory.json").write_text(json.dumps(report, indent=2))
    lines = ["| shape | body | statuses | RSS with the idle connections | peak | growth (× bytes in flight) "
             "| bound (3 × in flight + 16 MiB) | under pod limit |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['shape']} | {row['body_bytes'] / MIB:.1f} MiB | {row['statuses']} | "
                     f"{row['rss_before'] / MIB:.1f} MiB | {row['peak'] / MIB:.1f} MiB | {row['growth'] / MIB:.1f} MiB "
                     f"({row['body_factor']:.2f} ×) | {row['bound_growth'] / MIB:.0f} MiB "
                     f"{'met' if row['within_bound'] else 'MISSED'} | "
                     f"{'yes' if row['under_pod_limit'] else 'NO'} ({pod_limit / MIB:.0f} MiB) |")
    lines += ["", f"{connections['connections']} keep-alive connections, each idle after one valid request "
              f"({connections['statuses']}): API RSS {connections['rss_before'] / MIB:.1f} MiB before, "
              f"{connections['rss_held'] / MIB:.1f} MiB while held, {connections['rss_after_close'] / MIB:.1f} MiB "
              f"after they closed."]
    (OUT / "memory.md").write_text("\n".join(lines) + "\n")
    print(f"written to {OUT / 'memory.md'} and memory.json")
    if not all(row["within_bound"] and row["under_pod_limit"] for row in rows):
        sys.exit("a shape went past its bound or the pod limit")


if __name__ == "__main__":
    main()
