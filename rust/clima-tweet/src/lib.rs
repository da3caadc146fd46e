//! The rules of a weather tweet, shared by every clima service.
//!
//! - [`validate_input`] turns the raw HTTP body element ([`TweetInput`]) into a
//!   canonical [`Tweet`], or says which field is wrong and why.
//! - [`validate_record`] checks a [`TweetRecord`] as writers receive it over
//!   gRPC and consumers read it from a broker.
//! - [`envelope`] is how a record travels on Kafka and RabbitMQ.

pub mod envelope;
pub mod sample;

use clima_proto::v1::{Tweet, TweetInput, TweetRecord, Weather};

/// Longest description accepted, in Unicode characters (a tweet's length).
pub const MAX_DESCRIPTION_CHARS: usize = 280;

/// How far a new record's `received_at` may be from a writer's clock, either
/// way. The API stamps it a moment before the writer call, so only clock skew
/// between hosts is allowed for; a record from the far past or future (year
/// 9999) would fill per-minute buckets nobody reads and outlive their retention.
pub const RECEIVED_AT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Why a tweet or record is invalid. [`TweetError::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TweetError {
    /// `description` is empty or blank.
    #[error("description must not be empty")]
    EmptyDescription,
    /// `description` is over [`MAX_DESCRIPTION_CHARS`] characters (the count).
    #[error("description has {0} characters; at most {MAX_DESCRIPTION_CHARS} are allowed")]
    DescriptionTooLong(usize),
    /// `country` is not an ISO 3166-1 alpha-2 code.
    #[error("country {0:?} is not an ISO 3166-1 alpha-2 code (e.g. \"GT\")")]
    UnknownCountry(String),
    /// `weather` is none of the three.
    #[error("weather {0:?} is not one of Lluvioso, Nublado, Soleado")]
    UnknownWeather(String),
    /// `weather` is missing.
    #[error("weather must be set")]
    UnspecifiedWeather,
    /// A record's `id` is not a canonical UUID.
    #[error(
        "id {0:?} is not a UUID in canonical form (lower case, hyphenated, e.g. \"0192d1c4-5f1e-7b3a-9c2d-1e2f3a4b5c6d\")"
    )]
    InvalidId(String),
    /// A record has no `received_at`.
    #[error("received_at must be set")]
    MissingReceivedAt,
    /// A record's `received_at` is over [`RECEIVED_AT_WINDOW`] away from now (by this many seconds).
    #[error("received_at is {0} s away from this server's clock; at most {window} s are allowed", window = RECEIVED_AT_WINDOW.as_secs())]
    ReceivedAtOutOfWindow(i64),
    /// A record has no tweet.
    #[error("tweet must be set")]
    MissingTweet,
}

impl TweetError {
    /// The JSON/proto field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::EmptyDescription | Self::DescriptionTooLong(_) => "description",
            Self::UnknownCountry(_) => "country",
            Self::UnknownWeather(_) | Self::UnspecifiedWeather => "weather",
            Self::InvalidId(_) => "id",
            Self::MissingReceivedAt | Self::ReceivedAtOutOfWindow(_) => "received_at",
            Self::MissingTweet => "tweet",
        }
    }
}

/// Validates one element of a `POST /input` body and returns its canonical form:
/// country upper-cased, weather as the enum (any letter case; `Nubloso` is
/// `Nublado`), description unchanged.
pub fn validate_input(input: TweetInput) -> Result<Tweet, TweetError> {
    let weather = parse_weather(&input.weather).ok_or_else(|| TweetError::UnknownWeather(input.weather.clone()))?;
    let tweet =
        Tweet { description: input.description, country: canonical_country(&input.country)?, weather: weather as i32 };
    check_description(&tweet.description)?;
    Ok(tweet)
}

/// Checks a tweet that claims to be canonical already (as produced by
/// [`validate_input`]): upper-case country, weather set.
pub fn validate_tweet(tweet: &Tweet) -> Result<(), TweetError> {
    check_description(&tweet.description)?;
    if canonical_country(&tweet.country)? != tweet.country {
        return Err(TweetError::UnknownCountry(tweet.country.clone()));
    }
    match Weather::try_from(tweet.weather) {
        Ok(Weather::Unspecified) => Err(TweetError::UnspecifiedWeather),
        Ok(_) => Ok(()),
        Err(_) => Err(TweetError::UnknownWeather(tweet.weather.to_string())),
    }
}

/// Checks a record as writers and consumers receive it. The id must be a
/// UUID in its one canonical spelling: stores deduplicate on the id string, so
/// `{…}`, `urn:uuid:…`, upper case or unhyphenated spellings of one UUID would
/// otherwise each be counted.
pub fn validate_record(record: &TweetRecord) -> Result<(), TweetError> {
    if !is_canonical_uuid(&record.id) {
        return Err(TweetError::InvalidId(record.id.clone()));
    }
    if record.received_at.is_none() {
        return Err(TweetError::MissingReceivedAt);
    }
    validate_tweet(record.tweet.as_ref().ok_or(TweetError::MissingTweet)?)
}

/// Checks that a record about to be published was received within
/// [`RECEIVED_AT_WINDOW`] of `now` (writers call this; consumers do not, as a
/// backlog is old by nature).
pub fn check_received_now(record: &TweetRecord, now: std::time::SystemTime) -> Result<(), TweetError> {
    let at = record.received_at.as_ref().ok_or(TweetError::MissingReceivedAt)?;
    let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs() as i64);
    let skew = at.seconds.saturating_sub(now);
    if skew.unsigned_abs() > RECEIVED_AT_WINDOW.as_secs() {
        return Err(TweetError::ReceivedAtOutOfWindow(skew));
    }
    Ok(())
}

/// Whether `id` is a UUID spelled as [`uuid::Uuid`] displays it: 36
/// characters, lower-case hex, hyphenated.
pub fn is_canonical_uuid(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|uuid| uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == id)
}

/// Parses a weather name as clients send it: `Lluvioso`, `Nublado` (or the
/// legacy `Nubloso`), `Soleado`, in any letter case.
pub fn parse_weather(name: &str) -> Option<Weather> {
    const NAMES: &[(&str, Weather)] = &[
        ("lluvioso", Weather::Lluvioso),
        ("nublado", Weather::Nublado),
        ("nubloso", Weather::Nublado),
        ("soleado", Weather::Soleado),
    ];
    NAMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)).map(|(_, weather)| *weather)
}

/// The display name of a weather, as counters and dashboards show it.
pub fn weather_name(weather: Weather) -> &'static str {
    match weather {
        Weather::Unspecified => "Unspecified",
        Weather::Lluvioso => "Lluvioso",
        Weather::Nublado => "Nublado",
        Weather::Soleado => "Soleado",
    }
}

/// Minutes since the Unix epoch at which the record was received: the bucket
/// of the per-minute counters.
pub fn received_minute(record: &TweetRecord) -> i64 {
    record.received_at.as_ref().map_or(0, |at| at.seconds.div_euclid(60))
}

fn canonical_country(code: &str) -> Result<String, TweetError> {
    // celes also knows alpha-3 codes and names; only two ASCII letters are an alpha-2 code.
    let is_alpha2 = code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic());
    match celes::Country::from_alpha2(code) {
        Ok(country) if is_alpha2 => Ok(country.alpha2.to_owned()),
        _ => Err(TweetError::UnknownCountry(code.to_owned())),
    }
}

fn check_description(description: &str) -> Result<(), TweetError> {
    if description.trim().is_empty() {
        return Err(TweetError::EmptyDescription);
    }
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(TweetError::DescriptionTooLong(chars));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
