//! confer-signalling: presence with device capabilities, IM-to-call escalation,
//! device-aware routing, admin policy and the compliance archive model.
//!
//! Nothing lives here yet: the escalation issue builds it as sans-IO state machines.
