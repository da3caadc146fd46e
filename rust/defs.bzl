"""clima_crate: the Bazel targets of one clima library crate."""

load("@crates//:defs.bzl", "aliases", "all_crate_deps")
load("@rules_rust//rust:defs.bzl", "rust_library", "rust_test")

def clima_crate(name, deps = [], dev_deps = [], tests = None, extra_deps = [], compile_data = []):
    """A clima library crate under rust/<name>, with its unit tests.

    Args:
        name: the crate's name, e.g. "clima-store".
        deps: the workspace crates it uses, e.g. ["clima-proto"].
        dev_deps: the workspace crates its tests use.
        tests: None (no tests), "unit", or "services" (tests that need Kafka,
            RabbitMQ, Redis and Valkey: tagged requires-services).
        extra_deps: further labels, e.g. a build script.
        compile_data: files the sources include at compile time.
    """
    crate_name = name.replace("-", "_")
    rust_library(
        name = name,
        srcs = native.glob(["src/**/*.rs"]),
        aliases = aliases(),
        compile_data = compile_data,
        crate_name = crate_name,
        edition = "2024",
        proc_macro_deps = all_crate_deps(proc_macro = True),
        visibility = ["//visibility:public"],
        deps = all_crate_deps(normal = True) + extra_deps + ["//rust/" + dep for dep in deps],
    )
    if tests:
        rust_test(
            name = crate_name + "_test",
            crate = ":" + name,
            tags = ["requires-services"] if tests == "services" else [],
            deps = all_crate_deps(normal_dev = True) + ["//rust/" + dep for dep in dev_deps],
        )
