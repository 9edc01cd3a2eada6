//! bouncer: a Kafka sidecar that stops queued deliveries matching
//! forced-error rules. See `README.md` for the map of the code.
#![forbid(unsafe_code)]

pub mod alloc;
pub mod api;
pub mod config;
pub mod control;
pub mod demo;
pub mod domain;
pub mod eval;
pub mod event;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod reload;

pub mod pipeline;
pub mod rules;
pub mod run;
