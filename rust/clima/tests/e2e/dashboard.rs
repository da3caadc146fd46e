use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clima_dashboard::{StoreReader, Stores};
use clima_proto::v1::{GetStatsRequest, WatchStatsRequest, stats_service_client::StatsServiceClient};
use clima_store::{Counts, KeySchema};
use clima_testkit::{redis_url, valkey_url};
use serde_json::json;
use tokio::net::TcpListener;

use crate::helpers::TestStack;

/// Sends a known mix through the pipeline, then serves a dashboard over the
/// same key prefix; returns its address.
async fn stack_with_traffic_and_dashboard() -> (TestStack, String) {
    let stack = TestStack::spawn().await;
    let mix = [("GT", "Lluvioso"), ("GT", "Soleado"), ("MX", "Nublado"), ("US", "Soleado"), ("ES", "Lluvioso")];
    let tweets: Vec<_> = (0..40)
        .map(|i| {
            let (country, weather) = mix[i % mix.len()];
            json!({"description": format!("reporte {i}"), "country": country, "weather": weather})
        })
        .collect();
    assert_eq!(stack.post_input(&json!(tweets).to_string()).await.0, 202);
    assert_eq!(stack.post_input(r#"{"description":"x","country":"BR","weather":"nubloso"}"#).await.0, 202);
    let (redis, valkey) = stack.counted(41).await;
    assert_eq!((redis.total, valkey.total), (41, 41));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let keys = KeySchema::new(stack.name.clone());
    let stores = Stores::new(StoreReader::new(redis_url(), keys.clone()), StoreReader::new(valkey_url(), keys));
    tokio::spawn(clima_dashboard::serve(listener, stores, clima_dashboard::Access::default(), std::future::pending()));
    (stack, format!("{address}"))
}

/// Where screenshots go: `CLIMA_ARTIFACTS_DIR` (ci/test sets `.clima/artifacts`).
fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("CLIMA_ARTIFACTS_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every number a store holds, named as the page names them.
fn expected_stats(store: &str, counts: &Counts) -> BTreeMap<String, u64> {
    let mut stats = BTreeMap::from([(format!("{store}.total"), counts.total)]);
    for (section, map) in [
        ("country", &counts.by_country),
        ("weather", &counts.by_weather),
        ("country_weather", &counts.by_country_weather),
    ] {
        stats.extend(map.iter().map(|(key, count)| (format!("{store}.{section}.{key}"), *count)));
    }
    stats
}

#[tokio::test]
async fn headless_chromium_shows_exactly_the_counts_in_the_stores() {
    let (stack, address) = stack_with_traffic_and_dashboard().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ci/browser/dashboard-snapshot.mjs");
    let screenshot = artifacts_dir().join("dashboard.png");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .arg(format!("http://{address}/"))
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs (ci/test installs ci/browser's packages and Chromium)");
    assert!(output.status.success(), "browser check failed: {}", String::from_utf8_lossy(&output.stderr));
    let shown: BTreeMap<String, f64> = serde_json::from_slice(&output.stdout).unwrap();

    let mut expected = expected_stats("redis", &stack.redis.read_counts(1).await.unwrap());
    expected.extend(expected_stats("valkey", &stack.valkey.read_counts(1).await.unwrap()));
    // The page lists every weather even at zero; the stores only hold what was counted.
    let shown: BTreeMap<String, u64> =
        shown.into_iter().filter(|(_, value)| *value > 0.0).map(|(key, value)| (key, value as u64)).collect();
    assert_eq!(shown, expected);
    assert_eq!(shown["redis.country_weather.BR:Nublado"], 1);

    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot at {}", screenshot.display());
}

#[tokio::test]
async fn stats_service_and_event_stream_serve_the_same_numbers() {
    let (stack, address) = stack_with_traffic_and_dashboard().await;
    let redis = stack.redis.read_counts(1).await.unwrap();

    let mut client = StatsServiceClient::connect(format!("http://{address}")).await.unwrap();
    let snapshot =
        client.get_stats(GetStatsRequest { recent_minutes: 3 }).await.unwrap().into_inner().snapshot.unwrap();
    let from_redis = snapshot.redis.unwrap();
    assert!(from_redis.reachable);
    assert_eq!(from_redis.system, "redis");
    assert_eq!(from_redis.total, redis.total);
    assert_eq!(from_redis.by_country.into_iter().collect::<BTreeMap<_, _>>(), redis.by_country);
    assert_eq!(from_redis.per_minute.len(), 3);
    assert_eq!(snapshot.valkey.unwrap().system, "valkey");

    // The watch sees tweets sent after it started.
    let mut watch =
        client.watch_stats(WatchStatsRequest { recent_minutes: 1, interval_ms: 200 }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(first.valkey.unwrap().total, 41);
    assert_eq!(stack.post_input(r#"{"description":"x","country":"CL","weather":"Soleado"}"#).await.0, 202);
    let shown = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let snapshot = watch.message().await.unwrap().unwrap().snapshot.unwrap();
            if snapshot.valkey.unwrap().total == 42 && snapshot.redis.unwrap().total == 42 {
                break;
            }
        }
    })
    .await;
    assert!(shown.is_ok(), "the watch never showed the new tweet in 30 s");

    // The page's feed: the same message as proto3 JSON, as server-sent events.
    let mut events = reqwest::get(format!("http://{address}/api/stats/stream?interval_ms=200")).await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let chunk = String::from_utf8(events.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(chunk.starts_with("event: stats\ndata: {\"snapshot\":"), "{chunk}");
    assert!(chunk.contains("\"total\":\"42\""), "{chunk}");
}
