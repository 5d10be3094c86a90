//! The CPUID of each vCPU: what KVM supports, with the vCPU's APIC id filled in. (The Hyper-V
//! leaves come from synic-kvm: `synic_kvm::cpuid::apply`.)

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::error::{Error, Result};

/// `supported` (KVM_GET_SUPPORTED_CPUID) for the vCPU with APIC id `apic_id`: CPUID.1:EBX
/// bits 31:24 and the x2APIC id of the extended topology leaves.
pub fn with_apic_id(supported: &CpuId, apic_id: u32) -> Result<CpuId> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for e in &mut entries {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00FF_FFFF) | (apic_id << 24),
            // Extended topology: EDX is the x2APIC id on every subleaf.
            0xB | 0x1F => {
                e.edx = apic_id;
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            }
            _ => {}
        }
    }
    CpuId::from_entries(&entries).map_err(|source| Error::KvmList {
        what: "CPUID table",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_id_goes_into_leaf_1_and_the_topology_leaves() {
        let supported = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0001_0800,
                ecx: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                index: 1,
                edx: 0,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = with_apic_id(&supported, 3).unwrap();
        let s = c.as_slice();
        assert_eq!(s[0].ebx, 0x0301_0800);
        assert_eq!(s[0].ecx, 1, "nothing else changes");
        assert_eq!(s[1].edx, 3);
        assert_ne!(s[1].flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
    }
}
