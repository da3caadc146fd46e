use std::net::SocketAddr;

use anyhow::Context;
use clima_telemetry::events::Broker;
use clima_writer::sinks::{KafkaSink, RabbitMqSink};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Service,
    flags::{KafkaFlags, KafkaSinkFlags, RabbitMqFlags, RabbitMqSinkFlags, WriterServerFlags},
    telemetry,
};

#[derive(Debug, clap::Args)]
pub(crate) struct WriterArgs {
    #[command(subcommand)]
    broker: WriterBroker,
}

/// The broker a writer publishes to, each with only its own flags.
#[derive(Debug, clap::Subcommand)]
enum WriterBroker {
    /// Publishes to a Kafka topic (gRPC on 127.0.0.1:50051 by default).
    Kafka {
        #[command(flatten)]
        server: WriterServerArgs,
        #[command(flatten, next_help_heading = "Kafka")]
        kafka: KafkaFlags,
        #[command(flatten, next_help_heading = "Kafka")]
        sink: KafkaSinkFlags,
    },
    /// Publishes to a RabbitMQ exchange (gRPC on 127.0.0.1:50052 by default).
    Rabbitmq {
        #[command(flatten)]
        server: WriterServerArgs,
        #[command(flatten, next_help_heading = "RabbitMQ")]
        rabbitmq: RabbitMqFlags,
        #[command(flatten, next_help_heading = "RabbitMQ")]
        sink: RabbitMqSinkFlags,
    },
}

/// What every writer has, whatever its broker.
#[derive(Debug, clap::Args)]
struct WriterServerArgs {
    /// Address to listen on for gRPC [default: 127.0.0.1:50051 for kafka, 127.0.0.1:50052 for rabbitmq].
    #[arg(long, env = "CLIMA_WRITER_LISTEN")]
    listen: Option<SocketAddr>,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    #[command(flatten)]
    server: WriterServerFlags,
}

impl WriterArgs {
    fn broker(&self) -> Broker {
        match self.broker {
            WriterBroker::Kafka { .. } => Broker::Kafka,
            WriterBroker::Rabbitmq { .. } => Broker::RabbitMq,
        }
    }

    pub(crate) fn service_name(&self) -> &'static str {
        match self.broker() {
            Broker::Kafka => "clima-writer-kafka",
            Broker::RabbitMq => "clima-writer-rabbitmq",
        }
    }
}

pub(crate) async fn build(args: WriterArgs, shutdown: CancellationToken) -> anyhow::Result<Service> {
    let (default_port, default_admin_port) = match args.broker() {
        Broker::Kafka => (50051, 9101),
        Broker::RabbitMq => (50052, 9102),
    };
    let (WriterBroker::Kafka { server, .. } | WriterBroker::Rabbitmq { server, .. }) = &args.broker;
    let listen = server.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    // Ready (admin /readyz) when the gRPC health service says SERVING.
    let readiness = telemetry::Readiness::not_ready();
    let admin = server.admin.listen.unwrap_or(([127, 0, 0, 1], default_admin_port).into());
    let admin = telemetry::serve_admin(admin, readiness.clone(), &shutdown).await?;
    let shutdown = async move { shutdown.cancelled().await };
    Ok(match args.broker {
        WriterBroker::Kafka { server, kafka, sink } => {
            let sink = KafkaSink::new(kafka.into(), sink.into())?;
            let serving = clima_writer::serve_reporting(listener, sink, server.server.into(), readiness, shutdown);
            Service::new(Some(address), admin, async move { Ok(serving.await?) })
        }
        WriterBroker::Rabbitmq { server, rabbitmq, sink } => {
            let sink = RabbitMqSink::new(rabbitmq.into(), sink.into());
            let serving = clima_writer::serve_reporting(listener, sink, server.server.into(), readiness, shutdown);
            Service::new(Some(address), admin, async move { Ok(serving.await?) })
        }
    })
}
