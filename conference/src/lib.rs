//! confer-conference: rooms, the N-1 audio mixer, active speakers, video forwarding and
//! recording.
//!
//! Built on `confer-engine`'s media legs; dependencies point one way (`codecs` <- `engine`
//! <- `conference`).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod mixer;
pub mod recording;
pub mod room;
pub mod speakers;
