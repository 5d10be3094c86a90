//! Test doubles: a [`RaiseSint`] that records what it is asked to do.

use std::sync::{Mutex, PoisonError};

use crate::{RaiseSint, Sint, SintIndex, VpIndex};

/// One call made to a [`RecordingRaise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaiseEvent {
    /// [`RaiseSint::raise`].
    Raise {
        /// The VP.
        vp: VpIndex,
        /// The SINT.
        sint: SintIndex,
        /// The vector.
        vector: u8,
        /// The AutoEOI hint.
        auto_eoi: bool,
    },
    /// [`RaiseSint::raise_vector`] (a direct-mode timer).
    Vector {
        /// The VP.
        vp: VpIndex,
        /// The vector.
        vector: u8,
    },
    /// [`RaiseSint::sint_changed`].
    SintChanged {
        /// The VP.
        vp: VpIndex,
        /// The SINT.
        sint: SintIndex,
        /// The new register value.
        value: Sint,
    },
}

/// Records every call, in order.
#[derive(Debug, Default)]
pub struct RecordingRaise {
    events: Mutex<Vec<RaiseEvent>>,
}

impl RecordingRaise {
    /// All calls so far.
    pub fn events(&self) -> Vec<RaiseEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `raise` calls so far as `(vp, sint, vector, auto_eoi)`.
    pub fn raised(&self) -> Vec<(VpIndex, SintIndex, u8, bool)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                RaiseEvent::Raise {
                    vp,
                    sint,
                    vector,
                    auto_eoi,
                } => Some((vp, sint, vector, auto_eoi)),
                RaiseEvent::SintChanged { .. } | RaiseEvent::Vector { .. } => None,
            })
            .collect()
    }

    /// The `raise_vector` calls so far as `(vp, vector)`.
    pub fn vectors(&self) -> Vec<(VpIndex, u8)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                RaiseEvent::Vector { vp, vector } => Some((vp, vector)),
                _ => None,
            })
            .collect()
    }

    /// Removes and returns all calls so far.
    pub fn take(&self) -> Vec<RaiseEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, e: RaiseEvent) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(e);
    }
}

impl RaiseSint for RecordingRaise {
    fn raise(&self, vp: VpIndex, sint: SintIndex, vector: u8, auto_eoi: bool) {
        self.push(RaiseEvent::Raise {
            vp,
            sint,
            vector,
            auto_eoi,
        });
    }

    fn sint_changed(&self, vp: VpIndex, sint: SintIndex, value: Sint) {
        self.push(RaiseEvent::SintChanged { vp, sint, value });
    }

    fn raise_vector(&self, vp: VpIndex, vector: u8) {
        self.push(RaiseEvent::Vector { vp, vector });
    }
}

/// Environment variable that turns a real-KVM test's skip into a failure: CI sets it
/// (`.ci/run`), so a green run cannot hide tests that did not run on a machine that should
/// run them.
pub const REQUIRE_KVM: &str = "SYNIC_REQUIRE_KVM";

/// For real-KVM tests: true when `/dev/kvm` is there to run `test`. Otherwise prints a loud
/// SKIPPED line and returns false — or, with [`REQUIRE_KVM`] set to anything but `0`, panics
/// (the test fails instead of passing without having run).
pub fn kvm_available(test: &str) -> bool {
    let required = std::env::var(REQUIRE_KVM).is_ok_and(|v| v != "0");
    device_available(std::path::Path::new("/dev/kvm"), test, required)
}

fn device_available(device: &std::path::Path, test: &str, required: bool) -> bool {
    if device.exists() {
        return true;
    }
    let d = device.display();
    assert!(
        !required,
        "{test}: {d} is absent but {REQUIRE_KVM} is set: this real-KVM test must run here"
    );
    eprintln!("\n!!!! SKIPPED {test}: {d} is absent, this real-KVM test did not run !!!!\n");
    false
}

/// For the kernel-mode variant of a real-KVM test on a host whose KVM has no in-kernel Hyper-V
/// (`KVM_CAP_HYPERV_SYNIC2`): prints the loud SKIPPED line the CI counts (kernel mode runs in
/// kvm-lab, where any SKIPPED fails the run). [`REQUIRE_KVM`] does not change this: this host
/// cannot run kernel mode.
pub fn kernel_mode_skipped(test: &str) {
    eprintln!(
        "\n!!!! SKIPPED {test}: KVM_CAP_HYPERV_SYNIC2 is absent, kernel mode did not run here (kvm-lab runs it) !!!!\n"
    );
}

#[cfg(test)]
mod tests {
    use super::device_available;
    use std::path::Path;

    #[test]
    fn a_missing_device_skips_unless_required() {
        let missing = Path::new("/nonexistent/kvm");
        assert!(!device_available(missing, "t", false));
        assert!(device_available(Path::new("/"), "t", true));
        let required = std::panic::catch_unwind(|| device_available(missing, "t", true));
        assert!(required.is_err(), "required and missing: the test fails");
    }
}
