//! How a [`TweetRecord`] travels on Kafka and RabbitMQ: the binary protobuf
//! encoding of `clima.v1.TweetRecord` as the message body, plus headers that
//! let any consumer (not only clima's) route and dedupe without decoding it.

use clima_proto::v1::TweetRecord;
use prost::Message;

use crate::{TweetError, validate_record};

/// Content type of every clima broker message body.
pub const CONTENT_TYPE: &str = "application/x-protobuf; messageType=clima.v1.TweetRecord";
/// Header holding the content type (Kafka record header; AMQP uses its own
/// `content-type` property as well).
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header holding the record's id (also the AMQP `message-id` property).
pub const HEADER_TWEET_ID: &str = "clima-tweet-id";

/// Why a broker message is not a valid clima record.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a clima.v1.TweetRecord: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid record: {0}")]
    Invalid(#[from] TweetError),
}

/// Encodes a record as a broker message body.
pub fn encode(record: &TweetRecord) -> Vec<u8> {
    record.encode_to_vec()
}

/// Decodes and validates a broker message body.
pub fn decode(body: &[u8]) -> Result<TweetRecord, EnvelopeError> {
    let record = TweetRecord::decode(body)?;
    validate_record(&record)?;
    Ok(record)
}
