use clima_proto::v1::{Tweet, TweetBatch, TweetInput, TweetRecord, Weather};
use pbjson_types::Timestamp;
use prost::Message;

use super::*;

fn input(description: &str, country: &str, weather: &str) -> TweetInput {
    TweetInput { description: description.into(), country: country.into(), weather: weather.into() }
}

#[test]
fn valid_input_is_normalised() {
    let tweet = validate_input(input("Está lloviendo", "gt", "LLUVIOSO")).unwrap();
    assert_eq!(tweet.country, "GT");
    assert_eq!(tweet.weather(), Weather::Lluvioso);
    assert_eq!(tweet.description, "Está lloviendo");
}

#[test]
fn nubloso_is_nublado_in_any_case() {
    for name in ["Nubloso", "nubloso", "NUBLADO", "nUbLaDo"] {
        assert_eq!(parse_weather(name), Some(Weather::Nublado), "{name}");
    }
    assert_eq!(parse_weather("Soleado"), Some(Weather::Soleado));
}

#[test]
fn bad_fields_are_named() {
    let cases = [
        (input("", "GT", "Soleado"), "description"),
        (input("   ", "GT", "Soleado"), "description"),
        (input(&"a".repeat(MAX_DESCRIPTION_CHARS + 1), "GT", "Soleado"), "description"),
        (input("x", "ZZ", "Soleado"), "country"),
        (input("x", "GTM", "Soleado"), "country"),
        (input("x", "Guatemala", "Soleado"), "country"),
        (input("x", "", "Soleado"), "country"),
        (input("x", "GT", "Nevado"), "weather"),
        (input("x", "GT", ""), "weather"),
        (input("x", "GT", " Soleado"), "weather"),
    ];
    for (bad, field) in cases {
        let err = validate_input(bad.clone()).expect_err(&format!("{bad:?} must be rejected"));
        assert_eq!(err.field(), field, "{bad:?}: {err}");
    }
}

#[test]
fn description_limit_counts_characters_not_bytes() {
    let accents = "é".repeat(MAX_DESCRIPTION_CHARS);
    assert!(accents.len() > MAX_DESCRIPTION_CHARS);
    assert!(validate_input(input(&accents, "ES", "Soleado")).is_ok());
}

#[test]
fn canonical_tweet_rejects_lower_case_country_and_unspecified_weather() {
    let lower = Tweet { description: "x".into(), country: "gt".into(), weather: Weather::Soleado as i32 };
    assert_eq!(validate_tweet(&lower).unwrap_err().field(), "country");
    let unspecified = Tweet { description: "x".into(), country: "GT".into(), weather: 0 };
    assert_eq!(validate_tweet(&unspecified), Err(TweetError::UnspecifiedWeather));
    let out_of_range = Tweet { description: "x".into(), country: "GT".into(), weather: 42 };
    assert_eq!(validate_tweet(&out_of_range).unwrap_err().field(), "weather");
}

fn record() -> TweetRecord {
    TweetRecord {
        id: "0192e4a0-7c1e-7cc3-9a51-3f1d2b4c5d6e".into(),
        received_at: Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }),
        tweet: Some(Tweet {
            description: "Soleado hoy".into(),
            country: "MX".into(),
            weather: Weather::Soleado as i32,
        }),
        trace_context: Default::default(),
    }
}

#[test]
fn envelope_round_trips_and_validates() {
    let mut second = record();
    second.id = "0192e4a0-7c1e-7cc3-9a51-3f1d2b4c5d6f".into();
    second.trace_context.insert("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let batch = vec![record(), second];
    let body = envelope::encode(&batch);
    assert_eq!(envelope::decode(Some(envelope::CONTENT_TYPE), &body).unwrap(), batch);
    assert_eq!(envelope::decode(None, &body).unwrap(), batch, "no content type: a TweetBatch");
    // The hand-rolled encoding is byte for byte the generated one.
    assert_eq!(body, TweetBatch { records: batch.clone() }.encode_to_vec());
    assert_eq!(body.len(), batch.iter().map(envelope::encoded_size).sum::<usize>());
    assert_eq!(received_minute(&batch[0]), 1_700_000_000 / 60);

    // One-record messages of earlier versions still decode.
    let legacy = record().encode_to_vec();
    assert_eq!(envelope::decode(Some(envelope::CONTENT_TYPE_RECORD), &legacy).unwrap(), vec![record()]);

    let mut no_id = record();
    no_id.id = "not-a-uuid".into();
    let bad = envelope::encode(&[record(), no_id]);
    assert!(matches!(envelope::decode(None, &bad), Err(envelope::EnvelopeError::Invalid { index: 1, .. })));
    assert!(matches!(envelope::decode(None, b"\xff\xff\xff"), Err(envelope::EnvelopeError::Decode { .. })));
    assert!(matches!(envelope::decode(None, b""), Err(envelope::EnvelopeError::Empty)));
    assert!(matches!(envelope::decode(Some("text/plain"), &body), Err(envelope::EnvelopeError::ContentType(_))));
}

#[test]
fn json_mapping_comes_from_the_proto() {
    let parsed: TweetInput =
        serde_json::from_str(r#"{"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#).unwrap();
    assert_eq!(parsed, input("Está lloviendo", "GT", "Lluvioso"));

    let unknown =
        serde_json::from_str::<TweetInput>(r#"{"description":"x","country":"GT","weather":"Soleado","wheather":1}"#);
    assert!(unknown.unwrap_err().to_string().contains("wheather"));

    let wrong_type = serde_json::from_str::<TweetInput>(r#"{"description":"x","country":7,"weather":"Soleado"}"#);
    assert!(wrong_type.is_err());

    // Records map to proto3 JSON (RFC 3339 time, enum names) and back.
    let json = serde_json::to_value(record()).unwrap();
    assert!(json["receivedAt"].as_str().unwrap().starts_with("2023-11-14T22:13:20.000000005"), "{json}");
    assert_eq!(json["tweet"]["weather"], "WEATHER_SOLEADO");
    assert_eq!(serde_json::from_value::<TweetRecord>(json).unwrap(), record());
}

#[test]
fn only_the_canonical_spelling_of_a_uuid_is_an_id() {
    let canonical = record();
    assert_eq!(validate_record(&canonical), Ok(()));
    let id = canonical.id.clone();
    for other_spelling in [
        id.to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.replace('-', ""),
        format!(" {id}"),
        "not-a-uuid".to_owned(),
    ] {
        let record = TweetRecord { id: other_spelling.clone(), ..record() };
        assert_eq!(validate_record(&record), Err(TweetError::InvalidId(other_spelling)));
    }
}

#[test]
fn a_new_record_must_be_received_about_now() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let at = |seconds| TweetRecord { received_at: Some(Timestamp { seconds, nanos: 0 }), ..record() };
    assert_eq!(check_received_now(&at(1_700_000_000 - 299), now), Ok(()));
    assert_eq!(check_received_now(&at(1_700_000_000 + 299), now), Ok(()));
    assert_eq!(check_received_now(&at(1_700_000_000 - 301), now), Err(TweetError::ReceivedAtOutOfWindow(-301)));
    let year_9999 = 253_402_300_799;
    assert_eq!(check_received_now(&at(year_9999), now).unwrap_err().field(), "received_at");
    assert_eq!(
        check_received_now(&TweetRecord { received_at: None, ..record() }, now),
        Err(TweetError::MissingReceivedAt)
    );
}
