#!/usr/bin/env python3
"""A local rehearsal of k8s/: runs every clima container of a rendered overlay
as the pod would (the image's entrypoint with the Deployment's args, the env
from its ConfigMaps, Secrets and $(VAR) references, its readiness probe), with
only the Services' host names and ports pointed at this machine, sends tweets
through the API and checks that both stores counted them exactly.

It proves that the manifests' settings work together, not only that each flag
parses: the closest this workplace gets to `kubectl apply` (no cluster runs here).

    ci/rehearse.py CLIMA_BINARY [OVERLAY]      (ci/rehearse starts what it needs)

What differs from a cluster, and why:
- Redis and Valkey are started here with the StatefulSets' own args (password,
  maxmemory, eviction policy), on spare ports, with data in a scratch folder.
- Kafka is the local tansu, which has no SCRAM user: the SASL settings are
  dropped from CLIMA_KAFKA_OPTIONS (every other librdkafka option is kept), and
  the writer's producer is not idempotent (tansu 0.6 breaks on that after a
  restart; see ci/lib.sh).
- The topic, consumer group, exchange and queue get a per-run suffix, so the
  rehearsal never shares them with the local stack or an earlier rehearsal.
- RabbitMQ is the local broker, given the overlay's user and password.
- The Strimzi User Operator's Secret (the Kafka password) gets a random value.
- OTLP export points at a port where nothing listens (no Jaeger here).
"""

import base64
import json
import urllib.parse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import deploy_rules

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CLIMA_STATE", ROOT / ".clima"))
# Where the Services that are not clima's run on this machine.
LOCAL = {"clima-kafka-kafka-bootstrap:9092": f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
         "rabbitmq:5672": f"127.0.0.1:{os.environ.get('RABBITMQ_PORT', '5672')}",
         "jaeger:4317": "127.0.0.1:9"}
TWEETS = int(os.environ.get("CLIMA_REHEARSAL_TWEETS", "3000"))
# Broker names the manifests set or leave at clima's defaults; each gets a per-run suffix.
BROKER_NAMES = {"CLIMA_KAFKA_TOPIC": "tweets-clima", "CLIMA_KAFKA_GROUP": "clima-consumer",
                "CLIMA_RABBITMQ_EXCHANGE": "tweets-clima", "CLIMA_RABBITMQ_QUEUE": "tweets-clima"}


def say(message):
    print(f"\033[1;34m==>\033[0m rehearsal: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def render(overlay):
    return deploy_rules.render(ROOT / "k8s/overlays" / overlay)


def expand(value, env):
    """Kubernetes' $(VAR) expansion: only variables defined before."""
    return re.sub(r"\$\(([A-Za-z0-9_]+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


class Pods:
    def __init__(self, docs):
        self.docs = docs
        self.config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        self.secrets = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
                        for d in docs if d["kind"] == "Secret"}
        # Made by Strimzi's User Operator in a cluster.
        self.secrets.setdefault("clima", {"password": secrets.token_hex(16)})
        self.services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        self.addresses = dict(LOCAL)
        self.processes = []

    def lookup(self, kind, ref):
        source = (self.secrets if kind == "Secret" else self.config_maps).get(ref["name"])
        if source is None or ref["key"] not in source:
            if ref.get("optional"):
                return None
            raise SystemExit(f"rehearsal: the overlay has no {kind} {ref['name']} with key {ref['key']} "
                             "(prod's Secret is created by hand: rehearse dev)")
        return source[ref["key"]]

    def env(self, container):
        env = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_maps.get(source["configMapRef"]["name"], {}))
            elif "secretRef" in source:
                env.update(self.secrets.get(source["secretRef"]["name"], {}))
        for item in container.get("env", []):
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                value = self.lookup("Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self.lookup("ConfigMap", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = {"metadata.name": "rehearsal-0", "metadata.namespace": "clima"}.get(
                    source["fieldRef"]["fieldPath"], "")
            else:
                value = expand(item.get("value", ""), env)
            if value is not None:
                env[item["name"]] = value
        return env

    def route(self, env):
        """Points every host:port of a Service at its address on this machine."""
        def local(value):
            for remote, address in self.addresses.items():
                value = re.sub(rf"(?<![\w.-]){re.escape(remote)}(?![\w.-]|:\d)", address, value)
            return value
        return {name: local(value) for name, value in env.items()}

    def publish(self, pod_labels, container, local_ports):
        """Services selecting this pod: their host:port → the local port of the target container port."""
        for name, service in self.services.items():
            selector = service["spec"].get("selector", {})
            if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
                continue
            named = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                target = named.get(target, target)
                if target in local_ports:
                    self.addresses[f"{name}:{port['port']}"] = f"127.0.0.1:{local_ports[target]}"


def start_store(pods, name, binary, workdir):
    """Redis or Valkey with its StatefulSet's args, on a spare port."""
    statefulset = next(d for d in pods.docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name)
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = pods.env(container)
    # The pod's other volumes (e.g. the config its init container writes) become
    # folders here, and their mount paths in commands and args point at them.
    inits = pod.get("initContainers", [])
    mounts = [m for c in [container, *inits] for m in c.get("volumeMounts", []) if m["name"] != "data"]
    volumes = {m["mountPath"]: workdir / f"{name}-{m['name']}" for m in mounts}

    def local(text):
        for mount_path, folder in volumes.items():
            text = text.replace(mount_path, str(folder))
        return text
    for folder in volumes.values():
        folder.mkdir(exist_ok=True)
    for init in inits:
        command = [local(part) for part in init.get("command", []) + init.get("args", [])]
        subprocess.run(command, env={**os.environ, **pods.env(init)}, check=True)
    args = [local(expand(arg, env)) for arg in container.get("args", [])]
    data = workdir / name
    data.mkdir()
    if "--dir" in args:
        args[args.index("--dir") + 1] = str(data)
    else:
        args += ["--dir", str(data)]
    port = free_port()
    process = subprocess.Popen([binary, *args, "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    pods.processes.append(process)
    pods.addresses[f"{name}:6379"] = f"127.0.0.1:{port}"
    return env, args


def wait_ready(probe, port, name, started, seconds=90):
    """Until the container's readiness probe passes: an HTTP 2xx, or (tcpSocket
    and gRPC probes) an open port. Any container that exits meanwhile fails it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for other, (process, _, _) in started.items():
            if process.poll() is not None:
                raise SystemExit(f"rehearsal: {other} exited ({process.returncode}); its log is in "
                                 f"{STATE / 'logs/rehearsal' / (other + '.log')}")
        try:
            if "httpGet" in probe:
                url = f"http://127.0.0.1:{port}{probe['httpGet'].get('path', '/')}"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if 200 <= answer.status < 400:
                        return
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"rehearsal: {name} did not pass its readiness probe on port {port} within {seconds} s")


def main():
    # A CI timeout's SIGTERM still stops every process started here (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    clima = str(Path(sys.argv[1]).resolve())
    overlay = sys.argv[2] if len(sys.argv) > 2 else "dev"
    docs = render(overlay)
    pods = Pods(docs)
    workdir = Path(tempfile.mkdtemp(prefix="clima-rehearsal-"))
    logs = STATE / "logs/rehearsal"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        redis_env, redis_args = start_store(pods, "redis", shutil.which("redis-server"), workdir)
        valkey_env, _ = start_store(pods, "valkey", os.environ["CLIMA_REHEARSAL_VALKEY_SERVER"], workdir)
        shown = " ".join("***" if previous == "--requirepass" else arg
                         for previous, arg in zip(["", *redis_args], redis_args))
        say(f"{overlay}: redis and valkey started with the manifests' args ({shown})")
        # The overlay's RabbitMQ user, on the local broker.
        rabbit = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "rabbitmq")
        rabbit_env = pods.env(rabbit["spec"]["template"]["spec"]["containers"][0])
        user, password = rabbit_env["RABBITMQ_DEFAULT_USER"], rabbit_env["RABBITMQ_DEFAULT_PASS"]
        if subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], capture_output=True).returncode != 0:
            subprocess.run(["rabbitmqctl", "-q", "change_password", user, password], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", "/", user, ".*", ".*", ".*"], check=True,
                       capture_output=True)

        deployments = [d for d in docs if d["kind"] == "Deployment" and "/clima/clima-" in
                       d["spec"]["template"]["spec"]["containers"][0]["image"]]
        # Ports first, so that every Service resolves before any env is routed.
        plans = []
        for deployment in deployments:
            template = deployment["spec"]["template"]
            container = template["spec"]["containers"][0]
            local_ports = {port["containerPort"]: free_port() for port in container.get("ports", [])}
            for key, value in pods.env(container).items():
                if key.endswith("_LISTEN"):
                    local_ports.setdefault(int(value.rsplit(":", 1)[1]), free_port())
            pods.publish(template["metadata"]["labels"], container, local_ports)
            plans.append((deployment["metadata"]["name"], container, local_ports))
        image_config = deploy_rules.image_configs(ROOT)["ci/images"]
        suffix = f"-rehearsal-{secrets.token_hex(4)}"
        started = {}
        for name, container, local_ports in plans:
            env = pods.env(container)
            for key, value in env.items():
                if key.endswith("_LISTEN"):
                    env[key] = f"127.0.0.1:{local_ports[int(value.rsplit(':', 1)[1])]}"
            env = pods.route(env)
            if "CLIMA_KAFKA_OPTIONS" in env:
                env["CLIMA_KAFKA_OPTIONS"] = ",".join(
                    option for option in env["CLIMA_KAFKA_OPTIONS"].split(",")
                    if not option.startswith(("security.protocol=", "sasl.")))
                if not env["CLIMA_KAFKA_OPTIONS"]:
                    del env["CLIMA_KAFKA_OPTIONS"]
            env["CLIMA_KAFKA_IDEMPOTENCE"] = "false"
            for key, default in BROKER_NAMES.items():
                env[key] = env.get(key, default) + suffix
            # What the pod runs with the ci/images image; the binary itself is this checkout's.
            argv = [clima, *deploy_rules.effective_argv(container, image_config)[1:]]
            log = open(logs / f"{name}.log", "w")
            process = subprocess.Popen(argv, env={"PATH": os.environ["PATH"], **env}, stdout=log,
                                       stderr=subprocess.STDOUT)
            pods.processes.append(process)
            started[name] = (process, container, local_ports)
            say(f"{name}: {' '.join(argv[1:])} with {len(env)} env vars from the manifest")
        for name, (_process, container, local_ports) in started.items():
            probe = container.get("readinessProbe", {})
            kind = next((kind for kind in ("httpGet", "tcpSocket", "grpc") if kind in probe), None)
            if kind is None:
                raise SystemExit(f"rehearsal: {name} has no httpGet, tcpSocket or grpc readiness probe")
            named = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
            wait_ready(probe, local_ports[named.get(probe[kind]["port"], probe[kind]["port"])], name, started)
        say(f"{len(started)} containers pass their readiness probes")

        api = pods.addresses["api:80"]
        load = subprocess.run(
            [clima, "load", "--url", f"http://{api}/input", "--count", str(TWEETS), "--concurrency", "16",
             "--verify", "--verify-timeout", "120s",
             "--redis-url", f"redis://:{urllib.parse.quote(redis_env['REDIS_PASSWORD'], safe='')}@"
                            f"{pods.addresses['redis:6379']}",
             "--valkey-url", f"redis://:{urllib.parse.quote(valkey_env['VALKEY_PASSWORD'], safe='')}@"
                             f"{pods.addresses['valkey:6379']}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if load.returncode != 0:
            print(load.stdout, file=sys.stderr)
            raise SystemExit(f"rehearsal of {overlay}: the tweets were not counted exactly (logs: {logs})")
        print(load.stdout.strip().splitlines()[-1])
        with urllib.request.urlopen(f"http://{pods.addresses['dashboard:80']}/api/stats", timeout=5) as answer:
            stats = json.loads(answer.read())
        totals = (int(stats["snapshot"]["redis"]["total"]), int(stats["snapshot"]["valkey"]["total"]))
        if totals != (TWEETS, TWEETS):
            raise SystemExit(f"rehearsal of {overlay}: the dashboard shows {totals}, not {TWEETS} in each store")
        say(f"{overlay}: {TWEETS} tweets through the API counted exactly in both stores; the dashboard shows them")
    finally:
        for process in reversed(pods.processes):
            process.send_signal(signal.SIGTERM)
        for process in pods.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
