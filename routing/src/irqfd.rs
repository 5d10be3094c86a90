//! irqfds: an eventfd KVM turns into an interrupt on a GSI, optionally with a resamplefd.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::backend::new_eventfd;
use crate::{Error, Gsi, RoutingBackend};

/// An eventfd registered with KVM on a GSI: writing it raises the GSI's route. With a
/// resamplefd, KVM signals that second eventfd when the guest acknowledges the interrupt.
///
/// Owns both eventfds. Dropping it unregisters from KVM first (the kernel then injects nothing
/// more for this fd) and then closes the fds, so nothing leaks and nothing fires late.
#[derive(Debug)]
pub struct Irqfd<B: RoutingBackend> {
    backend: Arc<B>,
    gsi: Gsi,
    event: EventFd,
    resample: Option<EventFd>,
    attached: bool,
}

impl<B: RoutingBackend> Irqfd<B> {
    /// Creates the eventfd(s) and registers them on `gsi`.
    pub fn new(backend: Arc<B>, gsi: Gsi, resample: bool) -> Result<Self, Error> {
        let mut irqfd = Self::detached(backend, gsi, resample)?;
        irqfd.attach()?;
        Ok(irqfd)
    }

    /// Creates the eventfd(s) without registering them: writes accumulate in the eventfd
    /// counter until [`Irqfd::attach`] (how a masked MSI-X vector starts out).
    pub fn detached(backend: Arc<B>, gsi: Gsi, resample: bool) -> Result<Self, Error> {
        let event = new_eventfd()?;
        let resample = if resample { Some(new_eventfd()?) } else { None };
        Ok(Self {
            backend,
            gsi,
            event,
            resample,
            attached: false,
        })
    }

    /// Registers with KVM (no-op if already registered). If the eventfd counter is non-zero,
    /// KVM injects once right away.
    pub fn attach(&mut self) -> Result<(), Error> {
        if self.attached {
            return Ok(());
        }
        self.backend
            .register_irqfd(&self.event, self.gsi, self.resample.as_ref())
            .map_err(|source| Error::RegisterIrqfd {
                gsi: self.gsi,
                resample: self.resample.is_some(),
                source,
            })?;
        self.attached = true;
        Ok(())
    }

    /// Unregisters from KVM, keeping the eventfds: later writes only count up the eventfd.
    pub fn detach(&mut self) -> Result<(), Error> {
        if !self.attached {
            return Ok(());
        }
        self.backend
            .unregister_irqfd(&self.event, self.gsi)
            .map_err(|source| Error::UnregisterIrqfd {
                gsi: self.gsi,
                source,
            })?;
        self.attached = false;
        Ok(())
    }

    /// True while registered with KVM.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// Raises the interrupt (writes 1 to the eventfd).
    pub fn trigger(&self) -> io::Result<()> {
        self.event.write(1)
    }

    /// Reads and clears the eventfd counter: how many writes arrived while detached. Zero when
    /// none did (or while attached, where KVM consumes every write).
    pub fn take_count(&self) -> u64 {
        self.event.read().unwrap_or(0)
    }

    /// The GSI this irqfd raises.
    pub fn gsi(&self) -> Gsi {
        self.gsi
    }

    /// The eventfd to hand to whoever raises the interrupt (a device thread, a vhost backend).
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The resamplefd KVM signals on acknowledgement, if one was asked for.
    pub fn resample(&self) -> Option<&EventFd> {
        self.resample.as_ref()
    }
}

impl<B: RoutingBackend> Drop for Irqfd<B> {
    fn drop(&mut self) {
        // Best effort: KVM's deassign only fails for a bad fd, which we own and know is valid.
        let _ = self.detach();
    }
}
