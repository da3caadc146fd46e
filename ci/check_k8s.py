#!/usr/bin/env python3
"""Checks k8s/ (and the image definitions it runs): every overlay renders,
built-in kinds pass kubernetes-validate --strict, Grafana dashboards are valid
JSON naming only provisioned datasources, every flag, env var and port the
manifests give a clima container is one the clima binary accepts, and the
rules of ci/deploy_rules.py hold: what the pinned Strimzi, RabbitMQ image,
Grafana, Gateway API and image builders (ci/images, flake.nix, Bazel) need.

    ci/check_k8s.py CLIMA_BINARY [TREE]

TREE (default: this checkout) is where k8s/, flake.nix, BUILD.bazel and
ci/images are read from: point it at an old commit's tree to see a rule fail.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import deploy_rules

ROOT = Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.32.0"
# Kinds of operators' CRDs (Strimzi, Gateway API, Envoy Gateway, cert-manager);
# kubernetes-validate knows only built-in kinds: ci/deploy_rules.py checks these.
CUSTOM_GROUPS = ("kafka.strimzi.io/", "gateway.networking.k8s.io/", "gateway.envoyproxy.io/", "cert-manager.io/")
# Env vars the manifests set that are not clima flags: standard OpenTelemetry
# settings, and secrets interpolated into other values with $(NAME).
OTEL_ENV = re.compile(r"^OTEL_[A-Z_]+$")

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def render(overlay):
    """An overlay of k8s/overlays, or "prod+ingress-nginx": prod with the Ingress variant instead of Gateway API."""
    with tempfile.TemporaryDirectory() as scratch:
        path = K8S / "overlays" / overlay
        if overlay == "prod+ingress-nginx":
            # In a copy of k8s/, as a sibling of overlays/prod, so that prod's relative
            # paths hold (kustomize refuses absolute ones).
            copy = Path(scratch) / "k8s"
            shutil.copytree(K8S, copy)
            variant = yaml.safe_load((copy / "overlays/prod/kustomization.yaml").read_text())
            variant["components"] = [component.replace("gateway-api", "ingress-nginx")
                                     for component in variant["components"]]
            path = copy / "overlays/prod-ingress-nginx"
            path.mkdir()
            (path / "kustomization.yaml").write_text(yaml.safe_dump(variant))
        out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{overlay}: kubectl kustomize: {out.stderr.strip()}")
        return []
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate_builtin(overlay, docs):
    builtin = [doc for doc in docs if not doc["apiVersion"].startswith(CUSTOM_GROUPS)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump_all(builtin, file)
        file.flush()
        out = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, file.name],
            capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{overlay}: kubernetes-validate --strict:\n{out.stdout}{out.stderr}")
    else:
        print(f"ok   {overlay}: {len(builtin)} built-in objects valid for Kubernetes {KUBERNETES_VERSION} (strict)")


def check_dashboards():
    datasources = yaml.safe_load((K8S / "base/grafana/datasources.yaml").read_text())["datasources"]
    provisioned = {(ds["uid"], ds["type"]) for ds in datasources}
    for path in sorted((K8S / "base/grafana").glob("*.json")):
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            fail(f"{path.name}: not JSON: {error}")
            continue
        used = set()
        for panel in dashboard.get("panels", []):
            for holder in [panel, *panel.get("targets", [])]:
                ds = holder.get("datasource")
                if ds:
                    used.add((ds.get("uid"), ds.get("type")))
        unknown = used - provisioned
        if unknown or not used:
            fail(f"{path.name}: datasources {sorted(unknown)} are not provisioned {sorted(provisioned)}")
        else:
            print(f"ok   {path.name}: {len(dashboard['panels'])} panels, datasources {sorted(u for u, _ in used)}")


def command_path(args):
    """The command a container's args run: its leading words (`writer kafka`)."""
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return " ".join(words)


def accepted(binary, path):
    """The long flags and env vars of `clima PATH`."""
    flags = deploy_rules.cli_spec(binary).get(path, {})
    return set(flags), {flag["env"] for flag in flags.values() if flag["env"]}


def clima_container(docs, name):
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
            return doc["spec"]["template"]["spec"]["containers"][0]
    return {}


def check_rules(overlay, docs, binary, versions, dashboards):
    env_of = deploy_rules.container_env(docs)
    defaults = deploy_rules.flag_defaults(binary)
    consumer_env = env_of(clima_container(docs, "consumer-kafka"))
    kafka_env = {name: value for name, value in consumer_env.items() if name in ("CLIMA_KAFKA_TOPIC", "CLIMA_KAFKA_GROUP")}
    rules = {
        "strimzi": lambda: deploy_rules.strimzi(docs, versions),
        "kafka acls": lambda: deploy_rules.kafka_acls(docs, binary, kafka_env),
        "rabbitmq": lambda: deploy_rules.rabbitmq(docs),
        "image commands": lambda: deploy_rules.effective_commands(docs, ROOT, binary),
        "memory limits": lambda: deploy_rules.memory_limits(docs, env_of, defaults),
        "stores": lambda: deploy_rules.stores(docs),
        "way in": lambda: deploy_rules.way_in(docs, env_of(clima_container(docs, "api")), defaults),
        "namespaces": lambda: deploy_rules.namespaces(docs),
        "grafana": lambda: deploy_rules.grafana(docs, dashboards, versions),
        "pinned images": lambda: deploy_rules.pinned_images(docs, versions),
        "cert-manager": lambda: deploy_rules.cert_manager(docs),
        "secure hops": lambda: deploy_rules.secure_hops(overlay, docs),
        "security claims": lambda: deploy_rules.security_claims(overlay, docs, env_of,
                                                                (ROOT / "ARCHITECTURE.md").read_text()),
    }
    for name, rule in rules.items():
        problems = rule()
        for problem in problems:
            fail(f"{overlay}: {name}: {problem}")
        if not problems:
            print(f"ok   {overlay}: {name}")


def check_clima_containers(overlay, docs, binary):
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    checked = 0
    for doc, container in deploy_rules.clima_containers(docs):
        checked += 1
        where = f"{overlay}: {doc['metadata']['name']}"
        args = container.get("args", [])
        subcommand = command_path(args)
        if subcommand not in deploy_rules.cli_spec(binary):
            fail(f"{where}: clima has no command {subcommand!r}")
            continue
        flags, envs = accepted(binary, subcommand)
        for arg in args[1:]:
            if arg.startswith("--") and arg.split("=")[0] not in flags:
                fail(f"{where}: clima {subcommand} has no flag {arg}")
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        for source in container.get("envFrom", []):
            env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
        interpolated = {name for value in env.values() if value for name in re.findall(r"\$\(([A-Z0-9_]+)\)", value)}
        for name in env:
            if name in interpolated or OTEL_ENV.match(name):
                continue
            if name not in envs:
                fail(f"{where}: clima {subcommand} reads no env var {name}")
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        for name, value in env.items():
            if name.endswith("_LISTEN"):
                port = int(value.rsplit(":", 1)[1])
                if port not in ports.values():
                    fail(f"{where}: {name}={value} but no containerPort {port}")
        listened = {int(v.rsplit(":", 1)[1]) for n, v in env.items() if n.endswith("_LISTEN")}
        for name, port in ports.items():
            if port not in listened:
                fail(f"{where}: containerPort {name}={port} but no *_LISTEN env var binds it")
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container.get(probe_name, {})
            for kind in ("httpGet", "grpc", "tcpSocket"):
                port = probe.get(kind, {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    fail(f"{where}: {probe_name} uses port {port}, not one the container declares")
    print(f"ok   {overlay}: {checked} clima containers checked against `clima cli-spec`" if checked else "")
    if not checked:
        fail(f"{overlay}: no clima container found")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/clima")
    check_dashboards()
    versions_file = K8S / "versions.yaml"
    versions = yaml.safe_load(versions_file.read_text()) if versions_file.exists() else None
    if versions is None:
        fail("k8s/versions.yaml is missing: nothing says what the manifests deploy on")
    dashboards = {}
    for path in sorted((K8S / "base/grafana").glob("*.json")):
        try:
            dashboards[path.name] = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # check_dashboards reported it
    rendered = {}
    for overlay in [*OVERLAYS, "prod+ingress-nginx"]:
        docs = render(overlay)
        if docs:
            rendered[overlay] = docs
            validate_builtin(overlay, docs)
            check_clima_containers(overlay, docs, binary)
            if versions:
                check_rules(overlay, docs, binary, versions, dashboards)
    for name, problems in (("image tags", deploy_rules.image_tags(rendered, ROOT)),
                           ("build files", deploy_rules.build_files(ROOT))):
        for problem in problems:
            fail(f"{name}: {problem}")
        if not problems:
            print(f"ok   {name}")
    if failures:
        print(f"\n{len(failures)} problem(s) in k8s/")
        sys.exit(1)
    print("k8s: all checks passed")


if __name__ == "__main__":
    main()
