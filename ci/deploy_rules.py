"""Rules that k8s/ must keep to work on the platforms it deploys on, checked on
the rendered overlays by ci/check_k8s.py. Each rule is a fact read from the
upstream project at the version k8s/versions.yaml pins (the comment names where),
written here in our own words: no upstream file is copied into the repo.

Every rule returns a list of problems (empty: the rule holds)."""

import ast
import json
import re
import subprocess
import tomllib

import jsonschema
import yaml

# --- Strimzi (strimzi-kafka-operator 1.2.0: packaging/install/cluster-operator/04*-Crd-*.yaml,
# kafka-versions.yaml, CHANGELOG.md) -------------------------------------------------------
# 1.0 removed kafka.strimzi.io/v1beta2; only v1 is served.
STRIMZI_API = "kafka.strimzi.io/v1"
# Ignored since 0.48 (KRaft with node pools is the only mode).
STRIMZI_IGNORED_ANNOTATIONS = {"strimzi.io/kraft", "strimzi.io/node-pools"}


def _obj(properties, required=(), **extra):
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False,
            **extra}


_ANY = {}
_FREE = {"type": "object"}
_PEER = _obj({"podSelector": _FREE, "namespaceSelector": _FREE, "ipBlock": _FREE})
_LISTENER = _obj({
    "name": {"type": "string", "pattern": "^[a-z0-9]{1,11}$"},
    "port": {"type": "integer", "minimum": 9092, "not": {"enum": [9404, 9999]}},
    "type": {"enum": ["internal", "route", "tlsroute", "loadbalancer", "nodeport", "ingress", "cluster-ip"]},
    "tls": {"type": "boolean"},
    "authentication": _obj({"type": {"enum": ["tls", "scram-sha-512", "custom"]}}, ["type"],
                           additionalProperties=True),
    "configuration": _FREE,
    "networkPolicyPeers": {"type": "array", "items": _PEER},
}, ["name", "port", "type", "tls"])
_ACL = _obj({
    "type": {"enum": ["allow", "deny"]},
    "resource": _obj({"type": {"enum": ["topic", "group", "cluster", "transactionalId"]}, "name": {"type": "string"},
                      "patternType": {"enum": ["literal", "prefix"]}}, ["type"]),
    "host": {"type": "string"},
    "operations": {"type": "array", "minItems": 1, "items": {"enum": [
        "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs", "DescribeConfigs",
        "IdempotentWrite", "All"]}},
}, ["resource", "operations"])
STRIMZI_SPECS = {
    "Kafka": _obj({
        "kafka": _obj({
            "version": {"type": "string"}, "metadataVersion": {"type": "string"}, "image": {"type": "string"},
            "listeners": {"type": "array", "minItems": 1, "items": _LISTENER},
            "config": _FREE,
            "authorization": _obj({"type": {"enum": ["simple", "custom"]}}, ["type"], additionalProperties=True),
            **{key: _ANY for key in ("rack", "brokerRackInitImage", "livenessProbe", "readinessProbe", "jvmOptions",
                                     "jmxOptions", "metricsConfig", "logging", "template", "tieredStorage", "quotas")},
        }, ["listeners"]),
        "entityOperator": _obj({"topicOperator": _FREE, "userOperator": _FREE, "template": _FREE}),
        **{key: _ANY for key in ("clusterCa", "clientsCa", "cruiseControl", "kafkaExporter", "maintenanceTimeWindows")},
    }, ["kafka"]),
    "KafkaNodePool": _obj({
        "replicas": {"type": "integer", "minimum": 0},
        "roles": {"type": "array", "minItems": 1, "items": {"enum": ["controller", "broker"]}},
        "storage": _obj({
            "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
            "volumes": {"type": "array", "items": _obj({
                "id": {"type": "integer", "minimum": 0}, "type": {"enum": ["ephemeral", "persistent-claim"]},
                "size": {"type": "string"}, "deleteClaim": {"type": "boolean"}, "class": {"type": "string"},
                "kraftMetadata": {"enum": ["shared"]}}, ["type"])},
            "size": {"type": "string"}, "deleteClaim": {"type": "boolean"}, "class": {"type": "string"},
        }, ["type"]),
        "resources": _FREE, "jvmOptions": _FREE, "template": _FREE,
    }, ["replicas", "storage", "roles"]),
    "KafkaTopic": _obj({"topicName": {"type": "string"}, "partitions": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 32767}, "config": _FREE}),
    "KafkaUser": _obj({
        "authentication": _obj({"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}}, ["type"],
                               additionalProperties=True),
        "authorization": _obj({"type": {"enum": ["simple"]}, "acls": {"type": "array", "items": _ACL}},
                              ["type", "acls"]),
        "quotas": _FREE, "template": _FREE,
    }),
}


def strimzi(docs, versions):
    """Strimzi resources use the API version the pinned release serves, a Kafka
    version it supports, fields its CRD schemas allow, and close the listener."""
    pinned = versions["strimzi"]
    problems = []
    for doc in docs:
        if not doc["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"] != STRIMZI_API:
            problems.append(f"{where}: {doc['apiVersion']} is not served by Strimzi {pinned['version']} "
                            f"(only {STRIMZI_API})")
        for annotation in STRIMZI_IGNORED_ANNOTATIONS & set(doc["metadata"].get("annotations", {})):
            problems.append(f"{where}: annotation {annotation} is ignored since Strimzi 0.48")
        schema = STRIMZI_SPECS.get(doc["kind"])
        if schema is None:
            problems.append(f"{where}: kind not checked by ci/deploy_rules.py")
            continue
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc.get("spec", {})):
            problems.append(f"{where}: spec.{'.'.join(map(str, error.absolute_path))}: {error.message}")
        if doc["kind"] in ("KafkaNodePool", "KafkaTopic", "KafkaUser") and \
                "strimzi.io/cluster" not in doc["metadata"].get("labels", {}):
            problems.append(f"{where}: no strimzi.io/cluster label, so no operator picks it up")
        if doc["kind"] == "Kafka":
            kafka = doc["spec"].get("kafka", {})
            version = kafka.get("version")
            if version not in pinned["kafka_versions"]:
                problems.append(f"{where}: Kafka {version} is not one Strimzi {pinned['version']} supports "
                                f"({', '.join(pinned['kafka_versions'])})")
            for listener in kafka.get("listeners", []):
                if not listener.get("networkPolicyPeers"):
                    problems.append(f"{where}: listener {listener.get('name')} has no networkPolicyPeers, so "
                                    "Strimzi's generated NetworkPolicy opens it to every pod")
    return problems


# --- Kafka ACLs: what `clima kafka-acls` says the services need ----------------------------

def _grants(acl, needed):
    resource, want = acl["resource"], needed["resource"]
    if resource["type"] != want["type"]:
        return False
    if want["type"] != "cluster":
        name, pattern = resource.get("name", ""), resource.get("patternType", "literal")
        if not (name in ("*", want["name"]) if pattern == "literal" else want["name"].startswith(name)):
            return False
    operations = set(acl["operations"])
    return "All" in operations or set(needed["operations"]) <= operations


def _granted(acls, need, operation):
    """Whether `acls` allow, and do not deny, `operation` of `need`."""
    one = {**need, "operations": [operation]}
    return any(_grants(acl, one) for acl in acls if acl.get("type", "allow") == "allow") and \
        not any(_grants(acl, one) for acl in acls if acl.get("type") == "deny")


def kafka_acls(docs, binary, env):
    """The KafkaUser grants every ACL the clima services need with the
    overlay's topic and group (`clima kafka-acls`, from the code's own names)."""
    users = [doc for doc in docs if doc["kind"] == "KafkaUser"]
    if not users:
        return ["no KafkaUser: the services could not authenticate to Kafka"]
    run = subprocess.run([binary, "kafka-acls"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    if run.returncode != 0:
        return [f"`clima kafka-acls` failed: {run.stderr.strip()[:200]}"]
    needed = json.loads(run.stdout)
    problems = []
    for user in users:
        acls = user["spec"].get("authorization", {}).get("acls", [])
        for need in needed:
            missing = [operation for operation in need["operations"] if not _granted(acls, need, operation)]
            if missing:
                problems.append(f"KafkaUser {user['metadata']['name']}: no ACL grants {missing} on "
                                f"{need['resource']['type']} {need['resource'].get('name', '')}".rstrip())
    return problems


# --- RabbitMQ (docker-library/rabbitmq 4.1: conf.d/10-defaults.conf, docker-entrypoint.sh;
# rabbitmq-server v4.1.8: rabbit_prelaunch_logging.erl, rabbitmq_peer_discovery_k8s) --------

def _conf(text):
    return dict(line.split("=", 1) for line in (raw.split("#", 1)[0].strip() for raw in text.splitlines())
                if "=" in line) if text else {}


def _expanded(container):
    """A container's literal env values with Kubernetes' $(VAR) expansion (earlier
    variables only; a variable from a fieldRef or a Secret expands to <name>)."""
    env = {}
    for item in container.get("env", []):
        value = item.get("value")
        if value is None:
            value = f"<{item['name']}>" if "valueFrom" in item else ""
        env[item["name"]] = re.sub(r"(?<!\$)\$\(([A-Za-z0-9_]+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def rabbitmq(docs):
    """The rabbitmq.conf mounted over /etc/rabbitmq keeps the image's console
    logging (a read-only root has nowhere to write the log file, and RabbitMQ
    then does not boot), and more than one replica uses long node names that
    resolve through a headless Service that publishes not-ready pods."""
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    problems = []
    for doc in docs:
        if doc["kind"] != "StatefulSet":
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in pod["containers"]:
            if not re.match(r"^(docker\.io/(library/)?)?rabbitmq:", container["image"]):
                continue
            where = f"StatefulSet {doc['metadata']['name']}"
            if not re.match(r"^(docker\.io/(library/)?)?rabbitmq:\d+\.\d+\.\d+(-management)?(@sha256:[0-9a-f]{64})?$",
                            container["image"]):
                problems.append(f"{where}: image {container['image']} is not pinned to a full version")
            env = {item["name"]: item for item in container.get("env", [])}
            conf = {}
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] != "/etc/rabbitmq" or mount.get("subPath"):
                    continue
                config_map = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
                data = config_maps.get(config_map, {})
                conf = {key.strip(): value.strip() for key, value in _conf(data.get("rabbitmq.conf")).items()}
                logs_elsewhere = conf.get("log.console") == "true" or conf.get("log.file") == "false" or \
                    env.get("RABBITMQ_LOGS", {}).get("value") in ("-", "-stderr")
                read_only = container.get("securityContext", {}).get("readOnlyRootFilesystem")
                if read_only and not logs_elsewhere:
                    problems.append(f"{where}: ConfigMap {config_map} hides the image's conf.d (log.console = true); "
                                    "with a read-only root RabbitMQ cannot open its log file and does not boot: "
                                    "set log.console = true (or log.file = false)")
                if conf.get("cluster_formation.peer_discovery_backend") in ("k8s", "rabbit_peer_discovery_k8s") and \
                        "rabbitmq_peer_discovery_k8s" not in data.get("enabled_plugins", ""):
                    problems.append(f"{where}: k8s peer discovery without the rabbitmq_peer_discovery_k8s plugin")
            if doc["spec"].get("replicas", 1) > 1:
                if env.get("RABBITMQ_USE_LONGNAME", {}).get("value") != "true":
                    problems.append(f"{where}: {doc['spec']['replicas']} replicas with short node names: peer "
                                    "discovery joins rabbit@<name>-0, which other pods cannot resolve "
                                    "(set RABBITMQ_USE_LONGNAME=true)")
                service_name = doc["spec"].get("serviceName")
                nodename = _expanded(container).get("RABBITMQ_NODENAME", "")
                if not re.fullmatch(rf"rabbit@[^.]+\.{re.escape(str(service_name))}(\..+)?", nodename):
                    problems.append(f"{where}: RABBITMQ_NODENAME {nodename!r} does not name a host of the headless "
                                    f"Service {service_name}")
                service = services.get(service_name, {}).get("spec", {})
                if service.get("clusterIP") != "None" or not service.get("publishNotReadyAddresses"):
                    problems.append(f"{where}: Service {service_name} must be headless and publish not-ready "
                                    "addresses (nodes join before they are ready)")
    return problems


# --- Images: what each build path puts in the image config, and what a pod then runs ------
# rules_oci 2.x (oci/private/image.sh): setting `entrypoint` clears Cmd unless `cmd` is given.
# Kubernetes: `command` replaces the Entrypoint; `args` (or `command`) replaces the Cmd.

def render(overlay_dir):
    """The objects `kubectl kustomize` renders from an overlay folder (fails loudly if it cannot)."""
    out = subprocess.run(["kubectl", "kustomize", str(overlay_dir)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def container_env(docs):
    """A function giving a container's env: its ConfigMaps, then its own literal values
    (not values from Secrets, which a render does not hold)."""
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}

    def env_of(container):
        env = {}
        for source in container.get("envFrom", []):
            env.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}))
        env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
        return env
    return env_of


_spec = {}


def cli_spec(binary):
    """Every clima command's long flags with their env var and default, from `clima cli-spec`
    (the binary walks its own clap definition; nothing parses --help)."""
    if binary not in _spec:
        text = subprocess.run([binary, "cli-spec"], capture_output=True, text=True, check=True).stdout
        _spec[binary] = json.loads(text)
    return _spec[binary]


def flag_defaults(binary):
    """Each flag's default by env var, over every command."""
    return {flag["env"]: flag["default"] for flags in cli_spec(binary).values() for flag in flags.values()
            if flag["env"] and flag["default"] is not None}


def clima_containers(docs):
    """(Deployment, container) for every container that runs a clima image."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if "/clima/clima-" in container["image"]:
                    yield doc, container


def service_of(image):
    """clima-api → api, from an image reference's repository name."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0].removeprefix("clima-")


def _read(path):
    return path.read_text() if path.exists() else ""


def image_configs(root):
    """Per build path, per service: (Entrypoint, Cmd) of the image it builds;
    None where the definition cannot be read."""
    configs = {}
    images = _read(root / "ci/images")
    found = re.search(r'--config\.entrypoint (\S+) --config\.cmd "\$service"', images)
    configs["ci/images"] = (lambda service: ([found.group(1)], [service])) if found else None
    configs["flake.nix"] = configs["BUILD.bazel"] = None
    flake = _read(root / "flake.nix")
    services = dict(re.findall(r'^\s+([a-z]+) = \[ ((?:"[^"]*" ?)+)\];', flake, re.M))
    entrypoint = re.search(r'Entrypoint = \[ ((?:"[^"]*" ?)+)\](\s*\+\+\s*args)?;', flake)
    has_cmd = re.search(r"\bCmd = args;", flake)
    if entrypoint:
        def nix(service, entrypoint=entrypoint):
            args = re.findall(r'"([^"]*)"', services.get(service, ""))
            base = [item.replace("${clima}", "/nix/store/clima") for item in re.findall(r'"([^"]*)"', entrypoint.group(1))]
            return (base + (args if entrypoint.group(2) else []), args if has_cmd else [])
        configs["flake.nix"] = nix
    build = _read(root / "BUILD.bazel")
    block = re.search(r"oci_image\((.*?)\n    \)", build, re.S)
    if block:
        image = block.group(1)

        def bazel(service, block=image):
            def value(attribute):
                found = re.search(rf"\b{attribute} = (\[.*?\]),", block, re.S)
                return ast.literal_eval(re.sub(r"\bservice\b", repr(service), found.group(1))) if found else None
            entrypoint, cmd = value("entrypoint") or [], value("cmd")
            return entrypoint, cmd or []
        configs["BUILD.bazel"] = bazel
    return configs


def effective_argv(container, config):
    """What the container runs: the image's Entrypoint and Cmd (from `config`,
    per service) with the Deployment's command/args, as Kubernetes combines them."""
    entrypoint, cmd = config(service_of(container["image"]))
    command, args = container.get("command"), container.get("args")
    return (command or entrypoint) + (args if (command or args) else cmd)


def effective_commands(docs, root, binary):
    """For every image build path, the command each clima container would run
    (image Entrypoint/Cmd with the Deployment's command/args) is one `clima`
    accepts and names the container's own service once."""
    problems = []
    for path, config in image_configs(root).items():
        if config is None:
            problems.append(f"{path}: could not read the image's entrypoint and cmd")
            continue
        for doc, container in clima_containers(docs):
            service = service_of(container["image"])
            argv = effective_argv(container, config)
            where = f"{path} image for {doc['metadata']['name']}: runs {argv}"
            if not argv or not argv[0].endswith("/clima"):
                problems.append(f"{where}: not the clima binary")
                continue
            if argv[1:2] != [service] or argv.count(service) != 1:
                problems.append(f"{where}: the subcommand must be {service!r}, once")
                continue
            parsed = subprocess.run([binary, *argv[1:], "--help"], capture_output=True, text=True)
            if parsed.returncode != 0:
                reason = (parsed.stderr.strip().splitlines() or [f"exit {parsed.returncode}"])[0]
                problems.append(f"{where}: clima refuses it: {reason}")
    return problems


def image_tags(overlays, root):
    """Every overlay pulls a repository and tag that every push path pushes:
    the workspace version, under clima-<service>."""
    version = re.search(r'^version = "([^"]+)"', (root / "Cargo.toml").read_text(), re.M).group(1)
    flake = _read(root / "flake.nix")
    build = _read(root / "BUILD.bazel")
    pushed = {
        "ci/images": {version} if "VERSION=$(sed" in _read(root / "ci/images") else set(),
        "flake.nix": set(re.findall(r'version = "([^"]+)";', flake)),
        "BUILD.bazel": set(re.findall(r'remote_tags = \["([^"]+)"\]', build)),
    }
    problems = [f"{path} pushes tags {sorted(tags)}, not the workspace version {version}"
                for path, tags in pushed.items() if tags != {version}]
    for overlay, docs in overlays.items():
        # An `images:` entry that matches no image is silently ignored by kustomize.
        kustomization = root / "k8s/overlays" / overlay / "kustomization.yaml"
        if kustomization.exists():
            wanted = yaml.safe_load(kustomization.read_text()).get("images", [])
            used = {container["image"] for doc in docs
                    for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])}
            for entry in wanted:
                image = f"{entry.get('newName', entry['name'])}:{entry.get('newTag', 'latest')}"
                if "digest" in entry:
                    image = f"{entry.get('newName', entry['name'])}@{entry['digest']}"
                if not any(used_image == image or used_image.startswith(image + "@") for used_image in used):
                    problems.append(f"{overlay}: images entry {entry['name']} → {image} matches no container "
                                    "(kustomize ignores it)")
        for doc in docs:
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                image = container["image"]
                if "/clima/clima-" not in image:
                    continue
                name = image.split("@")[0]
                tag = name.rsplit(":", 1)[-1] if ":" in name.rsplit("/", 1)[-1] else "latest"
                if tag != version:
                    problems.append(f"{overlay}: {doc['metadata']['name']} pulls {image}, but every push path "
                                    f"pushes tag {version}")
                if service_of(image) not in ("api", "writer", "consumer", "dashboard"):
                    problems.append(f"{overlay}: {image} is not an image any push path builds")
    return problems


# --- Memory: limits that hold the worst case the flags allow ------------------------------
MIB = 2**20
# A service's own RSS before load: 20–33 MiB measured idle (ci/bench), plus headroom.
BASE_BYTES = 48 * MIB
# One TweetRecord in memory, worst case: a 280-character description of 4-byte
# UTF-8 characters, the id, country, weather, timestamps and a bounded trace context.
RECORD_BYTES = 1536
# tonic's default limit on a decoded gRPC message.
GRPC_MAX_MESSAGE = 4 * MIB
# librdkafka defaults: queued.max.messages.kbytes (KiB) and fetch.max.bytes.
RDKAFKA_DEFAULTS = {"queued.max.messages.kbytes": 65536, "fetch.max.bytes": 52428800}
# Measured by ci/bench-memory on 2026-12-07 (ARCHITECTURE.md "Memory under hostile
# bodies"), with the prod overlay's API limits:
# - one keep-alive connection idle after a request: 33 KiB (1,024 took the API from
#   21.4 to 54.2 MiB): hyper's buffers, the connection's task and its timers;
CONNECTION_BYTES = 36 * 1024
# - one admitted request of the worst shape (a body full of valid tweets: the
#   decoded records, the batch built from them and its encoding per writer call),
#   on a fresh API holding every other connection it admits: RSS grew by 2.61 ×
#   the bytes of the bodies in flight, 16 at once (3.22 × before the API returned
#   freed memory at once). Counted at the 3 × that ci/bench-memory fails beyond.
REQUEST_BODY_FACTOR = 3.0


_K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
              "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 10**-3}


def _quantity(text):
    """A Kubernetes quantity in bytes (128Mi, 1G, 1e9, 500k); None if it is not one."""
    found = re.fullmatch(r"([0-9.]+(?:[eE][0-9]+)?)([KMGTPE]i|[kKMGTPEm])?", str(text).strip())
    return int(float(found.group(1)) * _K8S_UNITS.get(found.group(2), 1)) if found else None


def _redis_bytes(text):
    """A Redis memory setting in bytes: kb/mb/gb are 1024-based, k/m/g 1000-based, any case."""
    found = re.fullmatch(r"([0-9]+)(kb|mb|gb|k|m|g)?", str(text).strip().lower())
    units = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "k": 10**3, "m": 10**6, "g": 10**9}
    return int(found.group(1)) * units.get(found.group(2), 1) if found else None


def worst_case_bytes(role, env, api_env, api_replicas, writers, defaults):
    """What one container can hold at most under the limits its flags set;
    the size of a batch is the API's setting (it builds them). `defaults` are
    the binary's flag defaults by env var (check_k8s reads them from `clima cli-spec`)."""
    def flag(name, source=env):
        return int(source.get(name, defaults[name]))
    batch_tweets = flag("CLIMA_BATCH_MAX_TWEETS", api_env)
    if role == "writer":
        batch_tweets = min(batch_tweets, flag("CLIMA_WRITER_MAX_RECORDS"))
    batch = batch_tweets * RECORD_BYTES
    if role == "api":
        # Every admitted request at its worst shape, measured; plus each batch in
        # flight, copied once per writer call.
        per_request = int(REQUEST_BODY_FACTOR * flag("CLIMA_MAX_BODY_BYTES"))
        return BASE_BYTES + flag("CLIMA_MAX_CONCURRENT_REQUESTS") * per_request + \
            flag("CLIMA_MAX_CONNECTIONS") * CONNECTION_BYTES + flag("CLIMA_BATCH_IN_FLIGHT") * batch * writers
    if role == "writer":
        # Every API replica's batches in flight, decoded and encoded for the broker.
        calls = api_replicas * flag("CLIMA_BATCH_IN_FLIGHT", api_env)
        return BASE_BYTES + calls * 2 * min(GRPC_MAX_MESSAGE, batch)
    if role == "consumer-rabbitmq":
        return BASE_BYTES + flag("CLIMA_RABBITMQ_PREFETCH") * 2 * batch + flag("CLIMA_CONSUMER_BATCH_SIZE") * RECORD_BYTES
    if role == "consumer-kafka":
        options = dict(pair.split("=", 1) for pair in env.get("CLIMA_KAFKA_OPTIONS", "").split(",") if "=" in pair)
        queued = int(options.get("queued.max.messages.kbytes", RDKAFKA_DEFAULTS["queued.max.messages.kbytes"])) * 1024
        fetch = int(options.get("fetch.max.bytes", RDKAFKA_DEFAULTS["fetch.max.bytes"]))
        return BASE_BYTES + queued + fetch + flag("CLIMA_CONSUMER_BATCH_SIZE") * RECORD_BYTES
    return None


def _role(container):
    """api, writer, consumer-kafka, consumer-rabbitmq or dashboard, from the container's args."""
    args = container.get("args", [])
    if not args:
        return None
    if args[0] == "consumer":
        # `consumer kafka`, or the deprecated `consumer --source kafka`.
        source = args[1] if len(args) > 1 and not args[1].startswith("-") else \
            next((value for flag, value in zip(args, args[1:]) if flag == "--source"), None)
        return f"consumer-{source}"
    return args[0]


def memory_limits(docs, container_env, defaults):
    """Each clima container's memory limit holds the worst case its flags allow."""
    hpas = {doc["spec"]["scaleTargetRef"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"}
    api_replicas = hpas.get("api", {}).get("maxReplicas", 1)
    containers = [(doc["metadata"]["name"], container) for doc, container in clima_containers(docs)]
    api_env = next((container_env(container) for _, container in containers if _role(container) == "api"), {})
    writers = sum(1 for _, container in containers if _role(container) == "writer")
    problems = []
    for name, container in containers:
        role = _role(container)
        if role is None:
            problems.append(f"{name}: no args, so its role (and worst case) is unknown")
            continue
        need = worst_case_bytes(role, container_env(container), api_env, api_replicas, writers, defaults)
        limit = container.get("resources", {}).get("limits", {}).get("memory")
        if need is None:
            continue
        if limit is None or (_quantity(limit) or 0) < need:
            problems.append(f"{name}: memory limit {limit} < {need / MIB:.0f} MiB, the worst case its flags allow "
                            "(lower the flags in the manifest or raise the limit)")
    return problems


# --- Redis and Valkey: bounded memory that never evicts dedupe state ----------------------

def stores(docs):
    """Redis and Valkey run with maxmemory under the container's limit and
    maxmemory-policy noeviction: full, they refuse writes (the consumer waits
    and retries, nothing is lost) instead of evicting a dedupe marker, which
    would let a redelivered tweet be counted twice."""
    problems = []
    for doc in docs:
        if doc["kind"] != "StatefulSet" or doc["metadata"]["name"] not in ("redis", "valkey"):
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        args = container.get("args", [])
        where = f"StatefulSet {doc['metadata']['name']}"
        if any(arg == "--requirepass" or "PASSWORD)" in arg for arg in args):
            problems.append(f"{where}: the password is in argv (every process listing shows it); "
                            "put requirepass in a config file")
        # A config file may come first (redis-server [FILE] [--option value]...).
        options = args[1:] if args and not args[0].startswith("--") else args
        settings = dict(zip(options[::2], options[1::2])) if all(a.startswith("--") for a in options[::2]) else {}
        limit = container.get("resources", {}).get("limits", {}).get("memory")
        if settings.get("--maxmemory-policy") != "noeviction":
            problems.append(f"{where}: maxmemory-policy must be noeviction (an evicted dedupe marker double counts)")
        if "--maxmemory" not in settings:
            problems.append(f"{where}: no --maxmemory: it grows until the kernel kills it at {limit}")
        elif _redis_bytes(settings["--maxmemory"]) is None:
            problems.append(f"{where}: --maxmemory {settings['--maxmemory']} is not a Redis memory size")
        elif limit and _redis_bytes(settings["--maxmemory"]) > 0.6 * (_quantity(limit) or 0):
            problems.append(f"{where}: maxmemory {settings['--maxmemory']} leaves under 40 % of {limit} for the "
                            "append-only rewrite's copy-on-write and the server itself")
    return problems


# --- The way in: Gateway API v1.6.1 (config/crd/standard/*_httproutes.yaml, *_gateways.yaml),
# Envoy Gateway v1.9.0 (api/v1alpha1/backendtrafficpolicy_types.go, clienttrafficpolicy), and
# the Ingress variant's ingress-nginx annotations ------------------------------------------

_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")


def _seconds(text):
    if not _DURATION.match(str(text)):
        return None
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", text))


def namespaces(docs):
    """Every namespaced object lands in the overlay's namespace (a component's
    resources are not covered by the base's `namespace:`; without it they would
    go to `default`, where the route finds no Service)."""
    names = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace"]
    if len(names) != 1:
        return [f"the overlay has {len(names)} Namespace objects, not one"]
    cluster_scoped = {"Namespace", "GatewayClass", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    return [f"{doc['kind']} {doc['metadata']['name']}: namespace {doc['metadata'].get('namespace')!r}, not {names[0]!r}"
            for doc in docs if doc["kind"] not in cluster_scoped and doc["metadata"].get("namespace") != names[0]]


def way_in(docs, api_env, defaults):
    """The route to POST /input exists, is well formed for the pinned Gateway
    API, and applies the API's own body-size and time limits at the edge."""
    body = int(api_env.get("CLIMA_MAX_BODY_BYTES", defaults["CLIMA_MAX_BODY_BYTES"]))
    timeout = _seconds(api_env.get("CLIMA_REQUEST_TIMEOUT", defaults["CLIMA_REQUEST_TIMEOUT"]))
    # The API closes a keep-alive connection idle this long (hyper's header read timeout).
    keep_alive = _seconds(api_env.get("CLIMA_HEADER_READ_TIMEOUT", defaults["CLIMA_HEADER_READ_TIMEOUT"]))
    kinds = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    services = {doc["metadata"]["name"]: doc for doc in kinds.get("Service", [])}
    gateways = {doc["metadata"]["name"]: doc for doc in kinds.get("Gateway", [])}
    problems = []
    routes, ingresses = kinds.get("HTTPRoute", []), kinds.get("Ingress", [])
    if not routes and not ingresses:
        return ["no HTTPRoute or Ingress routes POST /input to the API"]
    for route in routes:
        where = f"HTTPRoute {route['metadata']['name']}"
        if route["apiVersion"] != "gateway.networking.k8s.io/v1":
            problems.append(f"{where}: {route['apiVersion']} (the standard channel serves gateway.networking.k8s.io/v1)")
        for parent in route["spec"].get("parentRefs", []):
            gateway = gateways.get(parent.get("name"))
            if gateway is None:
                problems.append(f"{where}: parent Gateway {parent.get('name')} is not in the overlay")
            elif parent.get("sectionName") and parent["sectionName"] not in \
                    [listener["name"] for listener in gateway["spec"].get("listeners", [])]:
                problems.append(f"{where}: Gateway {gateway['metadata']['name']} has no listener {parent['sectionName']}")
        paths = []
        for rule in route["spec"].get("rules", []):
            for match in rule.get("matches", []):
                paths.append(match.get("path", {}).get("value"))
            for backend in rule.get("backendRefs", []):
                ports = [port["port"] for port in services.get(backend.get("name"), {}).get("spec", {}).get("ports", [])]
                if not isinstance(backend.get("port"), int) or backend["port"] not in ports:
                    problems.append(f"{where}: backend {backend.get('name')} port {backend.get('port')!r} is not a port "
                                    f"number of that Service {ports}")
            request = rule.get("timeouts", {}).get("request")
            if request is None or not _DURATION.match(request) or _seconds(request) != timeout:
                problems.append(f"{where}: timeouts.request {request!r} is not the API's request timeout {timeout:g}s")
        if "/input" not in paths:
            problems.append(f"{where}: does not route /input")
        buffers = [policy for policy in kinds.get("BackendTrafficPolicy", [])
                   if any(target.get("kind") == "HTTPRoute" and target.get("name") == route["metadata"]["name"]
                          for target in policy["spec"].get("targetRefs", []))]
        limits = [policy["spec"].get("requestBuffer", {}).get("limit") for policy in buffers]
        if not limits or any(limit is None or _quantity(limit) != body for limit in limits):  # Envoy: a quantity
            problems.append(f"{where}: no BackendTrafficPolicy requestBuffer.limit equal to the API's body limit "
                            f"{body} bytes (found {limits})")
        # Envoy keeps an idle upstream connection 1 h by default (timeout_types.go); a request it
        # sends on one the API is closing at that moment fails. The proxy must give up first.
        idle = [policy["spec"].get("timeout", {}).get("http", {}).get("connectionIdleTimeout") for policy in buffers]
        if not idle or any(_seconds(value) is None or _seconds(value) >= keep_alive for value in idle):
            problems.append(f"{where}: BackendTrafficPolicy timeout.http.connectionIdleTimeout {idle} is not below "
                            f"the API's keep-alive idle time {keep_alive:g}s (CLIMA_HEADER_READ_TIMEOUT)")
    for gateway in gateways.values():
        received = [policy["spec"].get("timeout", {}).get("http", {}).get("requestReceivedTimeout")
                    for policy in kinds.get("ClientTrafficPolicy", [])
                    if any(target.get("kind") == "Gateway" and target.get("name") == gateway["metadata"]["name"]
                           for target in policy["spec"].get("targetRefs", []))]
        if not received or any(value is None or _seconds(value) != timeout for value in received):
            problems.append(f"Gateway {gateway['metadata']['name']}: no ClientTrafficPolicy requestReceivedTimeout "
                            f"equal to the API's request timeout {timeout:g}s (found {received})")
    for ingress in ingresses:
        annotations = ingress["metadata"].get("annotations", {})
        size = annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")
        # nginx sizes: k and m (any case) are 1024-based.
        if _redis_bytes(size.lower().replace("k", "kb").replace("m", "mb").replace("g", "gb")) != body:
            problems.append(f"Ingress {ingress['metadata']['name']}: proxy-body-size {size} is not {body} bytes")
    return problems


# --- Grafana 12 and redis-datasource 2.2.0 (pkg/redis-hash.go: HGETALL is one row of one
# numeric field per hash field; grafana packaging/docker/run.sh: GF_INSTALL_PLUGINS deprecated)

def grafana(docs, dashboards, versions):
    """Grafana installs its plugin, at the pinned version, the supported way, and
    every HGETALL chart has the transformation redis-datasource's answer needs."""
    pinned = set(versions["images"].values())
    problems = []
    for doc in docs:
        if doc["kind"] != "Deployment" or doc["metadata"]["name"] != "grafana":
            continue
        env = {item["name"]: item.get("value", "") for container in doc["spec"]["template"]["spec"]["containers"]
               for item in container.get("env", [])}
        if "GF_INSTALL_PLUGINS" in env:
            problems.append("grafana: GF_INSTALL_PLUGINS is deprecated since Grafana 12.1: use GF_PLUGINS_PREINSTALL_SYNC")
        for plugin in filter(None, env.get("GF_PLUGINS_PREINSTALL_SYNC", "").split(",")):
            if not re.fullmatch(r"[a-z0-9-]+@\d+\.\d+\.\d+", plugin.strip()) or plugin.strip() not in pinned:
                problems.append(f"grafana: plugin {plugin!r} is not the id@version k8s/versions.yaml pins")
    for name, dashboard in dashboards.items():
        for panel in dashboard.get("panels", []):
            commands = {target.get("command") for target in panel.get("targets", [])}
            if "hgetall" in commands and panel["type"] in ("barchart", "table", "piechart"):
                if not any(step["id"] == "reduce" and step.get("options", {}).get("mode", "seriesToRows") ==
                           "seriesToRows" for step in panel.get("transformations", [])):
                    problems.append(f"{name}: panel {panel['id']} ({panel['type']}) shows HGETALL without a reduce "
                                    "(series to rows) transformation: redis-datasource returns one row of numbers "
                                    "and no string field, so it stays empty")
    return problems


def _release(tag):
    """A tag's leading numeric release (`7.4.6-alpine` → (7, 4, 6)), or None."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", tag)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def pinned_images(docs, versions):
    """Third-party images are the ones k8s/versions.yaml pins, and no pin is older
    than a release of its line that fixes a known CVE (versions.yaml `advisories`)."""
    pinned = set(versions["images"].values())
    problems = []
    for name, advisory in versions.get("advisories", {}).items():
        image = versions["images"].get(name)
        if image is None or not advisory.get("source", "").startswith("https://"):
            problems.append(f"k8s/versions.yaml advisories.{name}: no pinned image of that name, or no https source")
            continue
        release = _release(image.rsplit(":", 1)[-1])
        for fixed, cves in advisory.get("fixed_in", {}).items():
            fixed = _release(str(fixed))
            if release is None or (release[:2] == fixed[:2] and release < fixed):
                problems.append(f"{image}: older than {'.'.join(map(str, fixed))}, which fixes {', '.join(cves)}")
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            image = container["image"]
            if "/clima/clima-" not in image and image not in pinned:
                problems.append(f"{doc['kind']} {doc['metadata']['name']}: image {image} is not pinned in "
                                "k8s/versions.yaml")
    return problems


# --- Who may talk to whom in prod: cert-manager v1.21.1 (pkg/apis/certmanager/v1/types_certificate.go,
# types_issuer.go, internal/apis/certmanager/validation/certificate.go,
# pkg/controller/certificates/issuing/internal/secret.go) ---------------------------------
CERT_MANAGER_API = "cert-manager.io/v1"
# A CA Issuer's Secrets hold tls.crt (the leaf), tls.key and ca.crt (the issuing CA).
CERT_SECRET_KEYS = {"tls.crt", "tls.key", "ca.crt"}
_ISSUER_REF = _obj({"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                    "group": {"const": "cert-manager.io"}}, ["name"])
CERT_MANAGER_SPECS = {
    "Issuer": _obj({"selfSigned": _obj({"crlDistributionPoints": {"type": "array"}}),
                    "ca": _obj({"secretName": {"type": "string"}, "crlDistributionPoints": {"type": "array"},
                                "ocspServers": {"type": "array"}, "issuingCertificateURLs": {"type": "array"}},
                               ["secretName"])},
                   minProperties=1, maxProperties=1),
    "Certificate": _obj({
        "secretName": {"type": "string"}, "issuerRef": _ISSUER_REF,
        "commonName": {"type": "string", "maxLength": 64}, "dnsNames": {"type": "array", "items": {"type": "string"}},
        "isCA": {"type": "boolean"}, "duration": {"type": "string"}, "renewBefore": {"type": "string"},
        "usages": {"type": "array", "items": {"enum": [
            "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
            "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
            "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
            "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
        "privateKey": _obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}),
    }, ["secretName", "issuerRef"]),
}


def cert_manager(docs):
    """cert-manager objects use the served API and fields its CRDs allow; ECDSA
    keys are 256, 384 or 521 bits; each issuerRef names an Issuer here, and a CA
    Issuer signs with a Secret that an isCA Certificate writes."""
    docs = [doc for doc in docs if doc["apiVersion"].startswith("cert-manager.io/")]
    issuers = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Issuer"}
    ca_secrets = {doc["spec"].get("secretName") for doc in docs
                  if doc["kind"] == "Certificate" and doc["spec"].get("isCA")}
    problems = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"] != CERT_MANAGER_API:
            problems.append(f"{where}: {doc['apiVersion']} is not {CERT_MANAGER_API}")
        schema = CERT_MANAGER_SPECS.get(doc["kind"])
        if schema is None:
            problems.append(f"{where}: kind not checked by ci/deploy_rules.py")
            continue
        spec = doc.get("spec", {})
        for error in jsonschema.Draft7Validator(schema).iter_errors(spec):
            problems.append(f"{where}: spec.{'.'.join(map(str, error.absolute_path))}: {error.message}")
        key = spec.get("privateKey", {})
        if key.get("algorithm") == "ECDSA" and key.get("size", 256) not in (256, 384, 521):
            problems.append(f"{where}: ECDSA keys are 256, 384 or 521 bits, not {key.get('size')}")
        if doc["kind"] == "Certificate":
            if not any(spec.get(field) for field in ("commonName", "dnsNames", "uris", "ipAddresses")):
                problems.append(f"{where}: names nothing (commonName, dnsNames, uris or ipAddresses)")
            if spec.get("issuerRef", {}).get("kind", "Issuer") == "Issuer" and \
                    spec.get("issuerRef", {}).get("name") not in issuers:
                problems.append(f"{where}: issuerRef {spec.get('issuerRef', {}).get('name')} is no Issuer here")
        if doc["kind"] == "Issuer" and "ca" in spec and spec["ca"].get("secretName") not in ca_secrets:
            problems.append(f"{where}: CA Secret {spec['ca'].get('secretName')} is written by no isCA Certificate")
    return problems


def secure_hops(overlay, docs):
    """In prod, the API reaches the writers over mutual TLS with the key they
    require, and the dashboard serves TLS behind a key. Every certificate file
    a container names is in a mounted Secret that a Certificate writes, with the
    right usage and the host names its clients dial."""
    if not overlay.startswith("prod"):
        return []
    certificates = {doc["spec"]["secretName"]: doc["spec"] for doc in docs
                    if doc["kind"] == "Certificate" and doc["apiVersion"].startswith("cert-manager.io/")}
    problems = []

    def mounted_certificate(doc, container, path, usage):
        """The Certificate whose Secret holds `path` in this pod, or None (a problem is noted)."""
        if not path:
            return None  # the missing variable is reported by the caller
        where = f"{doc['metadata']['name']}: {path}"
        volumes = {volume["name"]: volume for volume in doc["spec"]["template"]["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            directory = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(directory):
                continue
            secret = volumes.get(mount["name"], {}).get("secret", {}).get("secretName")
            if path[len(directory):] not in CERT_SECRET_KEYS:
                problems.append(f"{where}: a cert-manager Secret holds only {sorted(CERT_SECRET_KEYS)}")
            spec = certificates.get(secret)
            if spec is None:
                problems.append(f"{where}: Secret {secret} is written by no Certificate")
            elif usage not in spec.get("usages", []):
                problems.append(f"{where}: Certificate for {secret} lacks usage {usage!r}")
            return spec
        problems.append(f"{where}: not in any mounted volume")
        return None

    def env(container):
        literal = {item["name"]: item.get("value") for item in container.get("env", [])}
        secret = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container.get("env", [])
                  if "secretKeyRef" in item.get("valueFrom", {})}
        return literal, secret

    pods = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Deployment"}
    writer_keys, writer_names = [], set()
    for name in ("writer-kafka", "writer-rabbitmq"):
        doc = pods.get(name)
        if doc is None:
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        literal, secret = env(container)
        for variable in ("CLIMA_WRITER_TLS_CERT", "CLIMA_WRITER_TLS_KEY", "CLIMA_WRITER_TLS_CLIENT_CA"):
            if not literal.get(variable):
                problems.append(f"{name}: no {variable}: the writer port is open to any pod")
        spec = mounted_certificate(doc, container, literal.get("CLIMA_WRITER_TLS_CERT"), "server auth")
        mounted_certificate(doc, container, literal.get("CLIMA_WRITER_TLS_CLIENT_CA"), "server auth")
        if spec is not None and name not in spec.get("dnsNames", []):
            problems.append(f"{name}: its certificate does not name {name}, the host the API dials")
        writer_names.add(name)
        if "CLIMA_WRITER_API_KEY" not in secret:
            problems.append(f"{name}: no CLIMA_WRITER_API_KEY from a Secret: any caller may publish")
        writer_keys.append(secret.get("CLIMA_WRITER_API_KEY"))
    api = pods.get("api")
    if api is not None:
        container = api["spec"]["template"]["spec"]["containers"][0]
        literal, secret = env(container)
        for endpoint in (literal.get("CLIMA_WRITERS") or "").split(","):
            host = re.sub(r"^[a-z]+://", "", endpoint).split(":")[0]
            if not endpoint.startswith("https://"):
                problems.append(f"api: writer {endpoint} is not https://")
            elif host not in writer_names:
                problems.append(f"api: writer host {host} is no writer Deployment")
        for variable in ("CLIMA_WRITER_TLS_CA", "CLIMA_WRITER_TLS_CLIENT_CERT", "CLIMA_WRITER_TLS_CLIENT_KEY"):
            if not literal.get(variable):
                problems.append(f"api: no {variable}")
        mounted_certificate(api, container, literal.get("CLIMA_WRITER_TLS_CLIENT_CERT"), "client auth")
        mounted_certificate(api, container, literal.get("CLIMA_WRITER_TLS_CA"), "client auth")
        if any(key != secret.get("CLIMA_WRITER_API_KEY") for key in writer_keys):
            problems.append("api: CLIMA_WRITER_API_KEY is not the Secret key the writers require")
    dashboard = pods.get("dashboard")
    if dashboard is not None:
        container = dashboard["spec"]["template"]["spec"]["containers"][0]
        literal, secret = env(container)
        if not literal.get("CLIMA_DASHBOARD_TLS_CERT") or not literal.get("CLIMA_DASHBOARD_TLS_KEY"):
            problems.append("dashboard: no CLIMA_DASHBOARD_TLS_CERT/KEY: the counts travel in clear text")
        else:
            mounted_certificate(dashboard, container, literal["CLIMA_DASHBOARD_TLS_CERT"], "server auth")
        if "CLIMA_DASHBOARD_API_KEY" not in secret:
            problems.append("dashboard: no CLIMA_DASHBOARD_API_KEY from a Secret")
        for probe_name in ("readinessProbe", "livenessProbe"):
            probe = container.get(probe_name, {}).get("httpGet")
            if probe and probe.get("port") == "http" and literal.get("CLIMA_DASHBOARD_TLS_CERT") and \
                    probe.get("scheme") != "HTTPS":
                problems.append(f"dashboard: {probe_name} speaks HTTP to a TLS port")
    return problems


# --- What the prod overlay protects: the table in ARCHITECTURE.md "Security", row by row,
# against the rendered overlay ---------------------------------------------------------

def _security_facts(docs, env_of):
    """Each protection of the security table, as the render has it: {protection: on?}."""
    pods = {doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]
            for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")}

    def names(pod):  # every variable a pod's first container sets, from a value, a Secret or a ConfigMap
        container = pods.get(pod, {})
        return set(env_of(container)) | {item["name"] for item in container.get("env", [])}

    def value(pod, name):
        return env_of(pods.get(pod, {})).get(name, "")

    def all_of(pods_, test):
        return bool(pods_) and all(test(pod) for pod in pods_)

    writers = [pod for pod in ("writer-kafka", "writer-rabbitmq") if pod in pods]
    kafka = [pod for pod in ("writer-kafka", "consumer-kafka") if pod in pods]
    rabbitmq = [pod for pod in ("writer-rabbitmq", "consumer-rabbitmq") if pod in pods]
    store_urls = [(pod, name) for pod, name in (("consumer-kafka", "CLIMA_STORE_URL"),
                                                 ("consumer-rabbitmq", "CLIMA_STORE_URL"),
                                                 ("dashboard", "CLIMA_REDIS_URL"), ("dashboard", "CLIMA_VALKEY_URL"))
                  if pod in pods]
    kafka_options = {pod: dict(item.split("=", 1) for item in value(pod, "CLIMA_KAFKA_OPTIONS").split(",") if "=" in item)
                     for pod in kafka}
    return {
        "HTTPS at the edge": any(listener.get("protocol") == "HTTPS" for doc in docs if doc["kind"] == "Gateway"
                                 for listener in doc["spec"].get("listeners", []))
        or any(doc["spec"].get("tls") for doc in docs if doc["kind"] == "Ingress"),
        "API key on POST /input": bool({"CLIMA_API_KEY", "CLIMA_API_KEY_FILE"} & names("api")),
        "mutual TLS, API to writers": all_of(writers, lambda pod: "CLIMA_WRITER_TLS_CLIENT_CA" in names(pod))
        and "CLIMA_WRITER_TLS_CLIENT_CERT" in names("api")
        and all(endpoint.startswith("https://") for endpoint in value("api", "CLIMA_WRITERS").split(",")),
        "API key, API to writers": all_of(writers, lambda pod: "CLIMA_WRITER_API_KEY" in names(pod)),
        "TLS on the dashboard": "CLIMA_DASHBOARD_TLS_CERT" in names("dashboard"),
        "API key on the dashboard": "CLIMA_DASHBOARD_API_KEY" in names("dashboard"),
        "passwords to Kafka": all_of(kafka, lambda pod: kafka_options[pod].get("sasl.mechanism", "").startswith("SCRAM")),
        "TLS to Kafka": all_of(kafka, lambda pod: kafka_options[pod].get("security.protocol") in ("SSL", "SASL_SSL")),
        "passwords to RabbitMQ": all_of(rabbitmq, lambda pod: re.match(r"amqps?://(?!guest:)[^:@/]+:[^@/]+@",
                                                                         value(pod, "CLIMA_AMQP_URL")) is not None),
        "TLS to RabbitMQ": all_of(rabbitmq, lambda pod: value(pod, "CLIMA_AMQP_URL").startswith("amqps://")),
        "passwords to Redis and Valkey": all_of(store_urls, lambda url: re.match(r"rediss?://[^@/]*:[^@/]+@",
                                                                                 value(*url)) is not None),
        "TLS to Redis and Valkey": all_of(store_urls, lambda url: value(*url).startswith("rediss://")),
        "default-deny NetworkPolicy": any(doc["kind"] == "NetworkPolicy" and not doc["spec"].get("podSelector")
                                          and "Ingress" in doc["spec"].get("policyTypes", []) for doc in docs),
    }


def security_claims(overlay, docs, env_of, architecture):
    """Every row of ARCHITECTURE.md's "What the prod overlay protects" table says
    on or off as the rendered prod overlay has it, and every protection has a row."""
    if not overlay.startswith("prod"):
        return []
    section = architecture.split("### What the prod overlay protects", 1)[-1].split("\n#", 1)[0]
    claims = {}
    for cells in (line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("| ")):
        if len(cells) >= 2 and cells[1].strip() in ("on", "off"):
            claims[cells[0].strip()] = cells[1].strip() == "on"
    facts = _security_facts(docs, env_of)
    problems = [f"ARCHITECTURE.md says {name!r} is {'on' if claims[name] else 'off'} in prod; the render has it "
                f"{'on' if on else 'off'}" for name, on in facts.items() if name in claims and claims[name] != on]
    problems += [f"ARCHITECTURE.md's prod security table has no row {name!r}" for name in facts if name not in claims]
    problems += [f"ARCHITECTURE.md's prod security table row {name!r} is no protection this rule knows"
                 for name in claims if name not in facts]
    return problems


# --- The Nix and Bazel builds (crane CHANGELOG.md; rules_rust cargo/private/cargo_build_script.bzl,
# cargo_build_script_runner/bin.rs, rust/known_shas.bzl; rules_rust rust/private/rust.bzl) -----

def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def build_files(root):
    """What would stop `nix build .#images` or `bazel build` before any code compiles."""
    problems = []
    flake = _read(root / "flake.nix")
    nixpkgs = re.search(r'nixpkgs\.url = "github:NixOS/nixpkgs/nixos-(\d+)\.(\d+)"', flake)
    # crane v0.22 dropped nixpkgs 25.05, whose rustc (1.86) is also older than our rust-version.
    if not nixpkgs or (int(nixpkgs.group(1)), int(nixpkgs.group(2))) < (25, 11):
        problems.append("flake.nix: nixpkgs must be nixos-25.11 or later (crane >= 0.22 dropped 25.05; its rustc "
                        "1.86 is older than the workspace's rust-version)")
    crane = re.search(r'crane\.url = "github:ipetkov/crane(/[^"]+)?"', flake)
    if not (root / "flake.lock").exists() and not (crane and crane.group(1)):
        problems.append("flake.nix: crane floats on its master branch (breaking changes land there) and there is "
                        "no flake.lock: pin a tag or commit")
    module = _read(root / "MODULE.bazel")
    rules_rust = re.search(r'bazel_dep\(name = "rules_rust", version = "([^"]+)"\)', module)
    toolchains = re.findall(r'versions = \["([0-9.]+)"\]', module)
    # rules_rust learnt the sha256 of Rust 1.95.0 in 0.70.0; older ones download it unchecked.
    if rules_rust and any(_version(toolchain) >= (1, 95) for toolchain in toolchains) and \
            _version(rules_rust.group(1)) < (0, 70):
        problems.append(f"MODULE.bazel: rules_rust {rules_rust.group(1)} does not know Rust {toolchains}'s hashes "
                        "(0.70.0 or later does)")
    for build in sorted(root.glob("rust/*/BUILD.bazel")):
        text = build.read_text()
        # rules_rust sets CARGO_MANIFEST_DIR to the package in the script's runfiles and runs it
        # there; an override replaces it with a path that does not exist.
        if re.search(r'build_script_env = \{[^}]*"CARGO_MANIFEST_DIR"', text):
            problems.append(f"{build.relative_to(root)}: build_script_env overrides CARGO_MANIFEST_DIR, so the build "
                            "script runs from a directory that does not exist")
        for test in re.finditer(r"rust_test\((.*?)\n\)", text, re.S):
            body = test.group(1)
            sources = re.search(r'crate_root = "([^"]+)"', body)
            # A test of a crate (crate = ":x") compiles that crate's src/.
            folder = (build.parent / sources.group(1)).parent if sources else build.parent / "src"
            used = set()
            for source in folder.rglob("*.rs"):
                used |= set(re.findall(r'env!\("(CARGO_BIN_EXE_[A-Za-z0-9_]+)"\)', source.read_text()))
            rustc_env = re.search(r"rustc_env = \{([^}]*)\}", body)
            for name in sorted(used):
                if not rustc_env or f'"{name}"' not in rustc_env.group(1):
                    problems.append(f"{build.relative_to(root)}: a test reads {name} with env!() at compile time, "
                                    "but only rustc_env sets it then (env = {...} is for run time)")
        problems += _workspace_deps(build)
        problems += _library_beside_binary(build)
    problems += _included_files(root, flake)
    return problems


# crane's filterCargoSources keeps these; anything else a crate reads must match the flake's own filter.
CARGO_SOURCES = re.compile(r"(\.rs|\.toml|/Cargo\.lock)$")


def _included_files(root, flake):
    """A file the Rust sources include_str!/include_bytes! at compile time must reach both builds:
    Bazel's sandbox has only the crate's srcs and compile_data, and Nix's source only what the
    flake's filter keeps. Neither can run here, so a missing file would only show on a user's
    machine."""
    # The flake's extra filters, as `builtins.match "REGEX" path`; Nix strings escape `\` as `\\`.
    kept = [re.compile(pattern.replace("\\\\", "\\")) for pattern in
            re.findall(r'builtins\.match "([^"]+)" path', flake)]
    problems = []
    for source in sorted(root.glob("rust/*/src/**/*.rs")):
        for included in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', source.read_text()):
            path = (source.parent / included).resolve()
            crate = source.relative_to(root).parts[1]
            relative = path.relative_to((root / "rust" / crate).resolve()).as_posix()
            where = f"{source.relative_to(root)} includes {relative}"
            build = _read(root / "rust" / crate / "BUILD.bazel")
            if not re.search(rf'compile_data = \[[^\]]*"{re.escape(relative)}"', build):
                problems.append(f"{where}: rust/{crate}/BUILD.bazel's compile_data does not list it")
            nix_path = f"/nix/store/source/rust/{crate}/{relative}"
            if not CARGO_SOURCES.search(nix_path) and not any(pattern.fullmatch(nix_path) for pattern in kept):
                problems.append(f"{where}: flake.nix's source filter drops it")
    return problems


def _library_beside_binary(build):
    """Cargo makes src/lib.rs and src/main.rs two crates of one package by itself; Bazel needs a
    rust_library for the first, and the binary and the tests (which `use` it) must depend on it."""
    src = build.parent / "src"
    if not ((src / "lib.rs").exists() and (src / "main.rs").exists()):
        return []
    crate = build.parent.name.replace("-", "_")
    text = build.read_text()
    where = build.relative_to(build.parents[2])
    targets = {kind: [body for found, body in re.findall(r"(rust_\w+)\((.*?)\n\)", text, re.S) if found == kind]
               for kind in ("rust_library", "rust_binary", "rust_test")}
    library = next((re.search(r'\bname = "([^"]+)"', body).group(1) for body in targets["rust_library"]
                    if f'crate_name = "{crate}"' in body), None)
    if library is None:
        return [f'{where}: src/lib.rs is the library `{crate}`, but no rust_library has crate_name = "{crate}"']
    problems = []
    for body in targets["rust_binary"] + targets["rust_test"]:
        name = re.search(r'\bname = "([^"]+)"', body).group(1)
        tested = re.search(r'\bcrate = "([^"]+)"', body)
        if tested and tested.group(1) != f":{library}":
            # Testing the binary compiles main.rs alone: the library's tests would not run.
            problems.append(f"{where}: {name} tests {tested.group(1)}, not the library :{library}")
        elif not tested and f'":{library}"' not in body:
            problems.append(f"{where}: {name} compiles apart from src/lib.rs but does not depend on :{library}")
    return problems


def _workspace_deps(build):
    """crate_universe's all_crate_deps() brings a crate's crates.io dependencies, but the workspace's
    own crates are listed by hand: each one Cargo.toml names must be in BUILD.bazel, or Bazel cannot
    compile the crate (`use clima_x` unresolved)."""
    manifest = tomllib.loads((build.parent / "Cargo.toml").read_text())
    text = build.read_text()
    listed = set(re.findall(r'"//rust/(clima[a-z-]*)"', text))
    # clima_crate(deps = ["clima-x"], dev_deps = [...]) names them without the //rust/ prefix.
    for field in ("deps", "dev_deps"):
        for group in re.findall(rf"\b{field} = \[([^\]]*)\]", text):
            listed |= set(re.findall(r'"(clima[a-z-]*)"', group))
    problems = []
    for table in ("dependencies", "dev-dependencies"):
        for crate in sorted(name for name in manifest.get(table, {}) if name.startswith("clima")):
            if crate not in listed:
                problems.append(f"{build.relative_to(build.parents[2])}: Cargo.toml's [{table}] has {crate}, "
                                "which BUILD.bazel does not list: Bazel would not find it")
    return problems
