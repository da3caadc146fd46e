"""Peak RSS of the API under the worst-shaped bodies it admits (ci/bench-memory).

One API process of its own, with the prod overlay's limits, is started for the
run, so its peak RSS (/proc VmHWM, reset between shapes through clear_refs) is
this run's alone. Each shape is sent by as many clients at once as the API
admits (CLIMA_MAX_CONCURRENT_REQUESTS), each body as large as it admits
(CLIMA_MAX_BODY_BYTES): the bound is 3 × those bytes in flight + 16 MiB.
"""
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

import deploy_rules

ROOT = Path(os.environ.get("CLIMA_ROOT", Path(__file__).resolve().parent.parent))
OUT = Path(os.environ.get("CLIMA_BENCH_OUT", ROOT / ".clima/bench"))
PORT, ADMIN_PORT = 8180, 9180
MIB = 2**20
IDLE_CONNECTIONS = 1024


def prod_api():
    """The prod overlay's api container: its literal env and its memory limit in bytes."""
    render = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s/overlays/prod")],
                            capture_output=True, text=True, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(render) if doc]
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


def idle_connections(pid, count):
    """RSS with `count` keep-alive connections open, each after one valid request."""
    body = json.dumps({"description": "Está lloviendo", "country": "GT", "weather": "Lluvioso"}).encode()
    request = (f"POST /input HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    before = status_of(pid)["VmRSS"]
    reset_peak(pid)
    sockets, statuses = [], {}
    # One request at a time: the API answers 503 to more than it admits at once.
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", PORT))
        client.sendall(request)
        status = client.recv(65536).split(b" ", 2)[1].decode()
        statuses[status] = statuses.get(status, 0) + 1
        sockets.append(client)
    held = status_of(pid)
    for client in sockets:
        client.close()
    time.sleep(1)
    after = status_of(pid)["VmRSS"]
    return {"connections": count, "statuses": statuses, "rss_before": before, "rss_held": held["VmRSS"],
            "peak": held["VmHWM"], "rss_after_close": after}


def main():
    env, pod_limit = prod_api()
    defaults = deploy_rules.flag_defaults(os.environ["CLIMA_BIN"])
    limits = {name: env.get(name, defaults.get(name)) for name in
              ("CLIMA_MAX_BODY_BYTES", "CLIMA_MAX_CONCURRENT_REQUESTS", "CLIMA_MAX_CONNECTIONS", "CLIMA_MAX_TWEETS",
               "CLIMA_HEADER_READ_TIMEOUT", "CLIMA_REQUEST_TIMEOUT")}
    body_bytes, concurrency = int(limits["CLIMA_MAX_BODY_BYTES"]), int(limits["CLIMA_MAX_CONCURRENT_REQUESTS"])
    state = Path(os.environ["CLIMA_STATE"])
    log = open(state / "logs/api-memory-bench.log", "ab")
    api = subprocess.Popen(
        [os.environ["CLIMA_BIN"], "api", "--listen", f"127.0.0.1:{PORT}", f"--admin-listen=127.0.0.1:{ADMIN_PORT}",
         "--writer", f"http://127.0.0.1:{os.environ['KAFKA_WRITER_PORT']}",
         "--writer", f"http://127.0.0.1:{os.environ['RABBITMQ_WRITER_PORT']}"],
        env={**os.environ, **{name: str(value) for name, value in limits.items()}, "CLIMA_LOG_FORMAT": "json"},
        stdout=log, stderr=log)
    rows = []
    try:
        wait_ready()
        idle = status_of(api.pid)["VmRSS"]
        print(f"API (pid {api.pid}) with the prod limits {limits}; idle RSS {idle / MIB:.1f} MiB; "
              f"pod limit {pod_limit / MIB:.0f} MiB", flush=True)
        # Connections first, on the API as it starts: what they hold is not
        # hidden in memory the allocator kept from the bodies.
        connections = idle_connections(api.pid, IDLE_CONNECTIONS)
        print(f"{IDLE_CONNECTIONS} idle keep-alive connections: {connections['statuses']}, RSS "
              f"{connections['rss_before'] / MIB:.1f} → {connections['rss_held'] / MIB:.1f} MiB held, "
              f"{connections['rss_after_close'] / MIB:.1f} after they closed", flush=True)
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for name, body in shapes(body_bytes, int(limits["CLIMA_MAX_TWEETS"])).items():
                before = status_of(api.pid)["VmRSS"]
                reset_peak(api.pid)
                statuses = {}
                for status in pool.map(post, [body] * concurrency):
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                now = status_of(api.pid)
                in_flight = concurrency * len(body)
                bound = 3 * in_flight + 16 * MIB
                growth = now["VmHWM"] - before
                rows.append({"shape": name, "body_bytes": len(body), "requests": concurrency, "statuses": statuses,
                             "rss_before": before, "peak": now["VmHWM"], "growth": growth, "bound_growth": bound,
                             "within_bound": growth <= bound, "under_pod_limit": now["VmHWM"] <= pod_limit,
                             "rss_after": now["VmRSS"]})
                print(f"{name:42} {statuses} peak {now['VmHWM'] / MIB:6.1f} MiB (+{growth / MIB:.1f}; bound "
                      f"+{bound / MIB:.0f}), after {now['VmRSS'] / MIB:.1f} MiB", flush=True)
    finally:
        api.terminate()
        api.wait(timeout=30)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"limits": limits, "pod_limit": pod_limit, "idle_rss": idle, "shapes": rows, "connections": connections}
    (OUT / "memory.json").write_text(json.dumps(report, indent=2))
    lines = ["| shape | body | statuses | RSS before | peak | growth | bound (3 × in flight + 16 MiB) | under pod limit |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['shape']} | {row['body_bytes'] / MIB:.1f} MiB | {row['statuses']} | "
                     f"{row['rss_before'] / MIB:.1f} MiB | {row['peak'] / MIB:.1f} MiB | {row['growth'] / MIB:.1f} MiB | "
                     f"{row['bound_growth'] / MIB:.0f} MiB {'met' if row['within_bound'] else 'MISSED'} | "
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
