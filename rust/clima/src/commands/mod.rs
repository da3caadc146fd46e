pub mod api;
pub mod consumer;
pub mod load;
pub mod stats;
pub mod writer;
