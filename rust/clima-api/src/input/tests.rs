use super::*;

fn decode_str(body: &str) -> Result<Decoded, ApiError> {
    decode(body.as_bytes(), 10_000)
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
    let records = accept(many.inputs, true, None).unwrap();
    assert_eq!(records[1].tweet.as_ref().unwrap().country, "MX");
    assert_eq!(records[1].tweet.as_ref().unwrap().weather(), clima_proto::v1::Weather::Nublado);
    assert_ne!(records[0].id, records[1].id);
    assert_eq!(uuid::Uuid::parse_str(&records[0].id).unwrap().get_version_num(), 7);
}

#[test]
fn json_errors_name_the_path() {
    let (field, message) = json_error(
        r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":5,"weather":"Soleado"}]"#,
    );
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
    match accept(single.inputs, single.array, None) {
        Err(ApiError::InvalidTweet { field, .. }) => assert_eq!(field, "country"),
        other => panic!("{other:?}"),
    }
    let array = decode_str(r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"b","country":"GT","weather":"Nevado"}]"#).unwrap();
    match accept(array.inputs, array.array, None) {
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

#[test]
fn an_idempotency_key_gives_the_same_ids_to_the_same_tweets() {
    let body = r#"[{"description":"a","country":"GT","weather":"Soleado"},{"description":"a","country":"GT","weather":"Soleado"}]"#;
    let ids = |key: Option<&str>, body: &str| -> Vec<String> {
        let decoded = decode_str(body).unwrap();
        accept(decoded.inputs, decoded.array, key).unwrap().into_iter().map(|record| record.id).collect()
    };
    let first = ids(Some("order-1"), body);
    assert_eq!(first, ids(Some("order-1"), body), "a retry carries the same ids");
    assert_ne!(first[0], first[1], "identical tweets at different positions are different tweets");
    assert_ne!(first, ids(Some("order-2"), body));
    assert_ne!(first[0], ids(Some("order-1"), r#"{"description":"b","country":"GT","weather":"Soleado"}"#)[0]);
    assert_ne!(ids(None, body), ids(None, body), "without a key every request is new");
}

#[test]
fn idempotency_keys_are_bounded_visible_ascii() {
    let mut headers = HeaderMap::new();
    assert_eq!(idempotency_key(&headers).unwrap(), None);
    headers.insert(IDEMPOTENCY_KEY, "0192e4a0-7c1e".parse().unwrap());
    assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("0192e4a0-7c1e"));
    for bad in ["", "has space", &"k".repeat(256)] {
        headers.insert(IDEMPOTENCY_KEY, bad.parse().unwrap());
        assert!(idempotency_key(&headers).is_err(), "{bad:?}");
    }
}

#[test]
fn spanish_field_names_are_aliases_in_any_letter_case() {
    let one = decode_str(r#"{"descripcion":"Está nublado","Pais":"gt","CLIMA":"Nublado"}"#).unwrap();
    assert_eq!(
        (one.inputs[0].description.as_str(), one.inputs[0].country.as_str(), one.inputs[0].weather.as_str()),
        ("Está nublado", "gt", "Nublado")
    );
    let many = decode_str(
        r#"[{"descripcion":"a","pais":"GT","clima":"Soleado"},{"Clima":"Lluvioso","Descripcion":"b","PAIS":"MX"}]"#,
    )
    .unwrap();
    assert_eq!(many.inputs[1].country, "MX");
    // Only the Spanish aliases fold letter case; the proto names are as the mapping has them.
    assert!(json_error(r#"{"Description":"a","country":"GT","weather":"Soleado"}"#).1.contains("Description"));
}

#[test]
fn mixing_the_namings_is_an_error_that_names_the_field() {
    let (field, message) = json_error(r#"{"description":"a","pais":"GT","weather":"Soleado"}"#);
    assert_eq!(field.as_deref(), Some("pais"), "{message}");
    assert!(message.contains("description"), "{message}");

    let (field, _) = json_error(
        r#"[{"descripcion":"a","pais":"GT","clima":"Soleado"},{"description":"b","country":"GT","weather":"Soleado"}]"#,
    );
    assert_eq!(field.as_deref(), Some("[1].description"));

    let (field, _) = json_error(r#"[{"descripcion":"a","Pais":"GT","clima":"Soleado","description":"b"}]"#);
    assert_eq!(field.as_deref(), Some("[0].description"));

    let (_, message) = json_error(r#"{"descripcion":"a","pais":"GT","clima":"Soleado","pays":"x"}"#);
    assert!(message.contains("pays"), "unknown fields stay errors: {message}");
}

/// The cap on tweets is checked while the array is read: the element after
/// the cap is refused (413) before the rest of the body is decoded, so a
/// body of a million empty objects costs no million structs.
#[test]
fn an_array_over_the_cap_is_refused_at_the_element_after_it() {
    let tweet = r#"{"description":"a","country":"GT","weather":"Soleado"}"#;
    let three = format!("[{tweet},{tweet},{tweet}]");
    assert_eq!(decode(three.as_bytes(), 3).unwrap().inputs.len(), 3);
    assert!(matches!(decode(three.as_bytes(), 2), Err(ApiError::PayloadTooLarge(_))));
    // Refused before the rest is read: the invalid JSON after the cap is never reached.
    let refused_early = format!("[{tweet},{tweet},{tweet}, this is not JSON");
    assert!(matches!(decode(refused_early.as_bytes(), 2), Err(ApiError::PayloadTooLarge(_))));
    // Empty objects are elements too (each would fail validation, later).
    let empties = format!("[{}{{}}]", "{},".repeat(1_000_000));
    assert!(matches!(decode(empties.as_bytes(), 10_000), Err(ApiError::PayloadTooLarge(_))));
}
