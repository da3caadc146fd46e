//! Kafka (any Kafka-protocol broker: Apache Kafka, Strimzi, tansu).

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use crate::BrokerError;

/// Default of `--kafka-brokers`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default of `--kafka-topic`.
pub const DEFAULT_TOPIC: &str = "tweets-clima";
/// Default of `--kafka-partitions`.
pub const DEFAULT_PARTITIONS: i32 = 3;
/// Default of `--kafka-replication-factor`.
pub const DEFAULT_REPLICATION_FACTOR: i32 = 1;

/// How to reach a Kafka cluster and which topic carries tweets (the `clima`
/// binary's `--kafka-*` flags).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated host:port.
    pub brokers: String,
    /// The topic that carries tweets.
    pub topic: String,
    /// Partitions of the topic when clima has to create it.
    pub partitions: i32,
    /// Replication factor of the topic when clima has to create it.
    pub replication_factor: i32,
    /// Extra librdkafka properties, over clima's own.
    pub options: Vec<(String, String)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: DEFAULT_BROKERS.to_owned(),
            topic: DEFAULT_TOPIC.to_owned(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            options: Vec::new(),
        }
    }
}

impl KafkaConfig {
    /// librdkafka settings common to every clima client of this cluster.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with_defaults(&[])
    }

    /// [`KafkaConfig::client_config`] over clima's own `defaults`, which a
    /// `--kafka-option` of the same key overrides.
    pub fn client_config_with_defaults(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// An admin client for [`KafkaConfig::ensure_topic`].
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, BrokerError> {
        Ok(self.client_config().create()?)
    }

    /// Creates the topic unless it exists. Brokers like tansu and most
    /// production clusters do not auto-create topics. Also proves the cluster
    /// answers, so it doubles as a health check.
    pub async fn ensure_topic(&self, admin: &AdminClient<DefaultClientContext>) -> Result<(), BrokerError> {
        let topic = NewTopic::new(&self.topic, self.partitions, TopicReplication::Fixed(self.replication_factor));
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(BrokerError::KafkaTopic { topic, code }),
            }
        }
        Ok(())
    }
}

/// What a Kafka ACL grants access to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclResource {
    /// A topic, by name.
    Topic(String),
    /// A consumer group, by name.
    Group(String),
    /// The cluster itself.
    Cluster,
}

/// An ACL a clima service needs on an authorizing cluster (Strimzi's
/// KafkaUser with `authorization: simple`): `clima kafka-acls` prints them and
/// `ci/check_k8s.py` proves the manifests grant them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// What it grants access to.
    pub resource: AclResource,
    /// Kafka's operation names (`Write`, `Describe`, ...).
    pub operations: &'static [&'static str],
}

impl KafkaConfig {
    /// Where invalid messages of the topic go: `<topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    /// The writer: creates the topic if missing ([`KafkaConfig::ensure_topic`]:
    /// CreateTopics is authorized before the broker looks whether it exists)
    /// and produces to it, idempotently by default.
    pub fn writer_acls(&self) -> Vec<Acl> {
        vec![
            Acl { resource: AclResource::Topic(self.topic.clone()), operations: &["Describe", "Create", "Write"] },
            Acl { resource: AclResource::Cluster, operations: &["IdempotentWrite"] },
        ]
    }

    /// A consumer of `group`: creates the topic and its dead-letter topic if
    /// missing, reads the topic, commits the group's offsets and produces
    /// dead letters.
    pub fn consumer_acls(&self, group: &str) -> Vec<Acl> {
        vec![
            Acl { resource: AclResource::Topic(self.topic.clone()), operations: &["Describe", "Create", "Read"] },
            Acl {
                resource: AclResource::Topic(self.dead_letter_topic()),
                operations: &["Describe", "Create", "Write"],
            },
            Acl { resource: AclResource::Group(group.to_owned()), operations: &["Describe", "Read"] },
            Acl { resource: AclResource::Cluster, operations: &["IdempotentWrite"] },
        ]
    }
}

/// A `--kafka-option` value: `key=value`, trimmed, with a non-empty key.
pub fn parse_key_value(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("expected key=value, got {pair:?}"))
}

#[cfg(test)]
mod tests {
    use super::{KafkaConfig, parse_key_value};

    #[test]
    fn options_override_clima_defaults() {
        let args = KafkaConfig {
            brokers: "kafka:9092".into(),
            topic: "t".into(),
            partitions: 1,
            replication_factor: 1,
            options: vec![("fetch.wait.max.ms".into(), "200".into())],
        };
        let config = args.client_config_with_defaults(&[("fetch.wait.max.ms", "50"), ("linger.ms", "1")]);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("200"));
        assert_eq!(config.get("linger.ms"), Some("1"));
        assert_eq!(config.get("bootstrap.servers"), Some("kafka:9092"));
    }

    #[test]
    fn options_are_key_value_pairs() {
        assert_eq!(parse_key_value("linger.ms=5"), Ok(("linger.ms".into(), "5".into())));
        assert_eq!(parse_key_value("sasl.password=a=b"), Ok(("sasl.password".into(), "a=b".into())));
        assert!(parse_key_value("linger.ms").is_err());
        assert!(parse_key_value("=5").is_err());
    }
}

/// Kafka record headers as trace-context carriers.
pub mod trace_headers {
    use opentelemetry::propagation::{Extractor, Injector};
    use rdkafka::message::{Header, Headers, OwnedHeaders};

    /// Collects `traceparent`/`tracestate`/`baggage` into record headers.
    pub struct Inject(pub OwnedHeaders);

    impl Injector for Inject {
        fn set(&mut self, key: &str, value: String) {
            let headers = std::mem::replace(&mut self.0, OwnedHeaders::new());
            self.0 = headers.insert(Header { key, value: Some(&value) });
        }
    }

    /// Reads trace context from a received record's headers.
    pub struct Extract<'a, H: Headers>(pub &'a H);

    impl<H: Headers> Extractor for Extract<'_, H> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|header| header.key.eq_ignore_ascii_case(key))
                .and_then(|header| header.value)
                .and_then(|value| std::str::from_utf8(value).ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|header| header.key).collect()
        }
    }
}
