use std::{path::PathBuf, time::Duration};

use clima_http::auth::ApiKey;

/// Default of --max-tweets.
pub const DEFAULT_MAX_TWEETS: usize = 10_000;
/// Default of --max-body-bytes: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Default of `--writer`: the Kafka writer and the RabbitMQ writer of a local stack.
pub const DEFAULT_WRITERS: [&str; 2] = ["http://127.0.0.1:50051", "http://127.0.0.1:50052"];
/// Default of `--writer-timeout`.
pub const DEFAULT_WRITER_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `--max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Default of `--request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--batch-max-tweets`.
pub const DEFAULT_BATCH_MAX_TWEETS: usize = 1000;
/// Default of `--batch-in-flight`.
pub const DEFAULT_BATCH_IN_FLIGHT: usize = 8;

/// The HTTP ingress: its writers, limits, timeouts and keys. The `clima`
/// binary's `api` flags say what each field does.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// gRPC endpoints of the writers; `a|b` names replicas of one writer.
    pub writers: Vec<String>,
    /// PEM CA certificate that signed the writers' certificates (TLS to the writers).
    pub writer_tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to the writers (mutual TLS).
    pub writer_tls_cert: Option<PathBuf>,
    /// PEM private key of `writer_tls_cert`.
    pub writer_tls_key: Option<PathBuf>,
    /// API key the writers require.
    pub writer_api_key: Option<String>,
    /// File holding `writer_api_key`.
    pub writer_api_key_file: Option<PathBuf>,
    /// How long a writer may take to confirm before the request fails with 503.
    pub writer_timeout: Duration,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests handled at once; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, body upload included (408 after).
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers; also the keep-alive idle time.
    pub header_read_timeout: Duration,
    /// Most client connections served at once.
    pub max_connections: usize,
    /// API key that POST /input requires; none means open.
    pub api_key: Option<String>,
    /// File holding `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// Most tweets accepted in one request (an array).
    pub max_tweets: usize,
    /// Most tweets in one writer call (one broker message).
    pub batch_max_tweets: usize,
    /// Writer calls in flight at once.
    pub batch_in_flight: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self::with_writers(DEFAULT_WRITERS.map(str::to_owned).to_vec())
    }
}

impl ApiConfig {
    /// Defaults with the given writer endpoints.
    pub fn with_writers(writers: Vec<String>) -> Self {
        Self {
            writers,
            writer_timeout: DEFAULT_WRITER_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
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
            batch_max_tweets: DEFAULT_BATCH_MAX_TWEETS,
            batch_in_flight: DEFAULT_BATCH_IN_FLIGHT,
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
