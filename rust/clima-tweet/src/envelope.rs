//! How tweets travel on Kafka and RabbitMQ: the binary protobuf encoding of a
//! `clima.v1.TweetBatch` as the message body, with its content type in a header
//! (Kafka) or property (AMQP), so any consumer, not only clima's, can decode it.
//!
//! Messages of earlier clima versions carried one `clima.v1.TweetRecord` each;
//! [`decode`] still reads them, told apart by their content type.

use clima_proto::v1::{TweetBatch, TweetRecord};
use prost::Message;

use crate::{TweetError, validate_record};

/// Content type of every message clima publishes now.
pub const CONTENT_TYPE: &str = "application/x-protobuf; messageType=clima.v1.TweetBatch";
/// Content type of a one-tweet message from an earlier clima version.
pub const CONTENT_TYPE_RECORD: &str = "application/x-protobuf; messageType=clima.v1.TweetRecord";
/// Header holding the content type (Kafka record header; AMQP uses its own
/// `content-type` property).
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header holding how many tweets the message carries.
pub const HEADER_TWEET_COUNT: &str = "clima-tweet-count";

/// Why a broker message is not a valid clima batch.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The message's content type is not clima's.
    #[error("content type {0:?} is not a clima message")]
    ContentType(String),
    /// The body does not decode.
    #[error("body is not a clima.v1.{message}: {source}")]
    Decode {
        /// The message it should have been.
        message: &'static str,
        /// What prost found.
        #[source]
        source: prost::DecodeError,
    },
    /// The batch is empty.
    #[error("the batch holds no tweets")]
    Empty,
    /// A record of the batch breaks a tweet's rules.
    #[error("records[{index}] is invalid: {source}")]
    Invalid {
        /// Its position in the batch.
        index: usize,
        /// The rule it breaks.
        #[source]
        source: TweetError,
    },
}

/// Field number of `TweetBatch.records`.
const RECORDS_FIELD: u32 = 1;

/// Encodes records as one broker message body (a `TweetBatch`).
pub fn encode(records: &[TweetRecord]) -> Vec<u8> {
    // Length-delimited field 1, repeated: exactly what `TweetBatch { records }`
    // encodes to, without cloning the records into one.
    let mut body = Vec::with_capacity(records.iter().map(encoded_size).sum());
    for record in records {
        prost::encoding::message::encode(RECORDS_FIELD, record, &mut body);
    }
    body
}

/// The bytes `record` adds to an [`encode`]d body (field tag, length, record),
/// so a body's size is known before encoding it.
pub fn encoded_size(record: &TweetRecord) -> usize {
    prost::encoding::message::encoded_len(RECORDS_FIELD, record)
}

/// Decodes and validates a broker message body by its content type; a message
/// without one is taken for a `TweetBatch`. All records valid, or an error.
pub fn decode(content_type: Option<&str>, body: &[u8]) -> Result<Vec<TweetRecord>, EnvelopeError> {
    let records = match content_type.map(str::trim) {
        None | Some(CONTENT_TYPE) => {
            TweetBatch::decode(body).map_err(|source| EnvelopeError::Decode { message: "TweetBatch", source })?.records
        }
        Some(CONTENT_TYPE_RECORD) => {
            vec![TweetRecord::decode(body).map_err(|source| EnvelopeError::Decode { message: "TweetRecord", source })?]
        }
        Some(other) => return Err(EnvelopeError::ContentType(other.to_owned())),
    };
    if records.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    for (index, record) in records.iter().enumerate() {
        validate_record(record).map_err(|source| EnvelopeError::Invalid { index, source })?;
    }
    Ok(records)
}
