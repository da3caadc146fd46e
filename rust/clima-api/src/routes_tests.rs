//! Every 4xx the API answers, through `router()` with `oneshot`: no listener,
//! no writer, no broker. The writers point at a port where nothing listens,
//! so a request that reached the hand-off would answer 503, not a 4xx: each
//! 4xx here is also proof that nothing was published.

use axum::{Router, body::Body};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::{ApiConfig, router};

const TWEET: &str = r#"{"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#;

fn api(config: ApiConfig) -> Router {
    router(config).expect("a valid config")
}

fn unreachable_writers() -> ApiConfig {
    ApiConfig::with_writers(vec!["http://127.0.0.1:1".to_owned()])
}

/// Sends one request; the status and the JSON answer.
async fn send(app: Router, request: Request<Body>) -> (StatusCode, serde_json::Value, http::HeaderMap) {
    let response = app.oneshot(request).await.expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a complete body").to_bytes();
    let answer = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("answer is not JSON: {}", String::from_utf8_lossy(&bytes)));
    (parts.status, answer, parts.headers)
}

async fn post_json(app: Router, body: impl Into<Body>) -> (StatusCode, serde_json::Value) {
    let request = Request::post("/input").header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap();
    let (status, answer, _) = send(app, request).await;
    (status, answer)
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let request = Request::post("/input").header(header::CONTENT_TYPE, "text/plain").body(Body::from(TWEET)).unwrap();
    let (status, answer, _) = send(api(unreachable_writers()), request).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let config = ApiConfig { max_body_bytes: 1024, ..unreachable_writers() };
    let huge = format!("[{}]", [TWEET; 20].join(","));
    assert!(huge.len() > 1024);
    let (status, answer) = post_json(api(config), huge).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
}

#[tokio::test]
async fn an_array_over_max_tweets_is_413() {
    let config = ApiConfig { max_tweets: 3, ..unreachable_writers() };
    let (status, _) = post_json(api(config.clone()), format!("[{}]", [TWEET; 4].join(","))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit it is accepted, and only then meets the (missing) writer.
    let (status, answer) = post_json(api(config), format!("[{}]", [TWEET; 3].join(","))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
}

/// The cap is checked while the array is read, before the rest is decoded:
/// what follows the element after the cap, here not even JSON, is never read
/// (an API that decoded the whole array first answered this body 400).
#[tokio::test]
async fn an_array_over_max_tweets_is_413_before_the_rest_is_read() {
    let config = ApiConfig { max_tweets: 3, ..unreachable_writers() };
    let body = format!("[{}, and then no JSON at all", [TWEET; 4].join(","));
    let (status, answer) = post_json(api(config), body).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
}

#[tokio::test]
async fn a_bad_tweet_in_an_array_is_422_and_names_its_place() {
    let body = r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":"GTM","weather":"Soleado"}]"#;
    let (status, answer) = post_json(api(unreachable_writers()), body).await;
    assert_eq!(
        (status, answer["error"].as_str(), answer["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_tweet"), Some("[1].country"))
    );
}

#[tokio::test]
async fn json_of_the_wrong_shape_or_encoding_is_400() {
    let (status, answer) =
        post_json(api(unreachable_writers()), r#"{"description":"a","country":["GT"],"weather":"Soleado"}"#).await;
    assert_eq!(
        (status, answer["error"].as_str(), answer["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"), Some("country"))
    );
    let invalid_utf8 = b"{\"description\":\"\xff\",\"country\":\"GT\",\"weather\":\"Soleado\"}".to_vec();
    let (status, answer) = post_json(api(unreachable_writers()), invalid_utf8).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn without_the_api_key_input_is_401_and_the_probes_stay_open() {
    let config = ApiConfig { api_key: Some("s3cret-key".to_owned()), ..unreachable_writers() };
    let app = api(config);
    for header in [None, Some(("authorization", "Bearer wrong")), Some(("x-api-key", "s3cret-ke"))] {
        let mut request = Request::post("/input").header(header::CONTENT_TYPE, "application/json");
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let (status, answer, headers) = send(app.clone(), request.body(Body::from(TWEET)).unwrap()).await;
        assert_eq!((status, answer["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{header:?}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // The right key gets past the check (to the missing writer: 503).
    let request = Request::post("/input")
        .header(header::CONTENT_TYPE, "application/json")
        .header("authorization", "bearer s3cret-key")
        .body(Body::from(TWEET))
        .unwrap();
    assert_eq!(send(app.clone(), request).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let probe = app.oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
}
