//! confer-signalling: presence with device capabilities, IM-to-call escalation,
//! device-aware routing, admin policy and the compliance archive model.
//!
//! Sans-IO like the media and SIP cores: time and randomness are arguments, the binary
//! owns sockets, storage and the clock.
//!
//! - [`directory`] and [`presence`]: users, their devices and capabilities, and the
//!   aggregated presence of each user.
//! - [`escalation`]: a chat turned into a call: which devices ring, in what order, who
//!   answered, the fallbacks (PSTN, dial-in instructions).
//! - [`policy`] and [`token`]: who may do what, which clients may connect, rate limits, and
//!   the scoped tokens every API call carries.
//! - [`archive`]: the compliance records, their hash chain and retention.

pub mod archive;
pub mod directory;
pub mod escalation;
pub mod policy;
pub mod presence;
pub mod token;
