use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry_http::{HeaderExtractor, HeaderInjector};

/// Writes `span`'s trace context into `carrier` with the global propagator.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    inject_context(&span.context(), carrier);
}

fn inject_context(context: &opentelemetry::Context, carrier: &mut dyn Injector) {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(context, carrier));
}

/// Makes the trace context found in `carrier` (if any) the parent of `span`.
/// Call before the span is entered or has children.
pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    // Fails only for a span that is disabled or already started: nothing to join then.
    let _ = span.set_parent(parent);
}

/// Most bytes (keys and values) a record's trace context may take.
pub const MAX_RECORD_CONTEXT_BYTES: usize = 512;
/// W3C Trace Context: a `tracestate` member over 128 characters is the first to drop.
const MAX_TRACESTATE_MEMBER: usize = 128;

/// `span`'s trace context as a `TweetRecord.trace_context` map; empty when
/// tracing is off or the trace is not sampled, so records carry nothing then.
/// Bounded by [`record_context`], whatever a client sent.
///
/// Every clima service after the API follows its parent's sampling decision,
/// so an unsampled trace would never be exported downstream; carrying it
/// would only make each writer and consumer build a span per tweet for
/// nothing (the cost of tracing at 1 % sampling, ci/bench).
pub fn context_map(span: &tracing::Span) -> HashMap<String, String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    if !context.span().span_context().is_sampled() {
        return HashMap::new();
    }
    let mut map = HashMap::new();
    inject_context(&context, &mut map);
    record_context(map)
}

/// The part of an injected context that travels in records: `traceparent`,
/// and as much of `tracestate` as fits [`MAX_RECORD_CONTEXT_BYTES`], cut the
/// W3C way (members over 128 characters first, then from the end). Baggage
/// never travels: a client's baggage would be copied into every tweet of its
/// request, and nothing downstream reads it.
pub fn record_context(mut injected: HashMap<String, String>) -> HashMap<String, String> {
    let Some(traceparent) = injected.remove("traceparent") else { return HashMap::new() };
    let mut budget = MAX_RECORD_CONTEXT_BYTES.saturating_sub("traceparent".len() + traceparent.len());
    let mut record = HashMap::from([("traceparent".to_owned(), traceparent)]);
    if let Some(state) = injected.remove("tracestate") {
        budget = budget.saturating_sub("tracestate".len());
        let mut kept = String::new();
        for member in state.split(',').map(str::trim).filter(|m| !m.is_empty() && m.len() <= MAX_TRACESTATE_MEMBER) {
            let needed = member.len() + usize::from(!kept.is_empty());
            if kept.len() + needed > budget {
                break;
            }
            if !kept.is_empty() {
                kept.push(',');
            }
            kept.push_str(member);
        }
        if !kept.is_empty() {
            record.insert("tracestate".to_owned(), kept);
        }
    }
    record
}

/// Links `span` to `other` (an OpenTelemetry span link): how a span that serves
/// many traces at once, such as a batch, points at each of them.
pub fn add_link(span: &tracing::Span, other: &tracing::Span) {
    link_context(span, &other.context());
}

/// Links `span` to the trace context found in `carrier`, if any.
pub fn add_link_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let linked = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    link_context(span, &linked);
}

fn link_context(span: &tracing::Span, context: &opentelemetry::Context) {
    use opentelemetry::trace::TraceContextExt;
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(map: &HashMap<String, String>) -> usize {
        map.iter().map(|(key, value)| key.len() + value.len()).sum()
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_record_carries_traceparent_and_a_bounded_tracestate_and_no_baggage() {
        let huge_state: Vec<String> = (0..1000).map(|i| format!("vendor{i}=value{i}")).collect();
        let injected = HashMap::from([
            ("traceparent".to_owned(), TRACEPARENT.to_owned()),
            ("tracestate".to_owned(), format!("long={},{}", "x".repeat(200), huge_state.join(","))),
            ("baggage".to_owned(), "user=".to_owned() + &"y".repeat(7400)),
        ]);
        let record = record_context(injected);
        assert_eq!(record["traceparent"], TRACEPARENT);
        assert!(!record.contains_key("baggage"));
        assert!(size(&record) <= MAX_RECORD_CONTEXT_BYTES, "{} bytes", size(&record));
        let state = &record["tracestate"];
        assert!(state.starts_with("vendor0=value0,vendor1=value1,"), "the over-long member went first: {state}");
        assert!(state.split(',').all(|member| member.starts_with("vendor")), "{state}");
    }

    /// A span of each sampling decision, under a tracer that samples by `sampled`.
    fn context_of_a_span(sampled: bool) -> HashMap<String, String> {
        use opentelemetry::trace::TracerProvider;
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
        use tracing_subscriber::prelude::*;
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let sampler = if sampled { Sampler::AlwaysOn } else { Sampler::AlwaysOff };
        let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || context_map(&tracing::info_span!("http.server")))
    }

    #[test]
    fn only_a_sampled_trace_travels_in_records() {
        let sampled = context_of_a_span(true);
        assert!(sampled["traceparent"].ends_with("-01"), "{sampled:?}");
        assert_eq!(context_of_a_span(false), HashMap::new(), "an unsampled trace makes no spans downstream");
    }

    #[test]
    fn a_small_context_is_kept_whole_and_no_traceparent_means_nothing() {
        let injected = HashMap::from([
            ("traceparent".to_owned(), TRACEPARENT.to_owned()),
            ("tracestate".to_owned(), "a=1,b=2".to_owned()),
        ]);
        assert_eq!(record_context(injected.clone()), injected);
        assert!(record_context(HashMap::from([("tracestate".to_owned(), "a=1".to_owned())])).is_empty());
    }
}
