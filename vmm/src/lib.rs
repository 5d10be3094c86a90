//! A minimal KVM VMM on the SynIC library (skeleton: see the README status table).

#![deny(missing_docs)]
