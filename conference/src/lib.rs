//! confer-conference: rooms, the N-1 audio mixer, active speakers, video forwarding and
//! recording.
//!
//! Nothing lives here yet: the conference issue builds it on top of `confer-engine`'s media
//! legs. The crate exists now so that the workspace has its final shape and dependencies
//! point one way (`codecs` <- `engine` <- `conference`).
