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
