pub mod api;
pub mod consumer;
pub mod dashboard;
pub mod kafka_acls;
pub mod load;
pub mod recount;
pub mod stats;
pub mod writer;
