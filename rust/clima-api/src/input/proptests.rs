//! Property tests of the `/input` decoder: whatever the bytes, the answer is a
//! decoded request or a client error, never a panic; valid tweets in any
//! spelling clients use are accepted and normalised. Case count:
//! `PROPTEST_CASES` (CI: 2000 per property; README shows a longer run).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn decode_and_accept(body: &[u8]) -> Result<Vec<TweetRecord>, ApiError> {
    let decoded = decode(body, 10_000)?;
    accept(decoded.inputs, decoded.array, Some("proptest"))
}

fn is_client_error(error: &ApiError) -> bool {
    matches!(error, ApiError::InvalidJson { .. } | ApiError::InvalidTweet { .. } | ApiError::BadRequest(_))
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,12}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

const COUNTRIES: &[&str] = &["GT", "mx", "Us", "ca", "BR", "ar", "CO", "pe", "CL", "es", "SV", "hn", "XK", "jp", "DE"];
const WEATHERS: &[&str] = &["Lluvioso", "nublado", "NUBLOSO", "Soleado", "sOlEaDo", "lluvioso"];

fn valid_tweet() -> impl Strategy<Value = Value> {
    (prop::sample::select(COUNTRIES), prop::sample::select(WEATHERS), "[^\\s]{1}.{0,278}").prop_map(
        |(country, weather, description)| json!({"description": description, "country": country, "weather": weather}),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn arbitrary_bytes_are_decoded_or_rejected_as_client_errors(body in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = decode_and_accept(&body) {
            prop_assert!(is_client_error(&error), "{error:?}");
        }
    }

    #[test]
    fn arbitrary_json_is_decoded_or_rejected_as_client_errors(value in json_value()) {
        if let Err(error) = decode_and_accept(value.to_string().as_bytes()) {
            prop_assert!(is_client_error(&error), "{error:?}");
        }
    }

    #[test]
    fn valid_tweets_in_any_spelling_are_accepted_and_normalised(tweets in prop::collection::vec(valid_tweet(), 1..20)) {
        let records = decode_and_accept(json!(tweets).to_string().as_bytes()).unwrap();
        prop_assert_eq!(records.len(), tweets.len());
        for (record, sent) in records.iter().zip(&tweets) {
            let tweet = record.tweet.as_ref().unwrap();
            prop_assert_eq!(&tweet.country, &sent["country"].as_str().unwrap().to_uppercase());
            prop_assert!(tweet.weather() != clima_proto::v1::Weather::Unspecified);
            prop_assert_eq!(&tweet.description, sent["description"].as_str().unwrap());
        }
    }

    #[test]
    fn one_bad_field_rejects_the_request_and_names_it(
        tweets in prop::collection::vec(valid_tweet(), 1..8),
        index in any::<prop::sample::Index>(),
        field in prop::sample::select(&["description", "country", "weather"][..]),
        replacement in json_value(),
    ) {
        let mut tweets = tweets;
        let index = index.index(tweets.len());
        tweets[index][field] = replacement;
        match decode_and_accept(json!(tweets).to_string().as_bytes()) {
            // The replacement happened to be valid (e.g. another valid country).
            Ok(records) => prop_assert_eq!(records.len(), tweets.len()),
            Err(ApiError::InvalidJson { field: Some(path), .. }) => prop_assert!(path.starts_with(&format!("[{index}]")), "{path}"),
            Err(ApiError::InvalidTweet { field: path, .. }) => prop_assert_eq!(path, format!("[{index}].{field}")),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
