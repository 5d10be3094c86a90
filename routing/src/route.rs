//! Routes (what a GSI delivers to) and their encoding as `kvm_irq_routing_entry`.

use core::fmt;

use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IOAPIC_NUM_PINS, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_HV_SINT, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MSI_VALID_DEVID,
};
use synic::{SintIndex, VpIndex};

use crate::{Error, Gsi};

/// Where a GSI delivers its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `KVM_IRQ_ROUTING_HV_SINT`: raise `sint` on the VP whose Hyper-V index is `vp`. KVM takes
    /// the vector from its own copy of the SINT register (in-kernel SynIC only).
    HvSint {
        /// The Hyper-V VP index (the `vcpu` field of `kvm_irq_routing_hv_sint`).
        vp: VpIndex,
        /// The synthetic interrupt source.
        sint: SintIndex,
    },
    /// `KVM_IRQ_ROUTING_MSI`: a message-signalled interrupt.
    Msi(MsiRoute),
    /// `KVM_IRQ_ROUTING_IRQCHIP`: a pin of the in-kernel PIC or IOAPIC.
    Irqchip {
        /// Which chip.
        chip: IrqChip,
        /// The pin on that chip (PIC 0..=7, IOAPIC 0..=23).
        pin: u32,
    },
}

impl Route {
    /// True for irqchip pins: a GSI may carry one pin of each chip, while any other route owns
    /// its GSI alone (KVM's rule in `setup_routing_entry`).
    pub fn is_irqchip(&self) -> bool {
        matches!(self, Route::Irqchip { .. })
    }

    /// Checks the fields KVM would refuse: irqchip pins beyond the chip.
    pub fn validate(&self) -> Result<(), Error> {
        if let Route::Irqchip { chip, pin } = *self {
            if pin >= chip.pins() {
                return Err(Error::IrqchipPin { chip, pin });
            }
        }
        Ok(())
    }

    /// The `kvm_irq_routing_entry` KVM_SET_GSI_ROUTING takes for this route at `gsi`.
    pub fn encode(&self, gsi: Gsi) -> kvm_irq_routing_entry {
        let mut e = kvm_irq_routing_entry {
            gsi: gsi.0,
            ..Default::default()
        };
        match *self {
            Route::HvSint { vp, sint } => {
                e.type_ = KVM_IRQ_ROUTING_HV_SINT;
                e.u.hv_sint.vcpu = vp.0;
                e.u.hv_sint.sint = u32::from(sint.get());
            }
            Route::Msi(msi) => {
                e.type_ = KVM_IRQ_ROUTING_MSI;
                // Truncations intended: the 64-bit address is split into its two halves.
                e.u.msi.address_lo = msi.address as u32;
                e.u.msi.address_hi = (msi.address >> 32) as u32;
                e.u.msi.data = msi.data;
                if let Some(devid) = msi.devid {
                    e.flags = KVM_MSI_VALID_DEVID;
                    e.u.msi.__bindgen_anon_1.devid = devid;
                }
            }
            Route::Irqchip { chip, pin } => {
                e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                e.u.irqchip.irqchip = chip.id();
                e.u.irqchip.pin = pin;
            }
        }
        e
    }

    /// Decodes an entry the way KVM reads it; `None` for types and flags this crate does not
    /// produce (s390 adapters, Xen event channels, unknown flags).
    pub fn decode(e: &kvm_irq_routing_entry) -> Option<(Gsi, Route)> {
        // SAFETY: every member of the union is plain u32 data (no padding inside `pad`, which
        // spans the whole union), so any bit pattern is a valid `[u32; 8]`.
        let raw = unsafe { e.u.pad };
        let route = match e.type_ {
            KVM_IRQ_ROUTING_HV_SINT if e.flags == 0 => Route::HvSint {
                vp: VpIndex(raw[0]),
                sint: SintIndex::new(raw[1])?,
            },
            KVM_IRQ_ROUTING_MSI if e.flags & !KVM_MSI_VALID_DEVID == 0 => Route::Msi(MsiRoute {
                address: u64::from(raw[0]) | u64::from(raw[1]) << 32,
                data: raw[2],
                devid: (e.flags & KVM_MSI_VALID_DEVID != 0).then_some(raw[3]),
            }),
            KVM_IRQ_ROUTING_IRQCHIP if e.flags == 0 => Route::Irqchip {
                chip: IrqChip::from_id(raw[0])?,
                pin: raw[1],
            },
            _ => return None,
        };
        Some((Gsi(e.gsi), route))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::HvSint { vp, sint } => write!(f, "HV_SINT {vp} {sint}"),
            Route::Msi(m) => write!(f, "MSI address {:#x} data {:#x}", m.address, m.data),
            Route::Irqchip { chip, pin } => write!(f, "{chip} pin {pin}"),
        }
    }
}

/// An MSI route: the message a device (or the SynIC in userspace mode) writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MsiRoute {
    /// Message address (x86: `0xFEE0_0000 | dest << 12 | ...`; bits 63:32 go to `address_hi`).
    pub address: u64,
    /// Message data (x86: vector in 7:0, delivery mode in 10:8, trigger mode in 15).
    pub data: u32,
    /// Device id for interrupt translation (`KVM_MSI_VALID_DEVID`); x86 ignores it, arm64's
    /// ITS needs it.
    pub devid: Option<u32>,
}

/// Base of the x86 MSI address window (the local APICs).
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

impl MsiRoute {
    /// A fixed, edge-triggered, physical-destination interrupt with `vector` to the local APIC
    /// `apic_id`. IDs above 255 put bits 31:8 in `address_hi` (KVM's x2APIC API format, which
    /// the VMM must enable with `KVM_CAP_X2APIC_API` to use them).
    pub fn fixed(apic_id: u32, vector: u8) -> Self {
        let low = u64::from(apic_id & 0xFF) << 12;
        let high = u64::from(apic_id & !0xFF) << 32;
        Self {
            address: MSI_ADDRESS_BASE | low | high,
            data: u32::from(vector),
            devid: None,
        }
    }
}

/// The in-kernel interrupt controllers an irqchip route can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IrqChip {
    /// The master 8259 PIC (`KVM_IRQCHIP_PIC_MASTER`, IRQs 0..=7).
    PicMaster,
    /// The slave 8259 PIC (`KVM_IRQCHIP_PIC_SLAVE`, IRQs 8..=15).
    PicSlave,
    /// The IOAPIC (`KVM_IRQCHIP_IOAPIC`, 24 pins).
    Ioapic,
}

impl IrqChip {
    /// KVM's chip number.
    pub fn id(self) -> u32 {
        match self {
            IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
            IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
            IrqChip::Ioapic => KVM_IRQCHIP_IOAPIC,
        }
    }

    /// The chip with KVM's number `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        match id {
            KVM_IRQCHIP_PIC_MASTER => Some(IrqChip::PicMaster),
            KVM_IRQCHIP_PIC_SLAVE => Some(IrqChip::PicSlave),
            KVM_IRQCHIP_IOAPIC => Some(IrqChip::Ioapic),
            _ => None,
        }
    }

    /// Number of pins KVM accepts on this chip.
    pub fn pins(self) -> u32 {
        match self {
            IrqChip::PicMaster | IrqChip::PicSlave => 8,
            IrqChip::Ioapic => KVM_IOAPIC_NUM_PINS,
        }
    }
}

impl fmt::Display for IrqChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqChip::PicMaster => "PIC master",
            IrqChip::PicSlave => "PIC slave",
            IrqChip::Ioapic => "IOAPIC",
        })
    }
}

/// KVM's default x86 routing after `KVM_CREATE_IRQCHIP`: GSIs 0..=15 to the IOAPIC pin of the
/// same number and to the matching PIC pin, GSIs 16..=23 to the IOAPIC only (40 entries).
pub fn default_irqchip_routes() -> Vec<(Gsi, Route)> {
    let mut routes = Vec::with_capacity(40);
    for irq in 0..KVM_IOAPIC_NUM_PINS {
        routes.push((
            Gsi(irq),
            Route::Irqchip {
                chip: IrqChip::Ioapic,
                pin: irq,
            },
        ));
        if irq < 16 {
            let chip = if irq < 8 {
                IrqChip::PicMaster
            } else {
                IrqChip::PicSlave
            };
            routes.push((Gsi(irq), Route::Irqchip { chip, pin: irq % 8 }));
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(e: &kvm_irq_routing_entry) -> [u32; 8] {
        // SAFETY: the union is eight plain u32s wide; any bit pattern is valid.
        unsafe { e.u.pad }
    }

    #[test]
    fn hv_sint_entry_encodes_type_4_vcpu_then_sint() {
        let r = Route::HvSint {
            vp: VpIndex(7),
            sint: SintIndex::new(13).unwrap(),
        };
        let e = r.encode(Gsi(300));
        assert_eq!(KVM_IRQ_ROUTING_HV_SINT, 4);
        assert_eq!((e.gsi, e.type_, e.flags, e.pad), (300, 4, 0, 0));
        assert_eq!(raw(&e), [7, 13, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Route::decode(&e), Some((Gsi(300), r)));
    }

    #[test]
    fn msi_entry_splits_address_and_flags_devid() {
        let r = Route::Msi(MsiRoute {
            address: 0x2345_6789_FEE0_1000,
            data: 0x4041,
            devid: Some(0x18),
        });
        let e = r.encode(Gsi(5));
        assert_eq!((e.gsi, e.type_, e.flags), (5, 2, KVM_MSI_VALID_DEVID));
        assert_eq!(raw(&e)[..4], [0xFEE0_1000, 0x2345_6789, 0x4041, 0x18]);
        assert_eq!(Route::decode(&e), Some((Gsi(5), r)));
    }

    #[test]
    fn msi_without_devid_has_no_flags() {
        let e = Route::Msi(MsiRoute::fixed(3, 0x50)).encode(Gsi(1));
        assert_eq!(e.flags, 0);
        assert_eq!(raw(&e)[..3], [0xFEE0_3000, 0, 0x50]);
    }

    #[test]
    fn fixed_msi_puts_high_apic_id_bits_in_address_hi() {
        let m = MsiRoute::fixed(0x1234, 0x30);
        assert_eq!(m.address, 0x0000_1200_FEE3_4000);
        assert_eq!(m.data, 0x30);
    }

    #[test]
    fn irqchip_entry_and_pin_validation() {
        let r = Route::Irqchip {
            chip: IrqChip::PicSlave,
            pin: 7,
        };
        let e = r.encode(Gsi(15));
        assert_eq!((e.type_, raw(&e)[0], raw(&e)[1]), (1, 1, 7));
        assert_eq!(Route::decode(&e), Some((Gsi(15), r)));
        assert!(r.validate().is_ok());
        let bad = Route::Irqchip {
            chip: IrqChip::PicMaster,
            pin: 8,
        };
        assert!(matches!(
            bad.validate(),
            Err(Error::IrqchipPin { pin: 8, .. })
        ));
        let io = Route::Irqchip {
            chip: IrqChip::Ioapic,
            pin: 24,
        };
        assert!(io.validate().is_err());
    }

    #[test]
    fn decode_refuses_unknown_types_flags_and_sints() {
        let mut e = Route::HvSint {
            vp: VpIndex(0),
            sint: SintIndex::new(0).unwrap(),
        }
        .encode(Gsi(0));
        e.u.hv_sint.sint = 16;
        assert_eq!(Route::decode(&e), None);
        e.u.hv_sint.sint = 1;
        e.flags = 1;
        assert_eq!(Route::decode(&e), None);
        e.flags = 0;
        e.type_ = 3; // s390 adapter
        assert_eq!(Route::decode(&e), None);
    }

    #[test]
    fn default_routes_match_kvm() {
        let d = default_irqchip_routes();
        assert_eq!(d.len(), 40);
        assert!(d.contains(&(
            Gsi(9),
            Route::Irqchip {
                chip: IrqChip::PicSlave,
                pin: 1
            }
        )));
        assert!(d.contains(&(
            Gsi(23),
            Route::Irqchip {
                chip: IrqChip::Ioapic,
                pin: 23
            }
        )));
        assert!(!d.iter().any(|(g, r)| g.0 >= 16
            && *r
                != Route::Irqchip {
                    chip: IrqChip::Ioapic,
                    pin: g.0
                }));
    }
}
