//! confer-engine: the low-latency media core.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod jitter;
pub mod jitter_eval;
pub mod leg;
pub mod netsim;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod stats;
pub mod types;
pub mod udp;
