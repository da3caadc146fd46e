use std::time::Instant;

use crate::Rate;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    url: String,
    /// A name for the report: redis or valkey.
    #[arg(long, default_value = "redis")]
    name: String,
    #[arg(long, default_value_t = 1_000_000)]
    operations: u64,
    /// Commands per pipeline.
    #[arg(long, default_value_t = 1000)]
    pipeline: u64,
}

pub async fn run(args: Args) -> anyhow::Result<Vec<Rate>> {
    let client = redis::Client::open(args.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let key = format!("clima-bench:{}", uuid::Uuid::now_v7().simple());
    let fields = &clima_tweet::sample::SAMPLE.countries;
    let started = Instant::now();
    let mut done = 0;
    while done < args.operations {
        let batch = (args.operations - done).min(args.pipeline);
        let mut pipe = redis::pipe();
        for i in 0..batch {
            pipe.hincr(&key, fields[(done + i) as usize % fields.len()], 1).ignore();
        }
        let () = pipe.query_async(&mut connection).await?;
        done += batch;
    }
    let rate = Rate::new(&args.name, "HINCRBY (pipelined)", args.operations, started.elapsed());
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut connection).await?;
    Ok(vec![rate])
}
