//! confer-codecs: the audio DSP that every media leg and room runs.
//!
//! Pure signal processing: no I/O, no clock, no allocation per frame once a codec
//! or filter is built. Every stateful processor is `&mut self` and owned by one
//! media worker.
//!
//! PCM convention: every frame that crosses a module boundary is mono `f32`
//! normalised to [-1.0, 1.0) (full scale = 1.0 = 0 dBov); G.711 also exposes its
//! bit-exact 16-bit sample functions.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod decoder;
pub mod denoise;
pub mod dtmf;
pub mod g711;
pub mod level;
pub mod ogg;
pub mod opus;
pub mod resample;
pub mod timestretch;
