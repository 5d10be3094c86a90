//! MSR exits of a vCPU without a SynIC. (With one, every MSR exit goes to synic-kvm's
//! `VcpuSynic`.) Any `Err` injects `#GP(0)`.

pub use synic::MsrError;
pub use synic_msr::{Gp, GpReason};

/// Answers the MSR accesses that reach userspace, for one vCPU, on that vCPU's thread.
pub trait MsrHandler: Send {
    /// Guest RDMSR of `msr`.
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError>;
    /// Guest WRMSR of `msr` with `value`.
    fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), MsrError>;
}

/// The handler of a VM without a SynIC: `VP_INDEX` reads the vCPU index, everything else is
/// `#GP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpIndexOnly {
    /// This vCPU's VP index.
    pub vp_index: u32,
}

impl MsrHandler for VpIndexOnly {
    fn rdmsr(&mut self, msr: u32) -> Result<u64, MsrError> {
        match msr {
            synic_msr::index::VP_INDEX => Ok(u64::from(self.vp_index)),
            _ => Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        }
    }

    fn wrmsr(&mut self, msr: u32, _value: u64) -> Result<(), MsrError> {
        match msr {
            synic_msr::index::VP_INDEX => Err(Gp::new(msr, GpReason::ReadOnly).into()),
            _ => Err(Gp::new(msr, GpReason::UnknownMsr).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp_index_only_reads_vp_index_and_refuses_the_rest() {
        let mut h = VpIndexOnly { vp_index: 3 };
        assert_eq!(h.rdmsr(synic_msr::index::VP_INDEX), Ok(3));
        assert_eq!(
            h.wrmsr(synic_msr::index::VP_INDEX, 0).unwrap_err(),
            MsrError::Gp(Gp::new(synic_msr::index::VP_INDEX, GpReason::ReadOnly))
        );
        assert_eq!(
            h.rdmsr(synic_msr::index::SCONTROL).unwrap_err(),
            MsrError::Gp(Gp::new(synic_msr::index::SCONTROL, GpReason::UnknownMsr))
        );
    }
}
