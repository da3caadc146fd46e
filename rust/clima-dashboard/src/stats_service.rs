use std::{pin::Pin, time::Duration};

use clima_proto::v1::{
    GetStatsRequest, GetStatsResponse, WatchStatsRequest, WatchStatsResponse, stats_service_server::StatsService,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::Stores;

pub(crate) struct Stats {
    stores: Stores,
}

impl Stats {
    pub(crate) fn new(stores: Stores) -> Self {
        Self { stores }
    }
}

/// Milliseconds between snapshots of a watch: 0 means 1 s; at least 200 ms.
pub(crate) fn watch_interval(interval_ms: u32) -> Duration {
    match interval_ms {
        0 => Duration::from_secs(1),
        ms => Duration::from_millis(u64::from(ms.max(200))),
    }
}

/// Snapshots now and then every `interval`, for as long as the stream is
/// polled and the dashboard is not shutting down.
pub(crate) fn snapshots(
    stores: Stores,
    recent_minutes: u32,
    interval: Duration,
) -> impl Stream<Item = clima_proto::v1::StatsSnapshot> + Send {
    let ticks = tokio::time::interval(interval);
    futures::stream::unfold((stores, ticks), move |(stores, mut ticks)| async move {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stores.closing.cancelled() => return None,
        }
        let snapshot = stores.snapshot(recent_minutes).await;
        Some((snapshot, (stores, ticks)))
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchStatsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl StatsService for Stats {
    async fn get_stats(&self, request: Request<GetStatsRequest>) -> Result<Response<GetStatsResponse>, Status> {
        let snapshot = self.stores.snapshot(request.into_inner().recent_minutes).await;
        Ok(Response::new(GetStatsResponse { snapshot: Some(snapshot) }))
    }

    type WatchStatsStream = WatchStream;

    async fn watch_stats(&self, request: Request<WatchStatsRequest>) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let stream = snapshots(self.stores.clone(), request.recent_minutes, watch_interval(request.interval_ms))
            .map(|snapshot| Ok(WatchStatsResponse { snapshot: Some(snapshot) }));
        Ok(Response::new(Box::pin(stream)))
    }
}
