use std::{path::PathBuf, time::Duration};

use clima_http::auth::ApiKey;

/// Default of --max-tweets.
pub const DEFAULT_MAX_TWEETS: usize = 10_000;
/// Default of --max-body-bytes: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiConfig {
    /// gRPC endpoint of a writer (repeatable; env: comma separated). Every
    /// accepted tweet is sent to every writer. `http://a:50051|http://b:50051`
    /// names replicas of one writer: calls go to them in turn, skipping one
    /// that cannot be reached.
    #[arg(
        long = "writer",
        env = "CLIMA_WRITERS",
        value_delimiter = ',',
        default_values_t = ["http://127.0.0.1:50051".to_owned(), "http://127.0.0.1:50052".to_owned()]
    )]
    pub writers: Vec<String>,

    /// PEM CA certificate that signed the writers' certificates: talk to the
    /// writers over TLS (give https:// endpoints).
    #[arg(long = "writer-tls-ca", env = "CLIMA_WRITER_TLS_CA")]
    pub writer_tls_ca: Option<PathBuf>,

    /// PEM client certificate presented to the writers (mutual TLS).
    #[arg(id = "writer_tls_cert", long = "writer-tls-cert", env = "CLIMA_WRITER_TLS_CLIENT_CERT", requires_all = ["writer_tls_key", "writer_tls_ca"])]
    pub writer_tls_cert: Option<PathBuf>,

    /// PEM private key of --writer-tls-cert.
    #[arg(
        id = "writer_tls_key",
        long = "writer-tls-key",
        env = "CLIMA_WRITER_TLS_CLIENT_KEY",
        requires = "writer_tls_cert"
    )]
    pub writer_tls_key: Option<PathBuf>,

    /// API key the writers require (their --api-key): sent as
    /// `Authorization: Bearer <key>` on every writer call.
    #[arg(
        long = "writer-api-key",
        env = "CLIMA_WRITER_API_KEY",
        hide_env_values = true,
        conflicts_with = "writer_api_key_file"
    )]
    pub writer_api_key: Option<String>,

    /// File holding --writer-api-key (e.g. a mounted Kubernetes Secret).
    #[arg(id = "writer_api_key_file", long = "writer-api-key-file", env = "CLIMA_WRITER_API_KEY_FILE")]
    pub writer_api_key_file: Option<PathBuf>,

    /// How long a writer may take to confirm before the request fails with 503.
    #[arg(long = "writer-timeout", env = "CLIMA_WRITER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub writer_timeout: Duration,

    /// Largest request body accepted, in bytes (413 above): room for an array
    /// of --max-tweets tweets of about 400 bytes each.
    #[arg(long = "max-body-bytes", env = "CLIMA_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Requests handled at once; more are answered 503 at once (load shedding)
    /// instead of queueing without bound.
    #[arg(long = "max-concurrent-requests", env = "CLIMA_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Longest a request may take, body upload included (408 after).
    #[arg(long = "request-timeout", env = "CLIMA_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Longest a client may take to send a request's headers; also how long
    /// an idle keep-alive connection stays open.
    #[arg(long = "header-read-timeout", env = "CLIMA_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Most client connections served at once; more wait in the listen
    /// backlog. Each open-loop `clima load` request in flight holds one.
    #[arg(long = "max-connections", env = "CLIMA_MAX_CONNECTIONS", default_value_t = clima_http::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// API key that POST /input requires (as `Authorization: Bearer <key>` or
    /// `X-Api-Key: <key>`); none means /input is open.
    #[arg(long = "api-key", env = "CLIMA_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,

    /// File holding the API key (e.g. a mounted Kubernetes Secret); surrounding whitespace is ignored.
    #[arg(id = "api_key_file", long = "api-key-file", env = "CLIMA_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Most tweets accepted in one request (an array). Load clients of the
    /// reference design send 10,000 at once. Arrays longer than
    /// --batch-max-tweets go to the writers in several calls.
    #[arg(long = "max-tweets", env = "CLIMA_MAX_TWEETS", default_value_t = DEFAULT_MAX_TWEETS)]
    pub max_tweets: usize,

    /// Most tweets in one writer call (one broker message): concurrent
    /// requests are sent together up to this many, and a bigger request is
    /// cut into calls of this many; at most the writers' --max-records.
    #[arg(long = "batch-max-tweets", env = "CLIMA_BATCH_MAX_TWEETS", default_value_t = 1000)]
    pub batch_max_tweets: usize,

    /// Writer calls in flight at once; while all are busy, new requests wait
    /// and leave together in the next batch.
    #[arg(long = "batch-in-flight", env = "CLIMA_BATCH_IN_FLIGHT", default_value_t = 8)]
    pub batch_in_flight: usize,
}

impl ApiConfig {
    /// Defaults with the given writer endpoints.
    pub fn with_writers(writers: Vec<String>) -> Self {
        Self {
            writers,
            writer_timeout: Duration::from_secs(2),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: clima_http::DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: clima_http::DEFAULT_MAX_CONNECTIONS,
            api_key: None,
            api_key_file: None,
            writer_api_key: None,
            writer_api_key_file: None,
            writer_tls_ca: None,
            writer_tls_cert: None,
            writer_tls_key: None,
            max_tweets: DEFAULT_MAX_TWEETS,
            batch_max_tweets: 1000,
            batch_in_flight: 8,
        }
    }

    /// The limits of the API's HTTP listener.
    pub fn connection_limits(&self) -> clima_http::ConnectionLimits {
        clima_http::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..clima_http::ConnectionLimits::default()
        }
    }

    /// TLS settings for the writer connections, if --writer-tls-ca is given.
    pub fn writer_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, crate::ApiError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| crate::ApiError::ReadFile { path: path.clone(), source })
        };
        let Some(ca) = &self.writer_tls_ca else { return Ok(None) };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.writer_tls_cert, &self.writer_tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(tls))
    }

    /// The API key from --api-key or --api-key-file, if any.
    pub fn resolved_api_key(&self) -> Result<Option<ApiKey>, crate::ApiError> {
        Ok(ApiKey::load(self.api_key.as_deref(), self.api_key_file.as_deref())?)
    }

    /// The key for the writers, from --writer-api-key or --writer-api-key-file, if any.
    pub fn resolved_writer_api_key(&self) -> Result<Option<ApiKey>, crate::ApiError> {
        Ok(ApiKey::load(self.writer_api_key.as_deref(), self.writer_api_key_file.as_deref())?)
    }
}
