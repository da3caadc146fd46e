//! Whether a service can do its work right now, as `GET /readyz` on the admin
//! port reports it. Kubernetes' built-in gRPC probe can neither speak TLS nor
//! present a client certificate, so a writer serving mutual TLS is probed
//! here instead, over plain HTTP on a port that carries no data.

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

/// One thing a service needs to be ready. Each is set apart, so that one check
/// saying "fine" never hides another that says not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Connected to what it serves or reads (a broker), and its last write went through.
    Connected,
    /// Its store never evicts (a consumer; `maxmemory-policy noeviction`).
    StoreKeepsData,
    /// It moves: a consumer is not stalled behind messages it does not receive.
    Flowing,
}

impl Condition {
    const ALL: [Self; 3] = [Self::Connected, Self::StoreKeepsData, Self::Flowing];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The condition's name, as `/readyz` lists what is missing.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::StoreKeepsData => "store_keeps_data",
            Self::Flowing => "flowing",
        }
    }
}

/// A shared set of unmet [`Condition`]s: the service sets them, the admin
/// server reads them. Ready when none is unmet.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Ready from the start: services that need nothing to become ready.
    pub fn ready() -> Self {
        Self(Arc::new(AtomicU8::new(0)))
    }

    /// Not ready until [`Readiness::set`] says so.
    pub fn not_ready() -> Self {
        Self(Arc::new(AtomicU8::new(Condition::Connected.bit())))
    }

    /// Says whether the service is connected ([`Condition::Connected`]).
    pub fn set(&self, ready: bool) {
        self.set_condition(Condition::Connected, ready);
    }

    /// Says whether `condition` is met now.
    pub fn set_condition(&self, condition: Condition, met: bool) {
        if met {
            self.0.fetch_and(!condition.bit(), Ordering::Relaxed);
        } else {
            self.0.fetch_or(condition.bit(), Ordering::Relaxed);
        }
    }

    /// Whether every condition is met.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// The conditions not met now.
    pub fn unmet(&self) -> Vec<Condition> {
        let unmet = self.0.load(Ordering::Relaxed);
        Condition::ALL.into_iter().filter(|condition| unmet & condition.bit() != 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Condition, Readiness};

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let readiness = Readiness::not_ready();
        assert_eq!(readiness.unmet(), [Condition::Connected]);
        readiness.set(true);
        assert!(readiness.is_ready());
        readiness.set_condition(Condition::StoreKeepsData, false);
        readiness.set_condition(Condition::Flowing, false);
        readiness.set(true);
        assert!(!readiness.is_ready(), "a connected consumer whose store evicts is not ready");
        readiness.set_condition(Condition::StoreKeepsData, true);
        assert_eq!(readiness.unmet(), [Condition::Flowing]);
        readiness.set_condition(Condition::Flowing, true);
        assert!(readiness.is_ready());
    }
}
