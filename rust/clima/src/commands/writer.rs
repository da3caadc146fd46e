use std::net::SocketAddr;

use anyhow::Context;
use clima_telemetry::events::Broker;
use clima_writer::sinks::{KafkaSink, RabbitMqSink};
use tokio::net::TcpListener;

use crate::{
    flags::{BrokerFlag, KafkaFlags, KafkaSinkFlags, RabbitMqFlags, RabbitMqSinkFlags, WriterServerFlags},
    shutdown, telemetry,
};

#[derive(Debug, clap::Args)]
pub struct WriterArgs {
    /// Broker this writer publishes to.
    #[arg(long, env = "CLIMA_WRITER_SINK", value_enum)]
    sink: BrokerFlag,

    /// Address to listen on for gRPC [default: 127.0.0.1:50051 for kafka, 127.0.0.1:50052 for rabbitmq].
    #[arg(long, env = "CLIMA_WRITER_LISTEN")]
    listen: Option<SocketAddr>,

    #[command(flatten)]
    admin: telemetry::AdminArgs,

    #[command(flatten)]
    server: WriterServerFlags,

    #[command(flatten, next_help_heading = "Kafka")]
    kafka: KafkaFlags,
    #[command(flatten, next_help_heading = "Kafka")]
    kafka_sink: KafkaSinkFlags,

    #[command(flatten, next_help_heading = "RabbitMQ")]
    rabbitmq: RabbitMqFlags,
    #[command(flatten, next_help_heading = "RabbitMQ")]
    rabbitmq_sink: RabbitMqSinkFlags,
}

impl WriterArgs {
    pub fn service_name(&self) -> &'static str {
        match Broker::from(self.sink) {
            Broker::Kafka => "clima-writer-kafka",
            Broker::RabbitMq => "clima-writer-rabbitmq",
        }
    }
}

pub async fn run(args: WriterArgs) -> anyhow::Result<()> {
    let broker = Broker::from(args.sink);
    let (default_port, default_admin_port) = match broker {
        Broker::Kafka => (50051, 9101),
        Broker::RabbitMq => (50052, 9102),
    };
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let shutdown = shutdown::on_signal();
    // Ready (admin /readyz) when the gRPC health service says SERVING.
    let readiness = telemetry::Readiness::not_ready();
    let admin = args.admin.listen.unwrap_or(([127, 0, 0, 1], default_admin_port).into());
    telemetry::serve_admin(admin, readiness.clone(), &shutdown).await?;
    let shutdown = async move { shutdown.cancelled().await };
    match broker {
        Broker::Kafka => {
            let sink = KafkaSink::new(args.kafka.into(), args.kafka_sink.into())?;
            clima_writer::serve_reporting(listener, sink, args.server.into(), readiness, shutdown).await?;
        }
        Broker::RabbitMq => {
            let sink = RabbitMqSink::new(args.rabbitmq.into(), args.rabbitmq_sink.into());
            clima_writer::serve_reporting(listener, sink, args.server.into(), readiness, shutdown).await?;
        }
    }
    Ok(())
}
