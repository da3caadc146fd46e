use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use clima_broker::{kafka::KafkaConfig, rabbitmq::RabbitMqConfig};
use clima_consumer::{kafka::KafkaSourceConfig, rabbitmq::RabbitMqSourceConfig};
use clima_store::{CounterStore, KeySchema, Retention};
use clima_telemetry::events::Broker;
use tokio_util::sync::CancellationToken;

use crate::{
    Service,
    flags::{BatchFlags, KafkaFlags, KafkaSourceFlags, RabbitMqFlags, RabbitMqSourceFlags},
    telemetry,
};

#[derive(Debug, clap::Args)]
pub(crate) struct ConsumerArgs {
    #[command(subcommand)]
    broker: ConsumerBroker,
}

/// The broker a consumer reads, each with only its own flags.
#[derive(Debug, clap::Subcommand)]
enum ConsumerBroker {
    /// Counts the Kafka topic into Redis (127.0.0.1:6379 by default).
    Kafka {
        #[command(flatten)]
        counting: CountingArgs,
        #[command(flatten, next_help_heading = "Kafka")]
        kafka: KafkaFlags,
        #[command(flatten, next_help_heading = "Kafka")]
        source: KafkaSourceFlags,
    },
    /// Counts the RabbitMQ queue into Valkey (127.0.0.1:6380 by default).
    Rabbitmq {
        #[command(flatten)]
        counting: CountingArgs,
        #[command(flatten, next_help_heading = "RabbitMQ")]
        rabbitmq: RabbitMqFlags,
        #[command(flatten, next_help_heading = "RabbitMQ")]
        source: RabbitMqSourceFlags,
    },
}

/// What every consumer has, whatever its broker.
#[derive(Debug, clap::Args)]
struct CountingArgs {
    #[command(flatten)]
    admin: telemetry::AdminArgs,

    #[command(flatten, next_help_heading = "Store")]
    store: StoreArgs,

    #[command(flatten, next_help_heading = "Batching")]
    batching: BatchFlags,
}

#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// Redis/Valkey URL to count into [default: redis://127.0.0.1:6379 (Redis) for kafka,
    /// redis://127.0.0.1:6380 (Valkey) for rabbitmq].
    #[arg(id = "store_url", long = "store-url", value_name = "URL", env = "CLIMA_STORE_URL", hide_env_values = true)]
    url: Option<String>,

    /// PEM CA certificate that signed the store's certificate, for a `rediss://`
    /// store URL (TLS) whose certificate the system's roots do not cover.
    #[arg(long = "store-tls-ca", env = "CLIMA_STORE_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,

    /// Prefix of every key clima writes (see ARCHITECTURE.md, "Key schema").
    #[arg(long = "key-prefix", env = "CLIMA_KEY_PREFIX", default_value = "clima")]
    key_prefix: String,

    /// How long a counted tweet id is surely remembered (at most twice that),
    /// so that a client's retry of it is not counted again. Kafka replays and
    /// RabbitMQ redeliveries are covered without it (offsets, unacked journal).
    #[arg(long = "dedupe-window", env = "CLIMA_DEDUPE_WINDOW", default_value = "3m", value_parser = humantime::parse_duration)]
    dedupe_window: Duration,

    /// How long per-minute counters are kept.
    #[arg(long = "minute-retention", env = "CLIMA_MINUTE_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    minute_retention: Duration,
}

impl ConsumerArgs {
    fn broker(&self) -> Broker {
        match self.broker {
            ConsumerBroker::Kafka { .. } => Broker::Kafka,
            ConsumerBroker::Rabbitmq { .. } => Broker::RabbitMq,
        }
    }

    pub(crate) fn service_name(&self) -> &'static str {
        match self.broker() {
            Broker::Kafka => "clima-consumer-kafka",
            Broker::RabbitMq => "clima-consumer-rabbitmq",
        }
    }
}

/// A consumer's broker settings, parsed.
enum Reader {
    Kafka(KafkaConfig, KafkaSourceConfig),
    RabbitMq(RabbitMqConfig, RabbitMqSourceConfig),
}

pub(crate) async fn build(args: ConsumerArgs, shutdown: CancellationToken) -> anyhow::Result<Service> {
    let broker = args.broker();
    let (counting, reader) = match args.broker {
        ConsumerBroker::Kafka { counting, kafka, source } => (counting, Reader::Kafka(kafka.into(), source.into())),
        ConsumerBroker::Rabbitmq { counting, rabbitmq, source } => {
            (counting, Reader::RabbitMq(rabbitmq.into(), source.into()))
        }
    };
    let CountingArgs { admin, store, batching } = counting;
    let url = store.url.clone().unwrap_or_else(|| match broker {
        Broker::Kafka => "redis://127.0.0.1:6379".to_owned(),
        Broker::RabbitMq => "redis://127.0.0.1:6380".to_owned(),
    });
    let keys = KeySchema::new(&store.key_prefix);
    let retention = Retention { dedupe_window: store.dedupe_window, minutes: store.minute_retention };
    let default_admin_port = match broker {
        Broker::Kafka => 9103,
        Broker::RabbitMq => 9104,
    };
    // Ready once the store and the broker are connected, and not while the
    // consumer reconnects to either (the driver says).
    let health = telemetry::Readiness::not_ready();
    let admin = telemetry::serve_admin(
        admin.listen.unwrap_or(([127, 0, 0, 1], default_admin_port).into()),
        health.clone(),
        &shutdown,
    )
    .await?;

    let ca = match &store.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let prefix = store.key_prefix;
    let batching = batching.into();
    let consuming = async move {
        let connect = || CounterStore::connect_with_ca(&url, keys.clone(), retention, ca.clone());
        let store = tokio::select! {
            store = connect
                .retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(5)).without_max_times())
                .notify(|error, delay| tracing::warn!(%error, ?delay, "store not reachable; retrying")) => store?,
            () = shutdown.cancelled() => return Ok(()),
        };
        tracing::info!(store = store.system().as_str(), %prefix, "store connected");
        tokio::spawn({
            let (store, health, shutdown) = (store.clone(), health.clone(), shutdown.clone());
            let every = clima_consumer::STORE_POLICY_CHECK_EVERY;
            async move { clima_consumer::watch_store_policy(&store, &health, every, &shutdown).await }
        });
        match reader {
            Reader::Kafka(broker, source) => {
                clima_consumer::kafka::run(&broker, &source, &batching, &store, shutdown, &health).await?;
            }
            Reader::RabbitMq(broker, source) => {
                clima_consumer::rabbitmq::run(&broker, &source, &batching, &store, shutdown, &health).await?;
            }
        }
        Ok(())
    };
    Ok(Service::new(None, admin, consuming))
}
