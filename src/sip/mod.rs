//! The SIP side of `confer serve` (being written).
