//! The SIP side of `confer serve`: the async shell around confer's sans-IO SIP core
//! (`confer_pstn_bridge::sip`, `sdp`, `numbers`), and dial-in to fixed rooms.
//!
//! Why in the binary: the SIP core crate knows no sockets, clocks or rooms; this module
//! owns them. `server` binds SIP over UDP, TCP and (optionally) TLS, frames and judges
//! every message with the core's `inspect`, limits abusive sources, and runs one core
//! task; `core` is the sans-IO call logic (the UAS half of the B2BUA: INVITE to 200 to
//! BYE, CANCEL, hold, session timers) on top of the transaction and dialog layers;
//! `media` turns its media commands into [`Host`](crate::host::Host) joins and leaves;
//! `dialplan` maps dialled numbers to rooms; `limits` is the per-source rate limit;
//! `metrics` the `confer_sip_*` counters; `tls` the certificate loading.
//!
//! README's "SIP" section is the user documentation.

mod core;
mod dialplan;
mod limits;
mod media;
mod metrics;
mod server;
mod tls;

pub use dialplan::DialPlan;
pub use metrics::SipMetrics;
pub use server::SipServer;
