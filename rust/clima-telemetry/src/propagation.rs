use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry_http::{HeaderExtractor, HeaderInjector};

/// Writes `span`'s trace context into `carrier` with the global propagator.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, carrier));
}

/// Makes the trace context found in `carrier` (if any) the parent of `span`.
/// Call before the span is entered or has children.
pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    // Fails only for a span that is disabled or already started: nothing to join then.
    let _ = span.set_parent(parent);
}

/// gRPC request metadata as a trace-context carrier (write side).
pub struct MetadataInjector<'a>(pub &'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(key, value);
        }
    }
}

/// gRPC request metadata as a trace-context carrier (read side).
pub struct MetadataExtractor<'a>(pub &'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// `span`'s trace context as a `TweetRecord.trace_context` map; empty when
/// tracing is off, so records carry nothing then.
pub fn context_map(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    inject(span, &mut map);
    map
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
