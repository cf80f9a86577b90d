//! confer-pstn-bridge: SIP trunks and PBXs (dial-in with PIN, dial-out, transfer, hold,
//! remote call control).
//!
//! Our own sans-IO SIP core lives here (`sip`): DEPENDENCIES.md says why no SIP crate was
//! good enough. Like the media cores it never reads the clock or touches a socket; the
//! `confer` binary owns the sockets and feeds bytes and time in. It does not depend on
//! `confer-conference`; it asks for what it needs through small traits that the binary
//! implements.

pub mod digest;
pub mod ivr;
pub mod numbers;
pub mod registration;
pub mod sdp;
pub mod sip;
