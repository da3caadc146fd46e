//! Against the real brokers and stores of the local stack.

use std::time::Duration;

use clima_broker::{
    kafka::KafkaConfig,
    rabbitmq::{QueueType, RabbitMqConfig},
};
use clima_proto::v1::{TweetRecord, Weather};
use clima_store::{CounterStore, Counts, KeySchema, Retention};
use clima_telemetry::readiness::Readiness;
use clima_testkit::{amqp_url, kafka_brokers, record, redis_url, unique_name, valkey_url};
use clima_writer::{
    Sink,
    sinks::{KafkaSink, RabbitMqSink, kafka::KafkaSinkConfig, rabbitmq::RabbitMqSinkConfig},
};
use tokio_util::sync::CancellationToken;

use crate::{AckTiming, BatchConfig, kafka::KafkaSourceConfig, rabbitmq::RabbitMqSourceConfig};

/// A topic of its own, two partitions, on the local broker.
fn kafka_topic(kind: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: kafka_brokers(),
        topic: unique_name(kind),
        partitions: 2,
        replication_factor: 1,
        options: Vec::new(),
    }
}

async fn fresh_store(url: &str) -> CounterStore {
    clima_testkit::test_log();
    CounterStore::connect(url, KeySchema::new(unique_name("consumer")), Retention::default()).await.unwrap()
}

/// Waits (up to a minute) until the store's total reaches `total`, then
/// returns its counts; the counts as they are if it never does.
async fn counted(store: &CounterStore, total: u64) -> Counts {
    let reached = clima_testkit::eventually(Duration::from_secs(60), || async {
        let counts = store.read_counts(1).await.unwrap();
        (counts.total >= total).then_some(counts)
    })
    .await;
    match reached {
        Some(counts) => counts,
        None => store.read_counts(1).await.unwrap(),
    }
}

/// 5 distinct tweets, one of them published twice (a producer-side retry).
fn tweets_with_a_duplicate() -> Vec<TweetRecord> {
    let mut records = vec![
        record("GT", Weather::Lluvioso),
        record("GT", Weather::Soleado),
        record("MX", Weather::Nublado),
        record("US", Weather::Soleado),
        record("GT", Weather::Lluvioso),
    ];
    records.push(records[0].clone());
    records
}

fn assert_counts(counts: &Counts) {
    assert_eq!(counts.total, 5);
    assert_eq!(counts.by_country["GT"], 3);
    assert_eq!(counts.by_country["MX"], 1);
    assert_eq!(counts.by_country_weather["GT:Lluvioso"], 2);
    assert_eq!(counts.by_weather["Soleado"], 2);
}

/// A Kafka consumer with the default batching, running until `shutdown`.
fn spawn_kafka_consumer(
    broker: &KafkaConfig,
    source: KafkaSourceConfig,
    store: &CounterStore,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), crate::ConsumerError>> {
    let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
    tokio::spawn(async move {
        crate::kafka::run(&broker, &source, &BatchConfig::default(), &store, shutdown, &Readiness::not_ready()).await
    })
}

#[tokio::test]
async fn kafka_to_redis_counts_once_dead_letters_poison_and_commits() {
    let broker = kafka_topic("consumer-topic");
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    sink.publish(&tweets_with_a_duplicate()).await.unwrap();
    publish_raw_kafka(&broker, b"not a protobuf record").await;

    let source = KafkaSourceConfig { group: unique_name("group") };
    let store = fresh_store(&redis_url()).await;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn({
        let (broker, source, store, shutdown) = (broker.clone(), source.clone(), store.clone(), shutdown.clone());
        async move {
            crate::kafka::run(&broker, &source, &BatchConfig::default(), &store, shutdown, &Readiness::not_ready())
                .await
        }
    });
    assert_counts(&counted(&store, 5).await);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    // Same group, fresh store: committed offsets mean only the new tweet is read.
    sink.publish(&[record("CA", Weather::Nublado)]).await.unwrap();
    let second_store = fresh_store(&redis_url()).await;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn({
        let (store, shutdown, broker) = (second_store.clone(), shutdown.clone(), broker.clone());
        async move {
            crate::kafka::run(&broker, &source, &BatchConfig::default(), &store, shutdown, &Readiness::not_ready())
                .await
        }
    });
    // The poison message went to the dead-letter topic, with its reason.
    let dead_letters: rdkafka::consumer::StreamConsumer = broker
        .client_config()
        .set("group.id", unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&dead_letters, &[&broker.dead_letter_topic()]).unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(30), dead_letters.recv()).await.unwrap().unwrap();
    use rdkafka::{Message, message::Headers};
    assert_eq!(dead.payload(), Some(&b"not a protobuf record"[..]));
    let reason = dead.headers().unwrap().iter().find(|h| h.key == crate::DEAD_LETTER_REASON_HEADER).unwrap();
    assert!(String::from_utf8_lossy(reason.value.unwrap()).contains("not a clima.v1.TweetBatch"));

    // The store, not the group's offsets, says where to read: an empty store
    // counts the whole retained log (the poison message is dead-lettered again).
    // (The poison message moves no stored offset, so `caught_up` cannot wait here.)
    let counts = counted(&second_store, 6).await;
    assert_eq!(counts.total, 6, "the whole log counted into the new store: {counts:?}");
    assert_eq!(counts.by_country["CA"], 1);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

/// Waits (up to two minutes) until the store's next offsets of `topic` add up
/// to `messages`: every message of a topic of clima messages only, whose
/// offsets start at 0, is counted or skipped. Then returns the store's counts.
/// Panics if they never do.
async fn caught_up(store: &CounterStore, topic: &str, messages: i64) -> Counts {
    let reached = clima_testkit::eventually(Duration::from_secs(120), || async {
        let positions = store.log_positions(topic).await.unwrap();
        (positions.values().sum::<i64>() == messages).then_some(())
    })
    .await;
    let positions = store.log_positions(topic).await.unwrap();
    assert!(reached.is_some(), "the store's next offsets {positions:?} never added up to {messages}");
    store.read_counts(1).await.unwrap()
}

async fn publish_raw_kafka(broker: &KafkaConfig, payload: &[u8]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = broker.client_config().create().unwrap();
    producer.send(FutureRecord::<(), _>::to(&broker.topic).payload(payload), Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn rabbitmq_to_valkey_counts_once_dead_letters_poison_and_acks() {
    let name = unique_name("consumer-queue");
    let broker = RabbitMqConfig { url: amqp_url(), exchange: name.clone(), queue: name, queue_type: QueueType::Quorum };
    let sink = RabbitMqSink::new(broker.clone(), RabbitMqSinkConfig::default());
    sink.publish(&tweets_with_a_duplicate()).await.unwrap();
    let connection = broker.connect("clima-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            broker.exchange.as_str().into(),
            clima_broker::rabbitmq::ROUTING_KEY.into(),
            Default::default(),
            b"not a protobuf record",
            Default::default(),
        )
        .await
        .unwrap();

    let store = fresh_store(&valkey_url()).await;
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn({
        let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
        async move {
            crate::rabbitmq::run(
                &broker,
                &RabbitMqSourceConfig::default(),
                &BatchConfig::default(),
                &store,
                shutdown,
                &Readiness::not_ready(),
            )
            .await
        }
    });
    assert_counts(&counted(&store, 5).await);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    // The poison message is in the dead-letter queue, with its reason.
    let dead = channel
        .basic_get(
            crate::rabbitmq::dead_letter_queue(&broker.queue).as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the poison message was dead-lettered");
    assert_eq!(dead.delivery.data, b"not a protobuf record");
    let headers = dead.delivery.properties.headers().as_ref().unwrap();
    assert!(headers.inner().contains_key(crate::DEAD_LETTER_REASON_HEADER));
    channel
        .queue_delete(crate::rabbitmq::dead_letter_queue(&broker.queue).as_str().into(), Default::default())
        .await
        .unwrap();

    // Everything was acked (the poison message after it was dead-lettered): the queue is empty.
    let queue = channel
        .queue_declare(
            broker.queue.as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
    channel.queue_delete(broker.queue.as_str().into(), Default::default()).await.unwrap();
}

/// RabbitMQ 4 drops a quorum-queue message returned more than 20 times when
/// the queue has no dead-letter exchange. The consumer sets it aside first.
#[tokio::test]
async fn a_message_delivered_too_often_is_dead_lettered_with_its_id_not_dropped() {
    let name = unique_name("redelivered");
    let broker = RabbitMqConfig { url: amqp_url(), exchange: name.clone(), queue: name, queue_type: QueueType::Quorum };
    let sink = RabbitMqSink::new(broker.clone(), RabbitMqSinkConfig::default());
    sink.publish(&tweets_with_a_duplicate()).await.unwrap();
    let connection = broker.connect("clima-test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Three deliveries that end without an ack, as three crashed consumers would leave it.
    let mut message_id = None;
    for _ in 0..3 {
        let got = clima_testkit::eventually(Duration::from_secs(10), || async {
            channel.basic_get(broker.queue.as_str().into(), Default::default()).await.unwrap()
        });
        let got = got.await.expect("the message is in the queue");
        message_id = got.delivery.properties.message_id().clone();
        channel
            .basic_nack(got.delivery.delivery_tag, lapin::options::BasicNackOptions { requeue: true, multiple: false })
            .await
            .unwrap();
    }

    let store = fresh_store(&valkey_url()).await;
    let source = RabbitMqSourceConfig { max_deliveries: 3, ..RabbitMqSourceConfig::default() };
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn({
        let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
        async move {
            crate::rabbitmq::run(&broker, &source, &BatchConfig::default(), &store, shutdown, &Readiness::not_ready())
                .await
        }
    });
    let dead_letter_queue = crate::rabbitmq::dead_letter_queue(&broker.queue);
    // As the consumer declares it: a get from a missing queue would close the channel.
    broker.declare_queue(&channel, &dead_letter_queue).await.unwrap();
    let dead = clima_testkit::eventually(Duration::from_secs(30), || async {
        let get = lapin::options::BasicGetOptions { no_ack: true };
        channel.basic_get(dead_letter_queue.as_str().into(), get).await.ok().flatten()
    });
    let dead = dead.await.expect("the message was not dead-lettered");
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    assert!(message_id.is_some(), "writers give every message an id");
    assert_eq!(dead.delivery.properties.message_id(), &message_id, "kept its id, for a replay to dedupe on");
    let headers = dead.delivery.properties.headers().as_ref().unwrap();
    let Some(lapin::types::AMQPValue::LongString(reason)) = headers.inner().get(crate::DEAD_LETTER_REASON_HEADER)
    else {
        panic!("no reason header: {headers:?}")
    };
    let reason = String::from_utf8_lossy(reason.as_bytes());
    assert!(reason.contains("delivered 3 times"), "{reason}");
    assert_eq!(store.read_counts(1).await.unwrap().total, 0, "set aside, not counted");
    // Its old count is not carried (a quorum dead-letter queue adds its own, 0
    // on a first delivery): shovelled back with a count of 3, it would be set aside at once.
    let carried = headers.inner().get("x-delivery-count");
    assert!(matches!(carried, None | Some(lapin::types::AMQPValue::LongLongInt(0))), "{carried:?}");
    assert!(headers.inner().contains_key(crate::rabbitmq::ORIGINAL_DELIVERY_COUNT_HEADER));
    // Acked once set aside: nothing is left in the queue.
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel.queue_declare(broker.queue.as_str().into(), passive, Default::default()).await.unwrap();
    assert_eq!(queue.message_count(), 0);
    channel.queue_delete(dead_letter_queue.as_str().into(), Default::default()).await.unwrap();
    channel.queue_delete(broker.queue.as_str().into(), Default::default()).await.unwrap();
}

/// The group's committed offsets on `topic`, summed over its partitions (0 if none).
fn committed_total(broker: &KafkaConfig, group: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let reader: BaseConsumer = broker.client_config().set("group.id", group).create().unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for partition in 0..broker.partitions {
        partitions.add_partition(&broker.topic, partition);
    }
    let committed = reader.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            rdkafka::Offset::Offset(offset) => Some(offset),
            _ => None,
        })
        .sum()
}

/// A Valkey of the test's own that refuses every write (`maxmemory` 1 byte,
/// `noeviction`), as a full store does; killed when dropped.
async fn full_store() -> (clima_testkit::ServerProcess, CounterStore, redis::aio::MultiplexedConnection) {
    let (server, url) = clima_testkit::valkey_with_policy("noeviction");
    let store = fresh_store(&url).await;
    let mut admin = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut admin).await.unwrap();
    (server, store, admin)
}

/// How many writes `store` refused as out of memory (`INFO errorstats`).
async fn refused_writes(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("errorstats").query_async(admin).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("errorstat_OOM:count="))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// With a full store (it refuses every count), a consumer that acks before
/// the store commits the batch it cannot count (a crash now would lose it),
/// and one that acks after the store commits nothing (it would be read again).
#[tokio::test]
async fn acking_before_the_store_commits_a_batch_it_never_counted() {
    let broker = kafka_topic("ack-timing");
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    sink.publish(&tweets_with_a_duplicate()).await.unwrap();

    let shutdown = CancellationToken::new();
    let mut consumers = Vec::new();
    for ack in [AckTiming::AfterStore, AckTiming::BeforeStore] {
        let (server, store, admin) = full_store().await;
        let source = KafkaSourceConfig { group: unique_name("ack-group") };
        let batching = BatchConfig { ack, ..BatchConfig::default() };
        consumers.push((source.group.clone(), server, store.clone(), admin));
        tokio::spawn({
            let (broker, shutdown) = (broker.clone(), shutdown.clone());
            async move { crate::kafka::run(&broker, &source, &batching, &store, shutdown, &Readiness::not_ready()).await }
        });
    }
    // A blocking call (librdkafka), kept off the runtime the consumers run on.
    let committed = |group: String| {
        let broker = broker.clone();
        async move { tokio::task::spawn_blocking(move || committed_total(&broker, &group)).await.unwrap() }
    };
    let before_store_group = consumers[1].0.clone();
    let before_store = clima_testkit::eventually(Duration::from_secs(30), || {
        let total = committed(before_store_group.clone());
        async move { Some(total.await).filter(|&total| total > 0) }
    });
    assert_eq!(before_store.await, Some(1), "acked before the store: its one message committed, never counted");
    // The other consumer read the message too: its store refused the count
    // (more than once: it retries), and its group committed nothing.
    let after_admin = consumers[0].3.clone();
    let refused = clima_testkit::eventually(Duration::from_secs(30), || {
        let mut admin = after_admin.clone();
        async move { Some(refused_writes(&mut admin).await).filter(|&refused| refused >= 2) }
    });
    assert!(refused.await.is_some(), "the after-store consumer tried to count");
    assert_eq!(committed(consumers[0].0.clone()).await, 0, "acked after the store: nothing committed");
    for (_, _, store, _) in &consumers {
        assert_eq!(store.read_counts(1).await.unwrap().total, 0, "a full store counts nothing");
    }
    shutdown.cancel();
}

#[test]
fn a_dead_letter_reason_is_bounded_whatever_the_bad_value() {
    let huge_country = "Ñ".repeat(500_000);
    let error = clima_tweet::TweetError::UnknownCountry(huge_country);
    let reason = crate::dead_letter_reason(&error);
    assert!(reason.len() <= crate::MAX_DEAD_LETTER_REASON_BYTES, "{} bytes", reason.len());
    assert!(reason.starts_with("country \"ÑÑ") && reason.ends_with('…'), "{reason}");
    let short = clima_tweet::TweetError::UnknownCountry("ZZ".into());
    assert_eq!(crate::dead_letter_reason(&short), short.to_string());
}

/// A renamed consumer group (or a reset or expired offset) reads the topic
/// from the start again. Long after the dedupe markers expired, the store's
/// own next offsets keep it from counting anything twice.
#[tokio::test]
async fn a_replay_by_a_new_group_after_the_dedupe_window_counts_nothing_twice() {
    let broker = kafka_topic("replay-topic");
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    sink.publish(&tweets_with_a_duplicate()).await.unwrap();
    // Markers live one second here: a replay later than that relies on offsets alone.
    let retention = Retention { dedupe_window: Duration::from_secs(1), ..Retention::default() };
    let store = CounterStore::connect(&redis_url(), KeySchema::new(unique_name("replay")), retention).await.unwrap();

    let consume_as = |group: String, until_total: u64| {
        let (broker, store) = (broker.clone(), store.clone());
        async move {
            let shutdown = CancellationToken::new();
            let source = KafkaSourceConfig { group };
            let consumer = spawn_kafka_consumer(&broker, source, &store, &shutdown);
            let counts = counted(&store, until_total).await;
            shutdown.cancel();
            consumer.await.unwrap().unwrap();
            counts
        }
    };
    assert_counts(&consume_as(unique_name("group"), 5).await);
    let counted_at = clima_testkit::store_clock(&redis_url()).await;
    clima_testkit::until_store_clock_passes(&redis_url(), counted_at, Duration::from_millis(2500)).await;

    // A new tweet, then a group that has never committed: it starts at the earliest offset.
    sink.publish(&[record("CA", Weather::Nublado)]).await.unwrap();
    let counts = consume_as(unique_name("renamed-group"), 6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = store.read_counts(1).await.unwrap();
    assert_eq!((counts.total, later.total), (6, 6), "the replay counted only the new tweet");
    assert_eq!(later.by_country["GT"], 3);
    let positions = store.log_positions(&broker.topic).await.unwrap();
    assert_eq!(positions.values().sum::<i64>(), 2, "one message a partition-offset: {positions:?}");
}

/// A store of its own, and its key prefix.
async fn store_with_prefix(url: &str) -> (CounterStore, String) {
    clima_testkit::test_log();
    let prefix = unique_name("ground");
    let store = CounterStore::connect(url, KeySchema::new(&prefix), Retention::default()).await.unwrap();
    (store, prefix)
}

/// Every key under `prefix`, as `DUMP` gives it: what a backup holds.
async fn snapshot(url: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut connection, format!("{prefix}:*")).await.unwrap();
    let mut dumped = Vec::new();
    for key in keys {
        let value: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut connection).await.unwrap();
        dumped.push((key, value));
    }
    dumped
}

/// Puts `snapshot` back in place of every key under `prefix`, as restoring a
/// backup does (an empty snapshot empties the store).
async fn restore(url: &str, prefix: &str, snapshot: &[(String, Vec<u8>)]) {
    let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut connection, format!("{prefix}:*")).await.unwrap();
    if !keys.is_empty() {
        let () = redis::AsyncCommands::del(&mut connection, keys).await.unwrap();
    }
    for (key, value) in snapshot {
        let () = redis::cmd("RESTORE").arg(key).arg(0).arg(value).query_async(&mut connection).await.unwrap();
    }
}

/// Publishes `messages` messages of one tweet each, and adds them to `expected`.
async fn publish_singles(sink: &KafkaSink, messages: usize, expected: &mut Counts) {
    const COUNTRIES: [&str; 4] = ["GT", "MX", "CO", "PE"];
    for n in 0..messages {
        let country = COUNTRIES[n % COUNTRIES.len()];
        sink.publish(&[record(country, Weather::Soleado)]).await.unwrap();
        expected.add(country, "Soleado");
    }
}

/// `counts` equals `expected`, per-minute counts aside.
fn assert_exact(counts: &Counts, expected: &Counts) {
    let none = Counts::default();
    assert_eq!(counts.since(&none), expected.since(&none), "counted (left) against published (right)");
}

/// The store is the truth for Kafka positions: a store restored from an
/// older snapshot, or emptied, under a running consumer (and a restore while
/// it is stopped) is counted up again from the log, exactly.
#[tokio::test]
async fn a_store_restored_or_emptied_is_counted_up_again_from_the_log() {
    let broker = kafka_topic("restore-topic");
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    let url = redis_url();
    let (store, prefix) = store_with_prefix(&url).await;
    let group = KafkaSourceConfig { group: unique_name("group") };
    let mut expected = Counts::default();
    publish_singles(&sink, 4, &mut expected).await;
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, group.clone(), &store, &shutdown);
    assert_exact(&caught_up(&store, &broker.topic, 4).await, &expected);
    let older = snapshot(&url, &prefix).await;

    publish_singles(&sink, 3, &mut expected).await;
    caught_up(&store, &broker.topic, 7).await;
    restore(&url, &prefix, &older).await;
    publish_singles(&sink, 1, &mut expected).await;
    assert_exact(&caught_up(&store, &broker.topic, 8).await, &expected);

    restore(&url, &prefix, &[]).await;
    publish_singles(&sink, 1, &mut expected).await;
    assert_exact(&caught_up(&store, &broker.topic, 9).await, &expected);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    // Stopped, restored, started again under the same group (whose offsets are at the end).
    restore(&url, &prefix, &older).await;
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, group, &store, &shutdown);
    assert_exact(&caught_up(&store, &broker.topic, 9).await, &expected);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

/// Deletes the topic, as an operator does with any Kafka admin client, then
/// creates it again (empty, its offsets starting over).
async fn recreate_topic(broker: &KafkaConfig) {
    let admin = broker.admin().unwrap();
    let options = rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&[&broker.topic], &options).await.unwrap() {
        result.unwrap();
    }
    let created = clima_testkit::eventually(Duration::from_secs(30), || async {
        broker.ensure_topic(&admin).await.ok()?;
        Some(())
    });
    assert!(created.await.is_some(), "the topic was not created again");
}

/// A one-partition topic: which message lands where is then known.
fn one_partition_topic(kind: &str) -> KafkaConfig {
    KafkaConfig { partitions: 1, ..kafka_topic(kind) }
}

/// A topic deleted and created again under a running consumer (its offsets
/// start over, below the store's next offset) is counted from its start: the
/// consumer keeps serving and counts every new tweet once.
#[tokio::test]
async fn a_topic_recreated_under_a_running_consumer_is_counted_from_its_start() {
    let broker = one_partition_topic("recreated-running");
    let (store, _) = store_with_prefix(&redis_url()).await;
    let mut expected = Counts::default();
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    publish_singles(&sink, 3, &mut expected).await;
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, KafkaSourceConfig { group: unique_name("group") }, &store, &shutdown);
    caught_up(&store, &broker.topic, 3).await;

    recreate_topic(&broker).await;
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    publish_singles(&sink, 2, &mut expected).await;
    assert_exact(&caught_up(&store, &broker.topic, 2).await, &expected);
    assert!(!consumer.is_finished(), "the consumer stopped");
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

/// A topic deleted and created again while the consumer was stopped, and
/// grown past the old end meanwhile (its offsets alone cannot tell), is
/// recognised by the message the store counted last, and counted from its start.
#[tokio::test]
async fn a_topic_recreated_while_stopped_and_grown_past_the_old_end_is_counted_from_its_start() {
    let broker = one_partition_topic("recreated-stopped");
    let (store, _) = store_with_prefix(&redis_url()).await;
    let group = KafkaSourceConfig { group: unique_name("group") };
    let mut expected = Counts::default();
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    publish_singles(&sink, 2, &mut expected).await;
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, group.clone(), &store, &shutdown);
    caught_up(&store, &broker.topic, 2).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    recreate_topic(&broker).await;
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    publish_singles(&sink, 5, &mut expected).await;
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, group, &store, &shutdown);
    assert_exact(&caught_up(&store, &broker.topic, 5).await, &expected);
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

/// A store whose `maxmemory-policy` may evict, or is changed to one while the
/// consumer runs, makes the consumer not ready until it is fixed.
#[tokio::test]
async fn a_store_that_may_evict_makes_the_consumer_not_ready_until_fixed() {
    use clima_telemetry::readiness::Condition;
    let (_valkey, url) = clima_testkit::valkey_with_policy("volatile-lru");
    let store = fresh_store(&url).await;
    let health = Readiness::ready();
    let shutdown = CancellationToken::new();
    let watch = tokio::spawn({
        let (store, health, shutdown) = (store.clone(), health.clone(), shutdown.clone());
        async move { crate::watch_store_policy(&store, &health, Duration::from_millis(50), &shutdown).await }
    });
    let until = |wanted: bool| {
        let health = health.clone();
        clima_testkit::eventually(Duration::from_secs(10), move || {
            let unmet = health.unmet();
            std::future::ready((unmet.contains(&Condition::StoreKeepsData) == wanted).then_some(()))
        })
    };
    assert!(until(true).await.is_some(), "ready with a store that may evict");
    let mut admin = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let set_policy = |policy: &'static str| redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(policy).clone();
    let () = set_policy("noeviction").query_async(&mut admin).await.unwrap();
    assert!(until(false).await.is_some(), "still refused after the policy was fixed");
    let () = set_policy("allkeys-lru").query_async(&mut admin).await.unwrap();
    assert!(until(true).await.is_some(), "a policy changed under the running consumer went unnoticed");
    shutdown.cancel();
    watch.await.unwrap();
}

/// The prod topology: several consumers of one group on a topic of three
/// partitions, while tweets are published. Two members join, and the first
/// is aborted while tweets still come, as a crash would (no last commit): the
/// others take its partitions from the store's offsets, and every tweet is
/// counted exactly once. (A guard, not a fix: the code before the store
/// held positions was exact here too, by its offsets and markers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_joining_and_crashing_in_one_group_count_exactly_once() {
    let broker = KafkaConfig { partitions: 3, ..kafka_topic("rebalance-topic") };
    let (store, _) = store_with_prefix(&redis_url()).await;
    let group = KafkaSourceConfig { group: unique_name("group") };
    let sink = KafkaSink::new(broker.clone(), KafkaSinkConfig::default()).unwrap();
    let mut expected = Counts::default();
    publish_singles(&sink, 30, &mut expected).await;

    let shutdown = CancellationToken::new();
    let first = spawn_kafka_consumer(&broker, group.clone(), &store, &shutdown);
    let publisher = tokio::spawn(async move {
        let mut published = Counts::default();
        publish_singles(&sink, 600, &mut published).await;
        published
    });
    // A second and a third member join while tweets come.
    clima_testkit::eventually(Duration::from_secs(30), || async {
        (store.read_counts(1).await.unwrap().total >= 30).then_some(())
    })
    .await
    .expect("the first consumer counted nothing");
    let second = spawn_kafka_consumer(&broker, group.clone(), &store, &shutdown);
    let third = spawn_kafka_consumer(&broker, group.clone(), &store, &shutdown);
    // The first crashes with whatever it holds, while tweets still come: no
    // close of the driver, no last commit; the others take its partitions.
    clima_testkit::eventually(Duration::from_secs(60), || async {
        (store.read_counts(1).await.unwrap().total >= 100).then_some(())
    })
    .await
    .expect("the group stopped counting after members joined");
    first.abort();
    assert!(!publisher.is_finished(), "the crash came after the last tweet: it proves less");
    expected.merge(&publisher.await.unwrap());

    assert_exact(&caught_up(&store, &broker.topic, 630).await, &expected);
    shutdown.cancel();
    for consumer in [second, third] {
        consumer.await.unwrap().unwrap();
    }
}

/// Publishes one message of `records` to one partition of the topic.
async fn publish_to_partition(broker: &KafkaConfig, partition: i32, records: &[TweetRecord]) {
    use prost::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let payload = clima_proto::v1::TweetBatch { records: records.to_vec() }.encode_to_vec();
    let producer: FutureProducer = broker.client_config().create().unwrap();
    let message = FutureRecord::<(), _>::to(&broker.topic).partition(partition).payload(&payload);
    producer.send(message, Duration::from_secs(10)).await.unwrap();
}

/// A client's retry is a new request, and its copy of a tweet id goes to
/// whatever partition its batch lands on. All the store ever sees of a
/// partition held back by L is that the copy on it is counted L later than
/// the other, so the held-back copy is published here that much later, on its
/// own partition, under a running consumer. The bound ARCHITECTURE.md states
/// ("What is not covered, exactly"): two copies counted less than the dedupe
/// window W apart are counted once; two counted 2W apart or more, twice.
#[tokio::test]
async fn a_retry_on_a_partition_held_back_past_the_dedupe_window_is_counted_again() {
    const WINDOW: Duration = Duration::from_secs(3);
    let broker = kafka_topic("held-back");
    clima_testkit::test_log();
    let retention = Retention { dedupe_window: WINDOW, ..Retention::default() };
    let store = CounterStore::connect(&redis_url(), KeySchema::new(unique_name("held-back")), retention).await.unwrap();
    broker.ensure_topic(&broker.admin().unwrap()).await.unwrap();
    let shutdown = CancellationToken::new();
    let consumer = spawn_kafka_consumer(&broker, KafkaSourceConfig { group: unique_name("group") }, &store, &shutdown);

    // Held back by less than W: the retry's copy is caught.
    let caught = record("GT", Weather::Lluvioso);
    publish_to_partition(&broker, 1, std::slice::from_ref(&caught)).await;
    assert_eq!(caught_up(&store, &broker.topic, 1).await.total, 1);
    publish_to_partition(&broker, 0, &[caught]).await;
    assert_eq!(caught_up(&store, &broker.topic, 2).await.total, 1, "a copy counted within W of the other is caught");

    // Held back by more than 2W: both copies count, as documented.
    let late = record("MX", Weather::Soleado);
    publish_to_partition(&broker, 1, std::slice::from_ref(&late)).await;
    assert_eq!(caught_up(&store, &broker.topic, 3).await.total, 2);
    let counted_at = clima_testkit::store_clock(&redis_url()).await;
    clima_testkit::until_store_clock_passes(&redis_url(), counted_at, 2 * WINDOW + Duration::from_millis(500)).await;
    publish_to_partition(&broker, 0, &[late]).await;
    let counts = caught_up(&store, &broker.topic, 4).await;
    assert_eq!((counts.total, counts.by_country["MX"]), (3, 2), "a copy held back past 2W counts again");

    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

/// Older clima declared the dead-letter queue classic: it lives on one node,
/// and while that node is down no consumer of a cluster can subscribe (found
/// by `ci/faults rabbitmq-cluster`). An empty one is replaced with a queue of
/// the configured type; one holding messages is kept and used.
#[tokio::test]
async fn a_classic_dead_letter_queue_is_replaced_when_empty_and_kept_when_not() {
    for holds_a_message in [false, true] {
        let name = unique_name("classic-dead");
        let broker =
            RabbitMqConfig { url: amqp_url(), exchange: name.clone(), queue: name, queue_type: QueueType::Quorum };
        let dead_letter_queue = crate::rabbitmq::dead_letter_queue(&broker.queue);
        let connection = broker.connect("clima-test").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let durable = lapin::options::QueueDeclareOptions::durable();
        channel.queue_declare(dead_letter_queue.as_str().into(), durable, Default::default()).await.unwrap();
        if holds_a_message {
            let publish = channel
                .basic_publish(
                    "".into(),
                    dead_letter_queue.as_str().into(),
                    Default::default(),
                    b"old",
                    Default::default(),
                )
                .await
                .unwrap();
            publish.await.unwrap();
        }
        let sink = RabbitMqSink::new(broker.clone(), RabbitMqSinkConfig::default());
        sink.publish(&tweets_with_a_duplicate()).await.unwrap();

        let store = fresh_store(&valkey_url()).await;
        let shutdown = CancellationToken::new();
        let consumer = tokio::spawn({
            let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
            async move {
                let (source, batch) = (RabbitMqSourceConfig::default(), BatchConfig::default());
                crate::rabbitmq::run(&broker, &source, &batch, &store, shutdown, &Readiness::not_ready()).await
            }
        });
        assert_counts(&counted(&store, 5).await);
        shutdown.cancel();
        consumer.await.unwrap().unwrap();

        // A quorum declaration succeeds only on a quorum queue (it closes the channel otherwise).
        let check = connection.create_channel().await.unwrap();
        let is_quorum = broker.declare_queue(&check, &dead_letter_queue).await.is_ok();
        assert_eq!(is_quorum, !holds_a_message, "holds a message: {holds_a_message}");
        let check = connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let kept = check.queue_declare(dead_letter_queue.as_str().into(), passive, Default::default()).await.unwrap();
        assert_eq!(kept.message_count(), u32::from(holds_a_message), "nothing dead-lettered is deleted");
        check.queue_delete(dead_letter_queue.as_str().into(), Default::default()).await.unwrap();
        check.queue_delete(broker.queue.as_str().into(), Default::default()).await.unwrap();
    }
}
