use super::*;

fn decode_str(body: &str) -> Result<Decoded, ApiError> {
    decode(body.as_bytes())
}

fn json_error(body: &str) -> (Option<String>, String) {
    match decode_str(body) {
        Err(ApiError::InvalidJson { field, message }) => (field, message),
        other => panic!("{body}: expected invalid JSON, got {other:?}"),
    }
}

#[test]
fn one_object_or_an_array() {
    let one = decode_str(r#" {"description":"Está lloviendo","country":"GT","weather":"Lluvioso"}"#).unwrap();
    assert!(!one.array);
    assert_eq!(one.inputs[0].country, "GT");
    let many = decode_str(
        r#"[{"description":"a","country":"GT","weather":"Lluvioso"},{"description":"b","country":"mx","weather":"Nubloso"}]"#,
    )
    .unwrap();
    assert!(many.array);
    assert_eq!(many.inputs.len(), 2);
    let records = accept(many.inputs, true).unwrap();
    assert_eq!(records[1].tweet.as_ref().unwrap().country, "MX");
    assert_eq!(records[1].tweet.as_ref().unwrap().weather(), clima_proto::v1::Weather::Nublado);
    assert_ne!(records[0].id, records[1].id);
    assert_eq!(uuid::Uuid::parse_str(&records[0].id).unwrap().get_version_num(), 7);
}

#[test]
fn json_errors_name_the_path() {
    let (field, message) = json_error(r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":5,"weather":"Soleado"}]"#);
    assert_eq!(field.as_deref(), Some("[1].country"));
    assert!(message.contains("string"), "{message}");

    let (_, message) = json_error(r#"{"description":"a","country":"GT","weather":"Soleado","wheather":"x"}"#);
    assert!(message.contains("wheather"), "unknown fields are rejected: {message}");

    assert_eq!(json_error(r#"{"description":"a""#).0, None);
    assert!(json_error(r#"{"description":"a","country":"GT","weather":"Soleado"} trailing"#).1.contains("trailing"));
    assert!(json_error("42").1.contains("object or an array"));
    assert!(json_error(r#"[1, 2]"#).0.is_some());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(decode_str(&deep), Err(ApiError::InvalidJson { .. })));
}

#[test]
fn empty_bodies_and_arrays_are_bad_requests() {
    assert!(matches!(decode_str("  "), Err(ApiError::BadRequest(_))));
    assert!(matches!(decode_str("[]"), Err(ApiError::BadRequest(_))));
}

#[test]
fn invalid_tweets_name_the_field_and_its_index() {
    let single = decode_str(r#"{"description":"a","country":"XX","weather":"Soleado"}"#).unwrap();
    match accept(single.inputs, single.array) {
        Err(ApiError::InvalidTweet { field, .. }) => assert_eq!(field, "country"),
        other => panic!("{other:?}"),
    }
    let array = decode_str(r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":"GT","weather":"Nevado"}]"#).unwrap();
    match accept(array.inputs, array.array) {
        Err(ApiError::InvalidTweet { field, message }) => {
            assert_eq!(field, "[1].weather");
            assert!(message.contains("Nevado"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn content_type_must_be_json() {
    let mut headers = HeaderMap::new();
    assert!(matches!(require_json(&headers), Err(ApiError::UnsupportedMediaType)));
    headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    assert!(require_json(&headers).is_err());
    headers.insert(CONTENT_TYPE, "Application/JSON; charset=utf-8".parse().unwrap());
    assert!(require_json(&headers).is_ok());
}
