//! confer-pstn-bridge: SIP trunks and PBXs (dial-in with PIN, dial-out, transfer, hold,
//! remote call control).
//!
//! Nothing lives here yet: the PSTN bridge issue builds our own sans-IO SIP core here. It
//! does not depend on `confer-conference`; it asks for what it needs through small traits
//! that the `confer` binary implements.
