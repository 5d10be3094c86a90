//! KVM GSI routing for SynIC and devices (skeleton: see the README status table).

#![deny(missing_docs)]
