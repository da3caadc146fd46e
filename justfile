# Every task of clima in one menu (`just --list`; `cargo install just` if you
# have not got it). Each recipe is one script under ci/, so nothing here
# needs `just`: README's two commands are `ci/demo` and `ci/test`.

# Bring the stack up, send 10,000 tweets and print both stores' counts (README's first command).
demo:
    ci/demo

# Every test against real services, lints included (README's second command, and CI's).
test:
    ci/test

# The logic tests only: no service needed, under a minute once built.
test-fast:
    cargo nextest run --workspace --profile fast

# The tests that talk to Kafka, RabbitMQ, Redis and Valkey (start them with `just infra`).
test-services:
    cargo nextest run --workspace --profile services

# buf, rustfmt, clippy (warnings are errors), shellcheck and ruff: the lints ci/test starts with.
lint:
    ci/lint

# Start the brokers and stores only (idempotent; PIDs in .clima/).
infra:
    ci/infra-up

# Start the whole local stack (brokers, stores, clima services).
up:
    ci/up

# Stop what ci/infra-up and ci/up started, by PID.
down:
    ci/down

# Kill, hang and restart services under load; the counts must stay exact.
faults:
    ci/faults

# The benchmark table of README (and the raw ceilings of `clima bench`).
bench:
    ci/bench

# Hours-long running at a steady rate on the stack as it is.
soak:
    ci/soak

# The measured findings of docs/FINDINGS.md.
experiments:
    ci/experiments

# The OCI images without Docker (umoci), pushed to a local registry and back.
images:
    ci/images

# The manifests of k8s/ against the clima binary and upstream's CRDs and defaults.
check-k8s:
    cargo build --locked -q -p clima
    python3 ci/check_k8s.py target/debug/clima
