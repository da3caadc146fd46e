"""ci/deploy_rules.py against the rendered prod overlay: each rule holds on the
manifests as they are, and fails on a copy doctored the way a careless edit would."""
import copy
from pathlib import Path

import pytest
import yaml

import deploy_rules

ROOT = Path(__file__).resolve().parents[2]
# The API's own defaults, for the variables the overlay leaves unset (check_k8s
# reads them from `clima cli-spec`; these rules only compare against them).
API_DEFAULTS = {"CLIMA_MAX_BODY_BYTES": "4194304", "CLIMA_REQUEST_TIMEOUT": "10s", "CLIMA_HEADER_READ_TIMEOUT": "5s"}


@pytest.fixture(scope="module")
def rendered():
    return deploy_rules.render(ROOT / "k8s/overlays/prod")


@pytest.fixture
def prod(rendered):
    """A copy of the render each test may doctor."""
    return copy.deepcopy(rendered)


@pytest.fixture
def versions():
    return yaml.safe_load((ROOT / "k8s/versions.yaml").read_text())


@pytest.fixture
def architecture():
    return (ROOT / "ARCHITECTURE.md").read_text()


def find(docs, kind, name):
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def container(docs, name):
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def way_in(docs):
    api_env = deploy_rules.container_env(docs)(container(docs, "api"))
    return deploy_rules.way_in(docs, api_env, API_DEFAULTS)


def test_way_in_holds(prod):
    assert way_in(prod) == []


@pytest.mark.parametrize("idle", [None, "75s", "1h"])
def test_way_in_refuses_a_proxy_that_keeps_idle_connections_longer_than_the_api(prod, idle):
    policy = find(prod, "BackendTrafficPolicy", "api")
    if idle is None:
        del policy["spec"]["timeout"]
    else:
        policy["spec"]["timeout"]["http"]["connectionIdleTimeout"] = idle
    assert any("connectionIdleTimeout" in problem for problem in way_in(prod))


def test_way_in_refuses_an_edge_body_limit_other_than_the_api(prod):
    find(prod, "BackendTrafficPolicy", "api")["spec"]["requestBuffer"]["limit"] = "8Mi"
    assert any("requestBuffer.limit" in problem for problem in way_in(prod))


def test_pinned_images_hold(prod, versions):
    assert deploy_rules.pinned_images(prod, versions) == []


def test_pinned_images_refuse_a_release_with_a_known_cve(prod, versions):
    versions["images"]["redis"] = "redis:7.4.5"
    problems = deploy_rules.pinned_images(prod, versions)
    assert any("CVE-2025-49844" in problem for problem in problems), problems


def test_pinned_images_refuse_an_unpinned_image(prod, versions):
    container(prod, "api")["image"] = "nginx:latest"
    assert any("nginx:latest" in problem for problem in deploy_rules.pinned_images(prod, versions))


def test_security_claims_hold(prod, architecture):
    env_of = deploy_rules.container_env(prod)
    assert deploy_rules.security_claims("prod", prod, env_of, architecture) == []


def test_security_claims_refuse_a_table_that_promises_more(prod, architecture):
    env_of = deploy_rules.container_env(prod)
    promised = architecture.replace("| API key on POST /input | off |", "| API key on POST /input | on |")
    assert promised != architecture
    assert deploy_rules.security_claims("prod", prod, env_of, promised) == [
        "ARCHITECTURE.md says 'API key on POST /input' is on in prod; the render has it off"]


def test_security_claims_refuse_a_render_that_drops_a_protection(prod, architecture):
    dashboard = container(prod, "dashboard")
    dashboard["env"] = [item for item in dashboard["env"] if item["name"] != "CLIMA_DASHBOARD_API_KEY"]
    writer = container(prod, "writer-kafka")
    writer["env"] = [item if item["name"] != "CLIMA_KAFKA_OPTIONS" else
                     {"name": item["name"], "value": "security.protocol=PLAINTEXT"} for item in writer["env"]]
    problems = deploy_rules.security_claims("prod", prod, deploy_rules.container_env(prod), architecture)
    assert sorted(problems) == [
        "ARCHITECTURE.md says 'API key on the dashboard' is on in prod; the render has it off",
        "ARCHITECTURE.md says 'passwords to Kafka' is on in prod; the render has it off"]


def test_stores_refuse_an_evicting_policy(prod):
    assert deploy_rules.stores(prod) == []
    args = find(prod, "StatefulSet", "valkey")["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--maxmemory-policy") + 1] = "allkeys-lru"
    assert any("noeviction" in problem for problem in deploy_rules.stores(prod))


def test_namespaces_refuse_an_object_outside_the_overlay_namespace(prod):
    assert deploy_rules.namespaces(prod) == []
    find(prod, "NetworkPolicy", "api-from-ingress")["metadata"]["namespace"] = "default"
    assert deploy_rules.namespaces(prod) == [
        "NetworkPolicy api-from-ingress: namespace 'default', not 'clima'"]
