//! A vCPU's architectural state, for pausing a VM and restoring it into a new one: registers,
//! system registers, FPU/SSE, the local APIC, the run state, pending events, debug registers,
//! XCRs and the MSRs of [`SAVED_MSRS`] that KVM holds. (The SynIC's own state, KVM's Hyper-V
//! registers included, is synic-kvm's: `VmSynic::save`.)
//!
//! Captured on the vCPU's own thread while it is parked ([`crate::RunningVm::pause`]); put back
//! with [`crate::Vm::restore_vcpus`] before the new VM starts, in the order KVM needs (MSRs,
//! registers, system registers before the APIC, events last).

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, Msrs,
};
use kvm_ioctls::VcpuFd;

use crate::error::{kvm_err, Error, Result};

/// The MSRs saved besides the SynIC's: time stamp counter, syscall/sysenter, PAT, the
/// swapgs base, TSC_AUX, the TSC deadline and MISC_ENABLE. Those KVM cannot read on this host
/// are left out of a snapshot (and so not restored).
pub const SAVED_MSRS: [u32; 13] = [
    0x10,        // IA32_TSC
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x1A0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x6E0,       // IA32_TSC_DEADLINE
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0xC000_0102, // KERNEL_GS_BASE
    0xC000_0103, // TSC_AUX
];

/// One vCPU's state.
#[derive(Clone, Debug)]
pub struct VcpuSnapshot {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87 and SSE state.
    pub fpu: kvm_fpu,
    /// The in-kernel local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Runnable, halted, waiting for SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and the interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// `(msr, value)` for the [`SAVED_MSRS`] KVM could read.
    pub msrs: Vec<(u32, u64)>,
}

fn msr_list(regs: &[(u32, u64)]) -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = regs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|source| Error::KvmList {
        what: "MSR list",
        source,
    })
}

impl VcpuSnapshot {
    /// Reads `vcpu`'s state (it must be out of `KVM_RUN`).
    pub fn capture(vcpu: &VcpuFd) -> Result<VcpuSnapshot> {
        let mut msrs = Vec::new();
        let mut want: Vec<u32> = SAVED_MSRS.to_vec();
        // KVM_GET_MSRS stops at the first MSR it refuses: drop it and read the rest.
        while !want.is_empty() {
            let mut list = msr_list(&want.iter().map(|&m| (m, 0)).collect::<Vec<_>>())?;
            let read = vcpu.get_msrs(&mut list).map_err(kvm_err("KVM_GET_MSRS"))?;
            msrs.extend(list.as_slice()[..read].iter().map(|e| (e.index, e.data)));
            want.drain(..(read + 1).min(want.len()));
        }
        Ok(VcpuSnapshot {
            regs: vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?,
            lapic: vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
            events: vcpu
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            debugregs: vcpu
                .get_debug_regs()
                .map_err(kvm_err("KVM_GET_DEBUGREGS"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            msrs,
        })
    }

    /// Writes the state into `vcpu` (of a VM that has not run), in the order KVM needs.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<()> {
        let written = vcpu
            .set_msrs(&msr_list(&self.msrs)?)
            .map_err(kvm_err("KVM_SET_MSRS"))?;
        if let Some(&(msr, value)) = self.msrs.get(written) {
            return Err(Error::Config(format!(
                "KVM refused MSR {msr:#x} = {value:#x} of a vCPU snapshot"
            )));
        }
        vcpu.set_regs(&self.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&self.fpu).map_err(kvm_err("KVM_SET_FPU"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic)
            .map_err(kvm_err("KVM_SET_LAPIC"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))
    }
}
