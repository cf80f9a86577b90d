//! confer-engine: the low-latency media core.
//!
//! Every core here is sans-IO: it takes input and an `Instant` and returns output; it
//! never reads the clock (clippy forbids `Instant::now` in this crate), sleeps, spawns or
//! touches a socket. Tests and `confer bench` drive the cores on virtual time through
//! [`netsim`], so a minute of lossy network runs in milliseconds and always the same way;
//! [`udp`] is the one thin async shell.
//!
//! - [`types`]: wrap-safe newtypes; sequence numbers and timestamps are extended to 64 bits
//!   once, at the edge.
//! - [`rtp`], [`rtcp`], [`srtp`], [`stats`]: packets (zero-copy RTP view, compound RTCP),
//!   SRTP with a replay window, RFC 3550 receiver statistics and RTT.
//! - [`jitter`]: the adaptive jitter buffer, one per received source; [`jitter_eval`]
//!   scores it against the hindsight oracle (`confer bench jitter`).
//! - [`leg`]: one RTP session with a peer: packets in, frames out on the engine's frame
//!   clock, frames in, packets out. Each module's docs give its drive contract.
//! - [`netsim`]: the seeded simulated network with documented presets.
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
