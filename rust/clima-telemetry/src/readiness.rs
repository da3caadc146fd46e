//! Whether a service can do its work right now, as `GET /readyz` on the admin
//! port reports it. Kubernetes' built-in gRPC probe can neither speak TLS nor
//! present a client certificate, so a writer serving mutual TLS is probed
//! here instead, over plain HTTP on a port that carries no data.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// A shared ready flag: the service sets it, the admin server reads it.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready from the start: services that need nothing to become ready.
    pub fn ready() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Not ready until [`Readiness::set`] says so.
    pub fn not_ready() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// Says whether the service is ready now.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// What [`Readiness::set`] last said.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
