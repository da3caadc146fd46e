use std::time::{Instant, SystemTime};

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    response::IntoResponse,
};
use clima_proto::v1::{TweetInput, TweetRecord};
use clima_telemetry::events::{ApiStage, api_request_stage};
use pbjson_types::Timestamp;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{ApiError, AppState};

use naming::{NamedInput, Naming};

/// `POST /input`: one tweet object or an array of them; answers with the
/// accepted tweets' ids.
pub(crate) async fn post_input(State(state): State<AppState>, request: Request) -> Result<impl IntoResponse, ApiError> {
    let result = accept_input(&state, request).await;
    match &result {
        Ok(ids) => clima_telemetry::events::tweets_accepted(ids.len()),
        Err(error) => clima_telemetry::events::input_rejected(error.code()),
    }
    let ids = result?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": ids.len(), "ids": ids }))))
}

/// Reads, checks and forwards one request, within --request-timeout.
///
/// The timeout answers 408 only while nothing of the request has left: up to
/// the hand-off to the batcher (upload, decoding, validation). Once its
/// records are queued they will be published, so a timeout after that is a
/// 503 that says so: a retry must carry the same `Idempotency-Key`.
async fn accept_input(state: &AppState, request: Request) -> Result<Vec<String>, ApiError> {
    let timeout = state.config.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let headers = request.headers().clone();
    require_json(&headers)?;
    let idempotency_key = idempotency_key(&headers)?;
    let started = Instant::now();
    let body = match tokio::time::timeout_at(deadline, Bytes::from_request(request, state)).await {
        Ok(body) => body,
        Err(_elapsed) => return Err(ApiError::RequestTimeout(timeout)),
    };
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "request body is larger than {} bytes; send fewer tweets per request",
            state.config.max_body_bytes
        )),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    let decoding = Instant::now();
    api_request_stage(ApiStage::Body, decoding - started);
    let Decoded { inputs, array } = decode(&body, state.config.max_tweets)?;
    // The tweets own their text now: the body goes before the records are
    // built and held through the publish, so a request never holds both.
    drop(body);
    let mut records = accept(inputs, array, idempotency_key.as_deref())?;
    let span = tracing::Span::current();
    span.record("clima.tweets", records.len());
    // Each tweet carries its request's trace on, through the batch.
    let trace_context = clima_telemetry::propagation::context_map(&span);
    if !trace_context.is_empty() {
        for record in &mut records {
            record.trace_context.clone_from(&trace_context);
        }
    }
    let ids = records.iter().map(|record| record.id.clone()).collect();
    api_request_stage(ApiStage::Decode, decoding.elapsed());
    if tokio::time::Instant::now() >= deadline {
        return Err(ApiError::RequestTimeout(timeout));
    }
    // From here on the records are handed off: whatever happens, they may be counted.
    match tokio::time::timeout_at(deadline, state.batcher.publish(records)).await {
        Ok(published) => published?,
        Err(_elapsed) => return Err(ApiError::TimedOutAfterHandOff(timeout)),
    }
    Ok(ids)
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: every writer reports SERVING (its broker is reachable).
pub(crate) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, writers) = state.writers.health().await;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "status": if ready { "ready" } else { "not_ready" }, "writers": writers })))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") { Ok(()) } else { Err(ApiError::UnsupportedMediaType) }
}

/// A decoded body: its tweets, and whether they came as an array.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub inputs: Vec<TweetInput>,
    pub array: bool,
}

/// Decodes the body as one `TweetInput` object or an array of at most
/// `max_tweets` of them, through the proto's JSON mapping (unknown fields are
/// errors) with the Spanish aliases of [`naming`]. Errors name the JSON path
/// of the offending value, e.g. `[3].country`.
///
/// An array is decoded element by element and refused (413) at element
/// `max_tweets + 1`, before the rest is read: whatever the body's shape, what
/// a request holds in memory is bounded by `max_tweets` tweets and the body,
/// never by how many elements the body packs (a 4 MiB `[{},{},…]` is 1.4
/// million of them).
pub(crate) fn decode(body: &[u8], max_tweets: usize) -> Result<Decoded, ApiError> {
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => {
            let refused = std::cell::RefCell::new(None);
            let inputs = decode_json_seed(body, BoundedArray { max_tweets, refused: &refused });
            if let Some(error) = refused.into_inner() {
                return Err(error);
            }
            let inputs = inputs?;
            if inputs.is_empty() {
                return Err(ApiError::BadRequest("the array holds no tweets".into()));
            }
            Ok(Decoded { inputs, array: true })
        }
        Some(b'{') => Ok(Decoded { inputs: vec![decode_json::<NamedInput>(body)?.input], array: false }),
        Some(_) => Err(ApiError::InvalidJson {
            field: None,
            message: "body must be a JSON object or an array of objects".into(),
        }),
        None => Err(ApiError::BadRequest("request body is empty".into())),
    }
}

/// An array of tweet objects, decoded one element at a time: at most
/// `max_tweets` of them, all of one naming (that of the first object that
/// named a field). A refusal that is not a JSON error goes to `refused`.
struct BoundedArray<'a> {
    max_tweets: usize,
    refused: &'a std::cell::RefCell<Option<ApiError>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<TweetInput>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<TweetInput>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of tweet objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut elements: A) -> Result<Self::Value, A::Error> {
        let mut first: Option<(Naming, String)> = None;
        // Sized by what the body says, never beyond the cap.
        let mut inputs = Vec::with_capacity(elements.size_hint().unwrap_or(0).min(self.max_tweets));
        while let Some(NamedInput { input, naming }) = elements.next_element::<NamedInput>()? {
            let index = inputs.len();
            if index == self.max_tweets {
                *self.refused.borrow_mut() = Some(ApiError::PayloadTooLarge(format!(
                    "more than {} tweets in one request; at most {} are accepted",
                    self.max_tweets, self.max_tweets
                )));
                return Err(serde::de::Error::custom("too many tweets"));
            }
            match (&first, naming) {
                (Some((expected, first_key)), Some((naming, key))) if *expected != naming => {
                    *self.refused.borrow_mut() = Some(ApiError::InvalidJson {
                        message: naming::mixed_naming_message(&key, (*expected, first_key)),
                        field: Some(format!("[{index}].{key}")),
                    });
                    return Err(serde::de::Error::custom("mixed namings"));
                }
                (None, naming @ Some(_)) => first = naming,
                _ => {}
            }
            inputs.push(input);
        }
        Ok(inputs)
    }
}

fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    decode_json_seed(body, std::marker::PhantomData::<T>)
}

/// Decodes `body` with `seed`; a JSON error names the path of the offending value.
fn decode_json_seed<'de, S: serde::de::DeserializeSeed<'de>>(body: &'de [u8], seed: S) -> Result<S::Value, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let value =
        seed.deserialize(serde_path_to_error::Deserializer::new(&mut deserializer, &mut track)).map_err(|error| {
            let path = track.path().to_string();
            ApiError::InvalidJson { field: (path != "." && path != "?").then_some(path), message: error.to_string() }
        })?;
    // Trailing data after the JSON value is an error too.
    deserializer.end().map_err(|error| ApiError::InvalidJson { field: None, message: error.to_string() })?;
    Ok(value)
}

/// Header that makes a request safe to retry.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Namespace of the UUIDv5 tweet ids derived from an idempotency key.
const IDEMPOTENT_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c1b_2f9e_4d0a_4c57_9e3b_8a51_c0de_c11a);

/// The request's `Idempotency-Key`, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())),
    }
}

/// Validates every input (one bad element rejects the request) and gives each
/// tweet its id and received time.
///
/// Ids are UUIDv7, or, with an idempotency key, UUIDv5 of (key, position,
/// tweet): a retry of the same request carries the same ids, whichever API
/// replica takes it, and the stores count each id once. The same key with
/// different tweets gives different ids, so reusing a key never drops tweets.
pub(crate) fn accept(
    inputs: Vec<TweetInput>,
    array: bool,
    idempotency_key: Option<&str>,
) -> Result<Vec<TweetRecord>, ApiError> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let received_at = Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 };
    inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| {
            let tweet = clima_tweet::validate_input(input).map_err(|error| ApiError::InvalidTweet {
                field: if array { format!("[{index}].{}", error.field()) } else { error.field().to_owned() },
                message: error.to_string(),
            })?;
            let id = match idempotency_key {
                Some(key) => {
                    let name = format!("{key}\n{index}\n{}\n{}\n{}", tweet.country, tweet.weather, tweet.description);
                    uuid::Uuid::new_v5(&IDEMPOTENT_ID_NAMESPACE, name.as_bytes())
                }
                None => uuid::Uuid::now_v7(),
            };
            Ok(TweetRecord {
                id: id.to_string(),
                received_at: Some(received_at),
                tweet: Some(tweet),
                trace_context: Default::default(),
            })
        })
        .collect()
}

mod naming;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
