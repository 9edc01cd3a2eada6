//! bouncer: a Kafka sidecar that stops queued deliveries matching
//! forced-error rules. See `README.md` for the map of the code.
#![forbid(unsafe_code)]

pub mod config;
pub mod domain;
pub mod eval;
pub mod event;
pub mod reload;

pub mod pipeline;
pub mod rules;
