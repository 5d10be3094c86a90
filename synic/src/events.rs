//! Event flags: HvSignalEvent and host devices set a bit in the guest's event-flags page.

use vm_memory::GuestAddressSpace;

use synic_msr::PageRegister;

use crate::error::Error;
use crate::message::FLAGS_PER_SINT;
use crate::overlay::Placement;
use crate::page;
use crate::partition::Partition;
use crate::{IntoSint, VpIndex};

/// What [`Partition::signal_event`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagOutcome {
    /// The flag went from 0 to 1; the SINT was raised (unless masked or polling).
    Set,
    /// The flag was set already: coalesced with the pending signal, no interrupt.
    AlreadySet,
}

impl<M: GuestAddressSpace> Partition<M> {
    /// Sets event flag `flag` (0..=2047) of `sint` on `vp` with one atomic OR on the guest's
    /// event-flags page, and raises the SINT only on a 0 -> 1 transition.
    ///
    /// Refused when the flag number is out of range, the SynIC (TLFS profile) or the
    /// event-flags page is disabled, the SINT is masked (userspace mode; in kernel mode KVM
    /// drops the interrupt of a masked SINT instead), or the page is outside guest RAM or
    /// under another overlay page enabled at the same address.
    pub fn signal_event(
        &self,
        vp: VpIndex,
        sint: impl IntoSint,
        flag: u32,
    ) -> Result<FlagOutcome, Error> {
        let sint = sint.into_sint()?;
        if flag >= FLAGS_PER_SINT {
            return Err(Error::InvalidFlag { flag });
        }
        let shared = self.shared(vp)?;
        let mut interrupt = None;
        let result = {
            let mut st = shared.lock(sint);
            let regs = shared.page_regs(&st);
            if !self.policy.synic_enabled(regs.scontrol) {
                return Err(Error::SynicDisabled { vp });
            }
            let Some(gpa) = PageRegister(regs.siefp).enabled_gpa() else {
                return Err(Error::EventFlagsPageDisabled { vp });
            };
            if self.policy.refuses_flags(st.sint) {
                return Err(Error::SintMasked { vp, sint });
            }
            let mem = self.memory.memory();
            let set = match regs.placements.siefp() {
                Placement::Placed => {
                    page::resolve(&*mem, gpa).and_then(|page| page.set_flag(sint, flag))
                }
                // Under another overlay page at the same address: the guest cannot see the
                // flag there, and the host keeps no live copy to set it in.
                Placement::Shadowed => return Err(Error::PageShadowed { gpa }),
                Placement::Unbacked => Err(Error::PageNotInRam { gpa }),
            };
            match set {
                Err(e) => {
                    st.counters.page_errors += 1;
                    Err(e)
                }
                Ok(true) => {
                    st.counters.flags_coalesced += 1;
                    Ok(FlagOutcome::AlreadySet)
                }
                Ok(false) => {
                    st.counters.flags_set += 1;
                    interrupt = self.policy.interrupt(st.sint);
                    Ok(FlagOutcome::Set)
                }
            }
        };
        self.raise_after_unlock(shared, sint, interrupt);
        result
    }
}
