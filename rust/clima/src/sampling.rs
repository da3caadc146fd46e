//! Who decides whether a trace is recorded.
//!
//! The standard parent-based samplers follow a remote parent's `sampled`
//! flag. Inside clima that is right: the API decided, and writers and
//! consumers follow. At the ingress it hands the decision to any client: a
//! `traceparent` ending in `-01` would force 100 % sampling whatever
//! `OTEL_TRACES_SAMPLER_ARG` says. [`IngressSampler`] ignores a remote
//! parent's flag unless the operator trusts its callers
//! (`clima api --trust-client-sampling`); the span still joins the caller's
//! trace, only the decision is clima's own. Nor may the caller steer it
//! through its trace id: the ratio sampler compares the id's low 64 bits with
//! the ratio, so ids whose low half is zero would always be sampled. For an
//! untrusted parent the configured sampler decides on a random id instead.

use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceContextExt, TraceId},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SamplingResult, ShouldSample};

/// Wraps the sampler configured by `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone)]
pub(crate) struct IngressSampler {
    configured: Box<dyn ShouldSample>,
    trust_remote_parent: bool,
}

impl IngressSampler {
    pub(crate) fn new(configured: Box<dyn ShouldSample>, trust_remote_parent: bool) -> Self {
        Self { configured, trust_remote_parent }
    }
}

impl ShouldSample for IngressSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let remote_parent = parent_context
            .map(|context| context.span().span_context().clone())
            .filter(|parent| parent.is_valid() && parent.is_remote());
        match remote_parent {
            Some(parent) if !self.trust_remote_parent => {
                // Decide as for a new trace, on an id of our own drawing (the
                // span keeps the caller's), and keep the caller's tracestate,
                // which the spec says to pass on.
                let drawn = RandomIdGenerator::default().new_trace_id();
                let mut result = self.configured.should_sample(None, drawn, name, span_kind, attributes, links);
                result.trace_state = parent.trace_state().clone();
                result
            }
            _ => self.configured.should_sample(parent_context, trace_id, name, span_kind, attributes, links),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision};

    use super::*;

    fn decide(sampler: &IngressSampler, parent: Option<SpanContext>) -> SamplingDecision {
        let context = parent.map(|parent| Context::new().with_remote_span_context(parent));
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        sampler.should_sample(context.as_ref(), trace_id, "POST /input", &SpanKind::Server, &[], &[]).decision
    }

    fn remote(sampled: bool) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            flags,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        )
    }

    /// `parentbased_traceidratio` at 0: only a parent's flag could sample.
    fn never_on_its_own(trust_remote_parent: bool) -> IngressSampler {
        let configured = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0)));
        IngressSampler::new(Box::new(configured), trust_remote_parent)
    }

    #[test]
    fn an_untrusted_caller_cannot_force_sampling() {
        let sampler = never_on_its_own(false);
        assert_eq!(decide(&sampler, Some(remote(true))), SamplingDecision::Drop);
        assert_eq!(decide(&sampler, None), SamplingDecision::Drop);
    }

    #[test]
    fn a_trusted_caller_decides() {
        let sampler = never_on_its_own(true);
        assert_eq!(decide(&sampler, Some(remote(true))), SamplingDecision::RecordAndSample);
        assert_eq!(decide(&sampler, Some(remote(false))), SamplingDecision::Drop);
    }

    /// The ratio sampler samples every id whose low 64 bits are below
    /// ratio × 2^64: a caller that picks ids with a zero low half would be
    /// traced every time, at any ratio.
    #[test]
    fn an_untrusted_caller_cannot_steer_sampling_with_its_trace_id() {
        let configured = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01)));
        let untrusted = IngressSampler::new(Box::new(configured), false);
        let chosen = TraceId::from_hex("4bf92f3577b34da60000000000000000").unwrap();
        let parent = SpanContext::new(
            chosen,
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(parent);
        let sampled = (0..1000)
            .filter(|_| {
                let result =
                    untrusted.should_sample(Some(&context), chosen, "POST /input", &SpanKind::Server, &[], &[]);
                result.decision == SamplingDecision::RecordAndSample
            })
            .count();
        // Binomial(1000, 0.01): mean 10, standard deviation 3.1 (none at all: 4 in 100,000 runs).
        assert!((1..=40).contains(&sampled), "{sampled} of 1000 requests with a chosen trace id were sampled at 1 %");
    }

    #[test]
    fn an_untrusted_caller_cannot_suppress_sampling_either_and_keeps_its_tracestate() {
        let sampler = IngressSampler::new(Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))), false);
        let context = Context::new().with_remote_span_context(remote(false));
        let trace_id = remote(false).trace_id();
        let result = sampler.should_sample(Some(&context), trace_id, "POST /input", &SpanKind::Server, &[], &[]);
        assert_eq!(result.decision, SamplingDecision::RecordAndSample);
        assert_eq!(result.trace_state.get("vendor"), Some("value"));
    }
}
