//! Against the real Redis and Valkey of the local stack.

use clima_proto::v1::Weather;
use clima_testkit::{record, redis_url, unique_name, valkey_url};

use super::*;

async fn store(url: &str) -> CounterStore {
    CounterStore::connect(url, KeySchema::new(unique_name("store")), Retention::default()).await.unwrap()
}

async fn counts_each_id_once(url: &str) {
    let store = store(url).await;
    let batch = vec![
        record("GT", Weather::Lluvioso),
        record("GT", Weather::Lluvioso),
        record("MX", Weather::Soleado),
        record("gt-is-not-normalised-here", Weather::Nublado),
    ];
    assert_eq!(store.count_batch(&batch).await.unwrap(), 4);
    // A redelivery of part of the batch plus one new record.
    let mut again = batch[..2].to_vec();
    again.push(record("MX", Weather::Nublado));
    assert_eq!(store.count_batch(&again).await.unwrap(), 1);

    let counts = store.read_counts(2).await.unwrap();
    assert_eq!(counts.total, 5);
    assert_eq!(counts.by_country["GT"], 2);
    assert_eq!(counts.by_country["MX"], 2);
    assert_eq!(counts.by_weather["Lluvioso"], 2);
    assert_eq!(counts.by_weather["Nublado"], 2);
    assert_eq!(counts.by_weather["Soleado"], 1);
    assert_eq!(counts.by_country_weather["GT:Lluvioso"], 2);
    assert_eq!(counts.by_country_weather["MX:Nublado"], 1);
    assert_eq!(counts.per_minute.len(), 2);
    assert_eq!(counts.per_minute.iter().map(|(_, n)| n).sum::<u64>(), 5, "{:?}", counts.per_minute);
    assert!(counts.per_minute[0].0 + 1 == counts.per_minute[1].0);
}

#[tokio::test]
async fn redis_counts_each_id_once() {
    counts_each_id_once(&redis_url()).await;
    assert_eq!(store(&redis_url()).await.system(), crate::Store::Redis);
}

#[tokio::test]
async fn valkey_counts_each_id_once() {
    counts_each_id_once(&valkey_url()).await;
    assert_eq!(store(&valkey_url()).await.system(), crate::Store::Valkey);
}

#[tokio::test]
async fn dedupe_markers_expire_and_empty_batches_cost_nothing() {
    let keys = KeySchema::new(unique_name("ttl"));
    let retention = Retention { dedupe_window: Duration::from_secs(60), minutes: Duration::from_secs(120) };
    let store = CounterStore::connect(&redis_url(), keys.clone(), retention).await.unwrap();
    assert_eq!(store.count_batch(&[]).await.unwrap(), 0);
    let one = record("CO", Weather::Soleado);
    assert_eq!(store.count_batch(std::slice::from_ref(&one)).await.unwrap(), 1);

    let mut connection = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let markers = marker_hashes(&mut connection, &keys).await;
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(markers[0].ends_with(&one.id[32..]), "bucketed by the id's last 4 hex digits: {markers:?}");
    let seen_ttl: i64 = connection.ttl(&markers[0]).await.unwrap();
    assert!((61..=121).contains(&seen_ttl), "a generation's markers live two windows: ttl {seen_ttl}");
    let minute_ttl: i64 = connection.ttl(keys.minute(clima_tweet::received_minute(&one))).await.unwrap();
    assert!((61..=120).contains(&minute_ttl), "minute ttl {minute_ttl}");
    assert_eq!(store.read_counts(1).await.unwrap().total, 1);
}

#[tokio::test]
async fn unreachable_store_is_an_error_naming_the_url() {
    let err = CounterStore::connect("redis://127.0.0.1:1", KeySchema::new("x"), Retention::default())
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

fn args(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

#[tokio::test]
async fn a_password_protected_valkey_counts_with_the_password_only() {
    use clima_testkit::{ServerProcess, free_port, valkey_server_binary};
    let port = free_port();
    let port_arg = port.to_string();
    let _valkey = ServerProcess::start(
        &valkey_server_binary(),
        &args(&[
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "s3cret",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
        port,
    );
    let keys = KeySchema::new(unique_name("auth"));
    let good = format!("redis://:s3cret@127.0.0.1:{port}");
    let store = CounterStore::connect(&good, keys.clone(), Retention::default()).await.unwrap();
    assert_eq!(store.count_batch(&[record("GT", Weather::Soleado)]).await.unwrap(), 1);

    let error = CounterStore::connect(&format!("redis://:wrong@127.0.0.1:{port}"), keys.clone(), Retention::default())
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(!error.to_string().contains("wrong"), "errors never show the password: {error}");
    assert!(CounterStore::connect(&format!("redis://127.0.0.1:{port}"), keys, Retention::default()).await.is_err());
}

#[tokio::test]
async fn a_tls_redis_counts_over_rediss_verified_against_our_ca() {
    use clima_testkit::{ServerProcess, TestPki, free_port};

    let pki = TestPki::new();
    pki.issue("server", &["127.0.0.1"], false);
    let path = |name: &str| pki.path(name).to_string_lossy().into_owned();

    let port = free_port();
    let port_arg = port.to_string();
    let _redis = ServerProcess::start(
        "redis-server",
        &args(&[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
        port,
    );
    let keys = KeySchema::new(unique_name("tls"));
    let url = format!("rediss://:s3cret@127.0.0.1:{port}");
    let ca_pem = std::fs::read(path("ca.pem")).unwrap();
    let store = CounterStore::connect_with_ca(&url, keys.clone(), Retention::default(), Some(ca_pem)).await.unwrap();
    assert_eq!(store.count_batch(&[record("MX", Weather::Nublado)]).await.unwrap(), 1);
    assert_eq!(store.read_counts(1).await.unwrap().by_country["MX"], 1);

    // Not trusting our CA (system roots only), or plain text to the TLS port: refused.
    assert!(CounterStore::connect(&url, keys.clone(), Retention::default()).await.is_err());
    let plain = format!("redis://:s3cret@127.0.0.1:{port}");
    assert!(
        tokio::time::timeout(Duration::from_secs(10), CounterStore::connect(&plain, keys, Retention::default()))
            .await
            .map_or(true, |connected| connected.is_err())
    );
}

/// Redis has no rollback: a counter key of the wrong type must fail the batch
/// before any dedupe marker is set, or the retry would skip its tweets.
#[tokio::test]
async fn a_counter_key_of_the_wrong_type_fails_the_batch_with_nothing_written() {
    let keys = KeySchema::new(unique_name("wrongtype"));
    let store = CounterStore::connect(&redis_url(), keys.clone(), Retention::default()).await.unwrap();
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis.set(keys.by_weather(), "not a hash").await.unwrap();

    let batch = vec![record("GT", Weather::Soleado), record("MX", Weather::Nublado)];
    let error = store.count_batch(&batch).await.unwrap_err();
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    assert_eq!(marker_hashes(&mut redis, &keys).await, Vec::<String>::new(), "markers set by a batch that failed");
    let total: Option<u64> = redis.get(keys.total()).await.unwrap();
    assert_eq!(total, None, "the total was written by a batch that failed");

    // Once the key is repaired, the retry counts both tweets.
    let _: () = redis.del(keys.by_weather()).await.unwrap();
    assert_eq!(store.count_batch(&batch).await.unwrap(), 2);
}

/// The dedupe marker hashes under `keys`' prefix.
async fn marker_hashes(connection: &mut redis::aio::MultiplexedConnection, keys: &KeySchema) -> Vec<String> {
    let pattern = keys.seen(0, "").replace(":0:", ":*");
    connection.keys(pattern).await.unwrap()
}

/// A RabbitMQ message counted and then redelivered (the consumer died before
/// its ack) counts nothing, however late it comes: long after the tweets'
/// dedupe markers are gone, the unacked-message journal still knows it.
#[tokio::test]
async fn a_redelivered_message_counts_nothing_however_late() {
    let keys = KeySchema::new(unique_name("journal"));
    let retention = Retention { dedupe_window: Duration::from_secs(1), ..Retention::default() };
    let store = CounterStore::connect(&valkey_url(), keys.clone(), retention).await.unwrap();
    let batch = vec![record("GT", Weather::Soleado), record("MX", Weather::Nublado), record("CO", Weather::Lluvioso)];
    let delivered =
        [Delivered { message_id: Some("message-1".into()), records: 2 }, Delivered { message_id: None, records: 1 }];
    assert_eq!(store.count_delivered(&batch, &delivered).await.unwrap(), 3);
    let counted_at = clima_testkit::store_clock(&valkey_url()).await;
    clima_testkit::until_store_clock_passes(&valkey_url(), counted_at, Duration::from_millis(2500)).await;

    // The redelivery, after two dedupe windows: the message with an id is
    // skipped whole; the one without (an old publisher) is counted again.
    assert_eq!(store.count_delivered(&batch, &delivered).await.unwrap(), 1);
    // Acked at last: its journal entry goes.
    store.forget_acked(&delivered).await.unwrap();
    let mut connection = redis::Client::open(valkey_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let kept: bool = connection.exists(keys.counted_message("message-1")).await.unwrap();
    assert!(!kept, "the journal entry of an acked message was not dropped");
    assert_eq!(store.read_counts(1).await.unwrap().by_country["GT"], 1);
}

/// A client's retry of the same tweets within the dedupe window counts once,
/// whichever generation of markers holds the first attempt.
#[tokio::test]
async fn a_retry_within_the_window_counts_once_across_generations() {
    let retention = Retention { dedupe_window: Duration::from_secs(2), ..Retention::default() };
    let store = CounterStore::connect(&redis_url(), KeySchema::new(unique_name("window")), retention).await.unwrap();
    let batch: Vec<_> = (0..200).map(|_| record("PE", Weather::Soleado)).collect();
    assert_eq!(store.count_batch(&batch).await.unwrap(), 200);
    // Into the next generation (generations are the store's seconds / 2), at
    // most one window (2 s) after the first count.
    let counted_at = clima_testkit::store_clock(&redis_url()).await;
    let next_generation = ((counted_at / 2.0).floor() + 1.0) * 2.0 + 0.05;
    clima_testkit::until_store_clock_passes(
        &redis_url(),
        counted_at,
        Duration::from_secs_f64(next_generation - counted_at),
    )
    .await;
    assert_eq!(store.count_batch(&batch).await.unwrap(), 0);
}

/// A counter holding something that is not an integer (another tenant's
/// write, a hand edit) fails the batch before any dedupe marker is set: once
/// it is repaired, the retry counts every tweet.
#[tokio::test]
async fn a_counter_that_is_not_an_integer_fails_the_batch_with_nothing_written() {
    let keys = KeySchema::new(unique_name("notanint"));
    let store = CounterStore::connect(&valkey_url(), keys.clone(), Retention::default()).await.unwrap();
    let mut valkey = redis::Client::open(valkey_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let batch = vec![record("GT", Weather::Soleado), record("MX", Weather::Nublado)];

    // What Redis's INCRBY refuses: a word, a leading zero, a minus zero, 19 digits.
    let cases = [
        (keys.total(), None, "lots"),
        (keys.by_country(), Some("MX"), "lots"),
        (keys.total(), None, "007"),
        (keys.by_country(), Some("MX"), "-0"),
        (keys.total(), None, "1000000000000000000"),
    ];
    for (key, field, value) in cases {
        match field {
            Some(field) => valkey.hset::<_, _, _, ()>(&key, field, value).await.unwrap(),
            None => valkey.set::<_, _, ()>(&key, value).await.unwrap(),
        }
        let error = store.count_batch(&batch).await.unwrap_err();
        assert_eq!(marker_hashes(&mut valkey, &keys).await, Vec::<String>::new(), "markers without counts");
        assert!(error.to_string().contains("NOTANINTEGER"), "{error}");
        let _: () = valkey.del(&key).await.unwrap();
    }
    assert_eq!(store.count_batch(&batch).await.unwrap(), 2, "the retry counts what the failures did not");
    assert_eq!(store.read_counts(1).await.unwrap().total, 2);
}

/// A store that may evict (any `maxmemory-policy` but `noeviction`) is
/// refused with the setting named, and counts nothing, whatever `maxmemory`
/// is: a later `CONFIG SET maxmemory` would start evicting at once.
#[tokio::test]
async fn a_store_that_may_evict_is_refused_and_counts_nothing() {
    let (_valkey, url) = clima_testkit::valkey_with_policy("allkeys-lru");
    let keys = KeySchema::new(unique_name("evicting"));
    let store = CounterStore::connect(&url, keys.clone(), Retention::default()).await.unwrap();
    let refused = store.check_never_evicts().await.unwrap_err();
    assert!(matches!(&refused, StoreError::Evicting { policy, .. } if policy == "allkeys-lru"), "{refused}");
    assert!(refused.to_string().contains("noeviction"), "says how to fix it: {refused}");

    let error = store.count_batch(&[record("GT", Weather::Soleado)]).await.unwrap_err();
    assert!(matches!(&error, StoreError::Evicting { policy, .. } if policy == "allkeys-lru"), "{error}");
    let mut admin = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let written: Vec<String> = admin.keys("*").await.unwrap();
    assert_eq!(written, Vec::<String>::new(), "an evicting store got writes");

    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut admin)
        .await
        .unwrap();
    store.check_never_evicts().await.unwrap();
    assert_eq!(store.count_batch(&[record("GT", Weather::Soleado)]).await.unwrap(), 1);
}

fn at(partition: i32, offset: i64, stored_next: Option<i64>) -> LogPosition {
    LogPosition { partition, offset, stored_next, records: 1 }
}

/// A log batch counts only where the store's next offsets are the ones the
/// consumer read from; otherwise nothing is written and the store says where
/// it is (a restore, an emptied store, another consumer).
#[tokio::test]
async fn a_log_batch_read_from_other_positions_than_the_stores_writes_nothing() {
    let keys = KeySchema::new(unique_name("moved"));
    let store = CounterStore::connect(&redis_url(), keys.clone(), Retention::default()).await.unwrap();
    let topic = "t";
    let first = [record("GT", Weather::Soleado), record("MX", Weather::Nublado)];
    let counted = store.count_log_batch(topic, &first, &[at(0, 0, None), at(1, 0, None)]).await.unwrap();
    assert_eq!(counted, LogCount::Counted(2));
    assert_eq!(store.log_positions(topic).await.unwrap(), BTreeMap::from([(0, 1), (1, 1)]));
    let last_ids = store.log_last_ids(topic).await.unwrap();
    assert_eq!(last_ids[&0], (0, uuid::Uuid::parse_str(&first[0].id).unwrap().as_bytes().to_vec()));

    // Read as if the store had none (it was emptied, say): refused, with the store's offsets.
    let second = [record("CO", Weather::Lluvioso), record("PE", Weather::Soleado)];
    let moved = store.count_log_batch(topic, &second, &[at(0, 1, Some(1)), at(1, 1, None)]).await.unwrap();
    assert_eq!(moved, LogCount::Moved(BTreeMap::from([(1, Some(1))])));
    assert_eq!(store.read_counts(1).await.unwrap().total, 2, "a refused batch counted");
    assert_eq!(store.log_positions(topic).await.unwrap(), BTreeMap::from([(0, 1), (1, 1)]));

    let counted = store.count_log_batch(topic, &second, &[at(0, 1, Some(1)), at(1, 1, Some(1))]).await.unwrap();
    assert_eq!(counted, LogCount::Counted(2));

    // A replaced log's position goes only if nothing was counted there since.
    assert!(!store.forget_log_position(topic, 0, 1).await.unwrap(), "dropped a position that moved on");
    assert!(store.forget_log_position(topic, 0, 2).await.unwrap());
    assert_eq!(store.log_positions(topic).await.unwrap(), BTreeMap::from([(1, 2)]));
    assert!(!store.log_last_ids(topic).await.unwrap().contains_key(&0));
}
