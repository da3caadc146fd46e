use axum::{Router, http::StatusCode, routing::post, serve::ListenerExt};

/// What `clima bench http-hello` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; `clima load --url http://<this>/input` measures it.
    pub listen: String,
}

/// Serves `POST /input` → 202 `{"accepted":1}` (what `clima load` expects of
/// a single-object request) until killed: the same tokio, hyper and axum
/// stack as `clima api`, without the work.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/input", post(|_body: axum::body::Bytes| async { (StatusCode::ACCEPTED, r#"{"accepted":1}"#) }));
    // As `clima api` does.
    let listener = tokio::net::TcpListener::bind(&config.listen).await?.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
