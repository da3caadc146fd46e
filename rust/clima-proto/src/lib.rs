//! Rust types and gRPC stubs generated from `proto/` at build time.
//!
//! Nothing here is written by hand: change the `.proto` files instead. Every
//! message also has a JSON mapping (pbjson) that follows the proto3 JSON rules
//! and rejects unknown fields.

pub mod v1 {
    tonic::include_proto!("clima.v1");
    include!(concat!(env!("OUT_DIR"), "/clima.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of every clima proto (and its imports),
/// for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/clima_descriptor.bin"));
