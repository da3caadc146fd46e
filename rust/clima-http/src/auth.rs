//! The shared-secret API key that clima's ports can require.
//!
//! A client presents it in any of the usual places:
//! - `Authorization: Bearer <key>` (the scheme in any letter case, RFC 9110 §11.1);
//! - `X-Api-Key: <key>`;
//! - `Authorization: Basic …` with the key as the password, which is what a
//!   browser sends after its login prompt (the dashboard asks for it with
//!   `WWW-Authenticate: Basic`).
//!
//! gRPC metadata is HTTP/2 headers, so the same check serves tonic services.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine;
use http::HeaderMap;

/// A non-empty API key.
#[derive(Clone)]
pub struct ApiKey {
    key: Arc<str>,
    /// SHA-256 of the key: what presented keys are compared with, so the
    /// comparison takes the same time whatever their length (comparing the
    /// keys themselves would tell a client the key's length).
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiKey(…)")
    }
}

/// Why an API key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// The key file could not be read.
    #[error("reading the API key file {path:?}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The key (or its file) is empty or blank.
    #[error("the API key is empty")]
    Empty,
    /// The key has characters a header cannot carry.
    #[error("the API key must be printable ASCII without spaces, to travel in a header")]
    NotHeaderSafe,
}

impl ApiKey {
    /// The key given inline or in a file (e.g. a mounted Kubernetes Secret);
    /// surrounding whitespace is ignored. `None` when neither is given.
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Self>, ApiKeyError> {
        let key = match (inline, file) {
            (Some(key), _) => key.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|source| ApiKeyError::ReadFile { path: path.to_owned(), source })?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ApiKeyError::NotHeaderSafe);
        }
        Ok(Some(Self { digest: sha256(&key), key: key.into() }))
    }

    /// `Bearer <key>`, the `Authorization` value that presents this key.
    pub fn bearer(&self) -> http::HeaderValue {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", self.key))
            .unwrap_or_else(|_| unreachable!("load() admits printable ASCII only"));
        value.set_sensitive(true);
        value
    }

    /// Whether `headers` carry this key, compared in constant time.
    pub fn is_presented(&self, headers: &HeaderMap) -> bool {
        let mut presented: Vec<String> = Vec::with_capacity(2);
        for value in headers.get_all(http::header::AUTHORIZATION).iter().filter_map(|value| value.to_str().ok()) {
            let Some((scheme, credentials)) = value.trim_start().split_once(' ') else { continue };
            let credentials = credentials.trim();
            if scheme.eq_ignore_ascii_case("bearer") {
                presented.push(credentials.to_owned());
            } else if scheme.eq_ignore_ascii_case("basic")
                && let Some(password) = basic_password(credentials)
            {
                presented.push(password);
            }
        }
        presented
            .extend(headers.get_all("x-api-key").iter().filter_map(|value| value.to_str().ok()).map(str::to_owned));
        presented.iter().any(|candidate| constant_time_eq::constant_time_eq_32(&sha256(candidate.trim()), &self.digest))
    }
}

fn sha256(text: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().try_into().unwrap_or_else(|_| unreachable!("SHA-256 has 32 bytes"))
}

/// The password of `Basic` credentials (`base64(user:password)`); the user is ignored.
fn basic_password(credentials: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    decoded.split_once(':').map(|(_, password)| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap())).collect()
    }

    fn key() -> ApiKey {
        ApiKey::load(Some(" s3cret\n"), None).unwrap().unwrap()
    }

    #[test]
    fn the_key_is_accepted_in_every_documented_place() {
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        for (name, value) in [
            ("authorization", "Bearer s3cret".to_owned()),
            ("authorization", "bEaReR s3cret".to_owned()),
            ("x-api-key", "s3cret".to_owned()),
            ("authorization", format!("Basic {basic}")),
        ] {
            assert!(key().is_presented(&headers(&[(name, &value)])), "{name}: {value}");
        }
    }

    #[test]
    fn a_wrong_missing_or_malformed_key_is_refused() {
        let wrong_basic = base64::engine::general_purpose::STANDARD.encode("s3cret:wrong");
        for pairs in [
            &[][..],
            &[("authorization", "Bearer s3cre")],
            &[("authorization", "Bearers3cret")],
            &[("authorization", "Token s3cret")],
            &[("x-api-key", "S3CRET")],
            &[("authorization", "Basic !!!")],
        ] {
            assert!(!key().is_presented(&headers(pairs)), "{pairs:?}");
        }
        assert!(!key().is_presented(&headers(&[("authorization", &format!("Basic {wrong_basic}"))])));
    }

    #[test]
    fn an_empty_key_is_an_error_and_no_key_is_none() {
        assert!(matches!(ApiKey::load(Some("  "), None), Err(ApiKeyError::Empty)));
        assert!(matches!(ApiKey::load(Some("two words"), None), Err(ApiKeyError::NotHeaderSafe)));
        assert!(matches!(ApiKey::load(Some("clé"), None), Err(ApiKeyError::NotHeaderSafe)));
        assert!(key().is_presented(&[(http::header::AUTHORIZATION, key().bearer())].into_iter().collect()));
        assert!(ApiKey::load(None, None).unwrap().is_none());
        assert!(matches!(ApiKey::load(None, Some(Path::new("/nonexistent/key"))), Err(ApiKeyError::ReadFile { .. })));
        assert_eq!(format!("{:?}", key()), "ApiKey(…)", "Debug never prints the key");
    }
}
