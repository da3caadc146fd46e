//! Generates the Rust side of `proto/` at build time. `protox` parses the
//! protos in pure Rust, so no `protoc` binary is needed to build clima.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Every proto file of the clima API, relative to `proto/`.
const PROTOS: &[&str] = &["clima/v1/stats.proto", "clima/v1/tweet.proto", "clima/v1/writer.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_root.join(proto).display());
    }

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    // Served by gRPC reflection and used by pbjson for the JSON mapping.
    fs::write(out_dir.join("clima_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        // pbjson-types are prost's well-known types plus serde impls, so the
        // JSON mapping of `TweetRecord.received_at` is the canonical RFC 3339 one.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.build(&[".clima"])?;
    Ok(())
}
