//! End-to-end tests on real KVM (skeleton: see the README status table).
