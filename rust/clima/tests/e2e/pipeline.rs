use serde_json::json;

use crate::helpers::TestStack;

#[tokio::test]
async fn a_known_mix_is_counted_exactly_in_redis_and_in_valkey() {
    let stack = TestStack::spawn().await;
    let mut expected = clima_store::Counts::default();

    // Single objects, with the letter cases and spellings clients really send.
    for (description, country, weather, canonical) in [
        ("Está lloviendo", "GT", "Lluvioso", "Lluvioso"),
        ("Nublado en la capital", "gt", "nubloso", "Nublado"),
        ("Sol", "MX", "SOLEADO", "Soleado"),
    ] {
        let body = json!({"description": description, "country": country, "weather": weather}).to_string();
        let (status, answer) = stack.post_input(&body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"], 1);
        expected.add(&country.to_uppercase(), canonical);
    }

    // Arrays.
    let array: Vec<_> = (0..50)
        .map(|i| {
            let (country, weather) =
                [("US", "Soleado"), ("GT", "Lluvioso"), ("ES", "Nublado"), ("BR", "Lluvioso")][i % 4];
            expected.add(country, weather);
            json!({"description": format!("reporte {i}"), "country": country, "weather": weather})
        })
        .collect();
    let (status, answer) = stack.post_input(&json!(array).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["ids"].as_array().unwrap().len(), 50);

    // Invalid ones, alone and inside arrays with valid tweets: none is counted.
    for body in [
        json!({"description": "x", "country": "ZZ", "weather": "Soleado"}).to_string(),
        json!({"description": "x", "country": "GT", "weather": "Nevado"}).to_string(),
        json!({"description": "", "country": "GT", "weather": "Soleado"}).to_string(),
        json!([{"description": "ok", "country": "GT", "weather": "Soleado"}, {"description": "x", "country": "GT"}])
            .to_string(),
        r#"{"description": "x", "country": "GT", "weather": "Soleado", "extra": 1}"#.to_owned(),
        r#"[{"description": "ok", "country": "GT", "weather": "Soleado"}, 7]"#.to_owned(),
        "not json".to_owned(),
    ] {
        let (status, answer) = stack.post_input(&body).await;
        assert!((400..500).contains(&status), "{body} → {status} {answer}");
        assert!(answer["error"].is_string() && answer["message"].is_string(), "{answer}");
    }

    let (redis, valkey) = stack.counted(expected.total).await;
    for (store, counts) in [("redis", &redis), ("valkey", &valkey)] {
        assert_eq!(counts.total, expected.total, "{store} total");
        assert_eq!(counts.by_country, expected.by_country, "{store} per country");
        assert_eq!(counts.by_weather, expected.by_weather, "{store} per weather");
        assert_eq!(counts.by_country_weather, expected.by_country_weather, "{store} per country×weather");
    }
    assert_eq!(redis.per_minute.iter().map(|(_, n)| n).sum::<u64>(), expected.total);
    assert_eq!(redis.per_minute, valkey.per_minute, "both stores bucket by the API's received time");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_is_counted_once() {
    let stack = TestStack::spawn().await;
    let client = reqwest::Client::new();
    let body = json!([
        {"description": "a", "country": "CO", "weather": "Soleado"},
        {"description": "b", "country": "PE", "weather": "Nublado"},
    ])
    .to_string();
    let post = |key: &'static str| {
        client
            .post(format!("{}/input", stack.api))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
    };
    let first: serde_json::Value = post("retry-me").await.unwrap().json().await.unwrap();
    let again: serde_json::Value = post("retry-me").await.unwrap().json().await.unwrap();
    assert_eq!(first["ids"], again["ids"], "the retry carries the same ids");
    let other: serde_json::Value = post("another-request").await.unwrap().json().await.unwrap();
    assert_ne!(first["ids"], other["ids"]);

    let (redis, valkey) = stack.counted(4).await;
    for counts in [&redis, &valkey] {
        assert_eq!(counts.total, 4, "two requests of two tweets; the retry counted nowhere");
        assert_eq!(counts.by_country["CO"], 2);
    }
}

/// The shape load clients of the reference design send: one array of 10,000
/// tweets with Spanish field names. It is more than one writer call holds, so
/// it also crosses the API's split into several batches.
#[tokio::test]
async fn a_10000_tweet_array_with_spanish_keys_is_counted_exactly() {
    let stack = TestStack::spawn().await;
    let mut expected = clima_store::Counts::default();
    let countries = &clima_tweet::sample::SAMPLE.countries;
    let weathers = ["Lluvioso", "Nubloso", "Soleado"];
    let array: Vec<_> = (0..10_000)
        .map(|i| {
            let (country, weather) = (countries[i % countries.len()], weathers[i % weathers.len()]);
            expected.add(country, if weather == "Nubloso" { "Nublado" } else { weather });
            json!({"descripcion": format!("Reporte número {i}"), "Pais": country, "Clima": weather})
        })
        .collect();
    let (status, answer) = stack.post_input(&json!(array).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 10_000);

    // Mixing the namings in one request is refused, names the field, and counts nothing.
    let mixed =
        r#"[{"descripcion":"a","pais":"GT","clima":"Soleado"},{"description":"b","country":"GT","weather":"Soleado"}]"#;
    let (status, answer) = stack.post_input(mixed).await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("[1].description")), "{answer}");

    let (redis, valkey) = stack.counted(expected.total).await;
    for (store, counts) in [("redis", &redis), ("valkey", &valkey)] {
        assert_eq!(counts.total, 10_000, "{store} total");
        assert_eq!(counts.by_country, expected.by_country, "{store} per country");
        assert_eq!(counts.by_country_weather, expected.by_country_weather, "{store} per country×weather");
    }
}

/// `clima recount` rebuilds the Redis side from the Kafka log and agrees with
/// the live counts; a live count that drifted from the log is reported.
#[tokio::test]
async fn a_recount_from_the_kafka_log_agrees_with_the_live_counts() {
    use redis::AsyncCommands;

    let stack = TestStack::spawn().await;
    let countries = ["GT", "MX", "ES"];
    let array: Vec<_> = (0..300)
        .map(|i| json!({"description": format!("r{i}"), "country": countries[i % 3], "weather": "Soleado"}))
        .collect();
    for _ in 0..3 {
        let (status, answer) = stack.post_input(&json!(array).to_string()).await;
        assert_eq!(status, 202, "{answer}");
    }
    stack.counted(900).await;

    let recount = || async {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_clima"))
            .args(["recount", "--from-beginning", "--json", "--kafka-topic", &stack.name, "--key-prefix", &stack.name])
            .args(["--kafka-brokers", &clima_testkit::kafka_brokers(), "--store-url", &clima_testkit::redis_url()])
            .output()
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&output.stderr)));
        (output.status.success(), report)
    };
    let (agreed, report) = recount().await;
    assert!(agreed, "{report}");
    assert_eq!((report["recount"]["total"].as_u64(), report["agree"].as_bool()), (Some(900), Some(true)), "{report}");

    let mut redis =
        redis::Client::open(clima_testkit::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis.hincr(stack.redis.keys().by_country(), "GT", 1).await.unwrap();
    let (agreed, report) = recount().await;
    assert!(!agreed, "a drifted live count went unnoticed: {report}");
    assert_eq!(report["recount"]["by_country"]["GT"], 300);
}
