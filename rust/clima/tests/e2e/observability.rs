use std::time::Duration;

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};

use crate::{
    helpers::post_json,
    processes::{Collector, ProcessStack, free_port, metric},
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn string_attribute(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key)? {
        Value::StringValue(value) => Some(value.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn one_trace_follows_a_tweet_from_the_http_request_into_redis_and_valkey() {
    let stack = ProcessStack::spawn().await;
    let response = reqwest::Client::new()
        .post(format!("{}/input", stack.api))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .body(r#"{"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    stack.wait_counted(1).await;

    let trace_id: Vec<u8> =
        (0..TRACE_ID.len()).step_by(2).map(|i| u8::from_str_radix(&TRACE_ID[i..i + 2], 16).unwrap()).collect();
    let is_store_write = |span: &Span, system: &str| string_attribute(span, "db.system").as_deref() == Some(system);
    let complete = clima_testkit::eventually(Duration::from_secs(30), || async {
        let spans = stack.collector.spans_of_trace(&trace_id);
        ["redis", "valkey"]
            .iter()
            .all(|system| spans.iter().any(|(_, span)| is_store_write(span, system)))
            .then_some(spans)
    })
    .await;
    let spans = complete.unwrap_or_else(|| {
        panic!("trace incomplete after 30 s: {:#?}", names(&stack.collector.spans_of_trace(&trace_id)))
    });

    // Finds the one span of `service` with that kind and name.
    let find = |service: &str, kind: SpanKind, name: &str| -> &Span {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|(from, span)| from == service && span.kind == kind as i32 && span.name == name)
            .map(|(_, span)| span)
            .collect();
        assert_eq!(found.len(), 1, "{service} {kind:?} {name:?} in {:#?}", names(&spans));
        found[0]
    };
    let assert_child = |child: &Span, parent: &Span| {
        assert_eq!(
            hex(&child.parent_span_id),
            hex(&parent.span_id),
            "{} must be a child of {}",
            child.name,
            parent.name
        );
    };

    let http = find("clima-api", SpanKind::Server, "POST /input");
    assert_eq!(hex(&http.parent_span_id), CALLER_SPAN_ID, "the API joins the caller's trace");
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|(from, span)| from == "clima-api" && span.kind == SpanKind::Client as i32)
        .map(|(_, span)| span)
        .collect();
    assert_eq!(clients.len(), 2, "one gRPC client span per writer");
    for client in &clients {
        assert_eq!(client.name, "clima.v1.WriterService/Publish");
        assert_child(client, http);
    }

    for (broker, destination_system, store) in [("kafka", "kafka", "redis"), ("rabbitmq", "rabbitmq", "valkey")] {
        let server = find(&format!("clima-writer-{broker}"), SpanKind::Server, "clima.v1.WriterService/Publish");
        let client_index = clients.iter().position(|client| client.span_id == server.parent_span_id);
        let client =
            clients.remove(client_index.unwrap_or_else(|| panic!("{broker} writer span has no client parent")));
        assert_child(server, client);
        assert_eq!(string_attribute(server, "rpc.system").as_deref(), Some("grpc"));

        let producer_span = |operation: &str| -> &Span {
            spans
                .iter()
                .find(|(from, span)| {
                    from == &format!("clima-writer-{broker}")
                        && span.kind == SpanKind::Producer as i32
                        && string_attribute(span, "messaging.operation.type").as_deref() == Some(operation)
                })
                .map(|(_, span)| span)
                .unwrap_or_else(|| panic!("no {broker} {operation} span in {:#?}", names(&spans)))
        };
        // The broker message (a batch) is published under the gRPC call ...
        let publish = producer_span("publish");
        assert!(publish.name.starts_with("publish "), "{}", publish.name);
        assert_eq!(string_attribute(publish, "messaging.system").as_deref(), Some(destination_system));
        assert_child(publish, server);
        // ... and the tweet in it gets its creation span under its own request,
        // which the publish links to (OpenTelemetry batch messaging).
        let create = producer_span("create");
        assert!(create.name.starts_with("create "), "{}", create.name);
        assert_child(create, http);
        assert!(
            publish.links.iter().any(|link| link.span_id == create.span_id && link.trace_id == trace_id),
            "the publish span links to the tweet's creation span"
        );

        let process = spans
            .iter()
            .find(|(from, span)| from == &format!("clima-consumer-{broker}") && span.kind == SpanKind::Consumer as i32)
            .map(|(_, span)| span)
            .unwrap_or_else(|| panic!("no {broker} process span"));
        assert_eq!(string_attribute(process, "messaging.operation.type").as_deref(), Some("process"));
        assert_child(process, create);
        assert!(
            process.links.iter().any(|link| link.span_id == publish.span_id),
            "the process span links to the publish span of the message that carried the tweet"
        );

        let write = spans.iter().find(|(_, span)| is_store_write(span, store)).map(|(_, span)| span).unwrap();
        assert_eq!(write.kind, SpanKind::Client as i32);
        assert_child(write, process);
    }
}

fn names(spans: &[(String, Span)]) -> Vec<String> {
    spans.iter().map(|(service, span)| format!("{service}: {} ({})", span.name, span.kind)).collect()
}

#[tokio::test]
async fn every_service_exposes_metrics_that_move_by_the_amount_sent() {
    let stack = ProcessStack::spawn().await;
    let client = reqwest::Client::new();
    let url = format!("{}/input", stack.api);
    let tweet = r#"{"description":"Sol","country":"MX","weather":"Soleado"}"#;
    for _ in 0..3 {
        assert_eq!(post_json(&client, &url, tweet).await.0, 202);
    }
    let array = format!("[{}]", [tweet; 7].join(","));
    assert_eq!(post_json(&client, &url, &array).await.0, 202);
    assert_eq!(post_json(&client, &url, r#"{"description":"x","country":"ZZ","weather":"Soleado"}"#).await.0, 422);
    stack.wait_counted(10).await;

    let api = stack.metrics("clima-api").await;
    assert_eq!(metric(&api, "clima_tweets_accepted_total", &[]), 10.0, "{api}");
    assert_eq!(metric(&api, "clima_input_errors_total", &[("error", "invalid_tweet")]), 1.0);
    assert_eq!(metric(&api, "http_server_requests_total", &[("route", "/input"), ("status", "202")]), 4.0);
    assert_eq!(metric(&api, "http_server_request_duration_seconds_count", &[("route", "/input")]), 5.0);
    let published = [("method", "Publish"), ("code", "Ok")];
    assert_eq!(metric(&api, "grpc_client_requests_total", &published), 8.0, "4 requests × 2 writers");

    for broker in ["kafka", "rabbitmq"] {
        let writer = stack.metrics(&format!("clima-writer-{broker}")).await;
        assert_eq!(metric(&writer, "clima_published_tweets_total", &[("broker", broker)]), 10.0, "{writer}");
        assert_eq!(metric(&writer, "grpc_server_requests_total", &published), 4.0);
        assert_eq!(metric(&writer, "clima_publish_duration_seconds_count", &[("broker", broker)]), 4.0);
    }
    for (source, store) in [("kafka", "redis"), ("rabbitmq", "valkey")] {
        // A consumer records its metrics after the store's write the counts
        // came from: wait until it has recorded the last batch.
        let service = format!("clima-consumer-{source}");
        let recorded = clima_testkit::eventually(Duration::from_secs(10), || async {
            let consumer = stack.metrics(&service).await;
            let counted = metric(&consumer, "clima_counted_tweets_total", &[("source", source), ("store", store)]);
            (counted >= 10.0).then_some(consumer)
        });
        let consumer = match recorded.await {
            Some(consumer) => consumer,
            None => stack.metrics(&service).await,
        };
        // Four requests one after another: four writer calls, so four broker messages.
        assert_eq!(metric(&consumer, "clima_consumed_messages_total", &[("source", source)]), 4.0, "{consumer}");
        assert_eq!(metric(&consumer, "clima_consumed_tweets_total", &[("source", source)]), 10.0, "{consumer}");
        assert_eq!(metric(&consumer, "clima_counted_tweets_total", &[("source", source), ("store", store)]), 10.0);
        assert!(metric(&consumer, "clima_store_write_duration_seconds_count", &[("store", store)]) >= 1.0);
    }
}

/// A client's `traceparent` ending in `-01` must not force tracing at the
/// ingress: with `parentbased_traceidratio` at 0, only an API started with
/// --trust-client-sampling records the client's request.
#[tokio::test]
async fn a_client_decides_sampling_only_where_it_is_trusted() {
    let (collector, otlp) = Collector::serve().await;
    let mut apis = Vec::new();
    for (service, trust) in [("api-untrusting", false), ("api-trusting", true)] {
        let listen = free_port().await;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_clima"));
        command
            .args(["api", "--listen", &listen.to_string(), "--admin-listen", &free_port().await.to_string()])
            .env_clear()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        if trust {
            command.arg("--trust-client-sampling");
        }
        apis.push((service, format!("http://{listen}"), command.spawn().unwrap()));
    }
    let client = reqwest::Client::new();
    for (_, url, _) in &apis {
        let listening = clima_testkit::eventually(Duration::from_secs(30), || async {
            let response = client.get(format!("{url}/healthz")).send().await.ok()?;
            response.status().is_success().then_some(())
        });
        assert!(listening.await.is_some(), "{url} not listening in 30 s");
        // A 400 needs no writer, and its request span is the one the flag is about.
        let response = client
            .post(format!("{url}/input"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }
    let exported = clima_testkit::eventually(Duration::from_secs(30), || async {
        (!collector.spans_of_service("api-trusting").is_empty()).then_some(())
    });
    assert!(exported.await.is_some(), "the trusting API exported nothing in 30 s");
    // Both exported on the same 100 ms schedule; give the other one ten of them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let trusting = collector.spans_of_service("api-trusting");
    assert!(trusting.iter().all(|span| hex(&span.trace_id) == TRACE_ID), "joined the client's trace");
    let untrusting = collector.spans_of_service("api-untrusting");
    assert!(untrusting.is_empty(), "the client forced sampling: {:?}", names_of(&untrusting));
}

fn names_of(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|span| span.name.as_str()).collect()
}

/// The admin port's /readyz follows the writer's broker: Kubernetes probes it
/// there when the gRPC port speaks mutual TLS, which its gRPC probe cannot.
#[tokio::test]
async fn a_writer_is_ready_on_its_admin_port_only_while_its_broker_is_reachable() {
    let closed = free_port().await;
    let client = reqwest::Client::new();
    let mut writers = Vec::new();
    for amqp_url in [clima_testkit::amqp_url(), format!("amqp://guest:guest@{closed}/%2f")] {
        let admin = free_port().await;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_clima"))
            .args(["writer", "rabbitmq", "--health-interval", "200ms"])
            .args(["--listen", &free_port().await.to_string(), "--admin-listen", &admin.to_string()])
            .env_clear()
            .env("CLIMA_AMQP_URL", amqp_url)
            .env("CLIMA_RABBITMQ_EXCHANGE", clima_testkit::unique_name("readyz"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        writers.push((admin, child));
    }
    let status = |admin, path: &'static str| {
        let client = client.clone();
        async move { client.get(format!("http://{admin}{path}")).send().await.ok().map(|r| r.status().as_u16()) }
    };
    let (reachable, unreachable) = (writers[0].0, writers[1].0);
    let ready = clima_testkit::eventually(Duration::from_secs(30), || async {
        (status(reachable, "/readyz").await == Some(200)).then_some(())
    });
    assert!(ready.await.is_some(), "the writer with a broker never became ready");
    let live = clima_testkit::eventually(Duration::from_secs(30), || async {
        (status(unreachable, "/healthz").await == Some(200)).then_some(())
    });
    assert!(live.await.is_some(), "the writer without a broker is not even live");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(unreachable, "/readyz").await, Some(503), "ready without its broker");
}
