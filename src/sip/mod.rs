//! The SIP side of `confer serve`: the async shell around confer's sans-IO SIP core
//! (`confer_pstn_bridge::sip`, `sdp`, `numbers`, `ivr`): dial-in to fixed rooms and with
//! a PIN, dial-out through trunks, and the registrar of desk phones and softphones (which
//! can then be rung into rooms).
//!
//! Why in the binary: the SIP core crate knows no sockets, clocks or rooms; this module
//! owns them. `server` binds SIP over UDP, TCP and (optionally) TLS, frames and judges
//! every message with the core's `inspect`, limits abusive sources, and runs one core
//! task; `core` is the sans-IO call logic (both halves of the B2BUA: calls in, INVITE to
//! 200 to BYE, CANCEL, hold, session timers; and calls out) on top of the transaction
//! and dialog layers, with the registrar (`core/registrar.rs`: bindings, digest, expiry,
//! ringing a binding over its flow);
//! `media` turns its media commands into [`Host`](crate::host::Host) joins and leaves;
//! `dialplan` maps dialled numbers to rooms or the PIN prompts; `pins` holds the rooms'
//! PINs; `trunks` turns "dial this number" into a call through a trunk under the
//! dial-out policy; `limits` is the per-source rate limit; `metrics` the `confer_sip_*`
//! counters; `tls` the certificate loading.
//!
//! README's "SIP" section is the user documentation.

mod core;
mod dialplan;
mod limits;
mod media;
mod metrics;
mod pins;
#[cfg(test)]
mod registrar_with_sipp;
mod server;
mod tls;
mod trunks;

pub use core::{
    DialError, DialProgress, RegistrarEvent, RingRequest, SipAccount, SipAccounts, SipSecret,
};
pub use dialplan::DialPlan;
pub use metrics::SipMetrics;
pub use pins::{DialInInfo, PinError, Pins};
pub use server::{RegistrarSetup, SipControl, SipRecords, SipServer};
pub use trunks::{PlanError, TrunkConfig, Trunks};
