//! In-kernel local APIC setup: LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as on a
//! PC after firmware.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::error::{kvm_err, Result};

/// LVT LINT0 register offset.
pub const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE_MASK: u32 = 0x7 << DELIVERY_MODE_SHIFT;
const MODE_NMI: u32 = 0x4;
const MODE_EXTINT: u32 = 0x7;

/// Reads the 32-bit APIC register at `offset`.
pub fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (dst, src) in b.iter_mut().zip(&state.regs[offset..offset + 4]) {
        *dst = src.to_ne_bytes()[0];
    }
    u32::from_le_bytes(b)
}

/// Writes the 32-bit APIC register at `offset`.
pub fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = i8::from_ne_bytes([src]) as _;
    }
}

fn with_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
}

/// Configures LINT0 = ExtINT, LINT1 = NMI on `vcpu`.
pub fn configure_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut state = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let lvt0 = get_reg(&state, APIC_LVT0);
    set_reg(&mut state, APIC_LVT0, with_mode(lvt0, MODE_EXTINT));
    let lvt1 = get_reg(&state, APIC_LVT1);
    set_reg(&mut state, APIC_LVT1, with_mode(lvt1, MODE_NMI));
    vcpu.set_lapic(&state).map_err(kvm_err("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_replace_only_the_delivery_mode() {
        let mut s = kvm_lapic_state::default();
        set_reg(&mut s, APIC_LVT0, 0x0001_0000 | (0x2 << 8) | 0x30);
        let v = with_mode(get_reg(&s, APIC_LVT0), MODE_EXTINT);
        assert_eq!(v, 0x0001_0000 | (0x7 << 8) | 0x30);
        set_reg(&mut s, APIC_LVT1, 0xDEAD_BEEF);
        assert_eq!(get_reg(&s, APIC_LVT1), 0xDEAD_BEEF);
        assert_eq!(get_reg(&s, APIC_LVT0), 0x0001_0230);
    }
}
