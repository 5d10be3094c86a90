//! Which SynIC the guest runs against: one [`Setup`] value parametrises every scenario, so the
//! same guest program and the same assertions run in userspace mode (this library owns the
//! registers) and in kernel mode (KVM's in-kernel SynIC).

use synic_msr::Profile;

/// Who owns the SynIC registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every SynIC MSR exits to userspace; the library's model owns the semantics.
    Userspace,
    /// KVM's in-kernel SynIC (`KVM_CAP_HYPERV_SYNIC2`); the library follows its exits.
    Kernel,
}

/// Mode plus register profile: what a scenario runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Setup {
    /// Userspace or kernel SynIC.
    pub mode: Mode,
    /// The register semantics the guest sees: userspace mode can follow the TLFS or KVM;
    /// kernel mode is always KVM's.
    pub profile: Profile,
}

impl Setup {
    /// Userspace mode, TLFS profile (the library's default).
    pub const USERSPACE: Setup = Setup {
        mode: Mode::Userspace,
        profile: Profile::Tlfs,
    };
    /// Userspace mode, KVM profile (register semantics as KVM's in-kernel SynIC).
    pub const USERSPACE_KVM: Setup = Setup {
        mode: Mode::Userspace,
        profile: Profile::Kvm,
    };
    /// Kernel mode (KVM's registers, so the KVM profile).
    pub const KERNEL: Setup = Setup {
        mode: Mode::Kernel,
        profile: Profile::Kvm,
    };

    /// True when this host can run the setup; otherwise prints a loud SKIPPED line naming
    /// what is missing. Userspace mode needs `/dev/kvm`; kernel mode also needs
    /// `KVM_CAP_HYPERV_SYNIC2` (run those tests under kvm-lab).
    pub fn available(self, test: &str) -> bool {
        if !synic::testing::kvm_available(test) {
            return false;
        }
        if self.mode == Mode::Kernel {
            let kernel = synic_kvm::Capabilities::probe_host()
                .is_ok_and(|c| c.choose_mode(synic_kvm::ModeRequest::Kernel).is_ok());
            if !kernel {
                synic::testing::kernel_mode_skipped(test);
                return false;
            }
        }
        true
    }
}
