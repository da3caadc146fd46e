use std::time::Instant;

use crate::Rate;

/// What `clima bench store` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis or Valkey URL.
    pub url: String,
    /// A name for the report: redis or valkey.
    pub name: String,
    /// `HINCRBY`s to send.
    pub operations: u64,
    /// Commands per pipeline.
    pub pipeline: u64,
}

/// Sends `operations` pipelined `HINCRBY`s to one scratch hash.
pub async fn run(config: Config) -> anyhow::Result<Vec<Rate>> {
    let client = redis::Client::open(config.url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let key = format!("clima-bench:{}", uuid::Uuid::now_v7().simple());
    let fields = &clima_tweet::sample::SAMPLE.countries;
    let started = Instant::now();
    let mut done = 0;
    while done < config.operations {
        let batch = (config.operations - done).min(config.pipeline);
        let mut pipe = redis::pipe();
        for i in 0..batch {
            pipe.hincr(&key, fields[(done + i) as usize % fields.len()], 1).ignore();
        }
        let () = pipe.query_async(&mut connection).await?;
        done += batch;
    }
    let rate = Rate::new(&config.name, "HINCRBY (pipelined)", config.operations, started.elapsed());
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut connection).await?;
    Ok(vec![rate])
}
