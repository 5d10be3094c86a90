//! Typed register values: bitfield newtypes over the raw 64-bit MSR contents.
//!
//! Each type is `#[repr(transparent)]` over `u64` and zerocopy-convertible, so a value read
//! from a snapshot or a guest page can be reinterpreted without a copy. Accessors never panic;
//! `with_*` builders mask their inputs to the field width.

// zerocopy's derives emit helper items the lint cannot see a `Debug` for; every register type
// here implements `Debug` by hand, decoding its fields.
#![allow(missing_debug_implementations)]

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Mask of the guest physical address bits (63:12) of a page register.
pub const PAGE_GPA_MASK: u64 = !0xFFF;
/// Size of a SynIC page (message page, event-flags page, hypercall page).
pub const PAGE_SIZE: u64 = 4096;

macro_rules! raw_register {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, Default, IntoBytes, FromBytes, Immutable,
        )]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl From<u64> for $name {
            fn from(raw: u64) -> Self {
                Self(raw)
            }
        }

        impl From<$name> for u64 {
            fn from(reg: $name) -> u64 {
                reg.0
            }
        }
    };
}

raw_register!(
    /// `SCONTROL`: bit 0 Enable; bits 63:1 RsvdP.
    Scontrol
);

impl Scontrol {
    /// The Enable bit.
    pub const ENABLE: u64 = 1;
    /// Bits that are defined (everything else is RsvdP).
    pub const DEFINED: u64 = Self::ENABLE;

    /// SynIC enabled for this VP.
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
}

impl core::fmt::Debug for Scontrol {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scontrol")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("enabled", &self.enabled())
            .finish()
    }
}

raw_register!(
    /// `SIMP` or `SIEFP` (and the layout of `HYPERCALL`'s page field): bit 0 Enable, bits 11:1
    /// RsvdP, bits 63:12 guest physical page number.
    PageRegister
);

/// `SIMP`: the message page register.
pub type Simp = PageRegister;
/// `SIEFP`: the event-flags page register.
pub type Siefp = PageRegister;

impl PageRegister {
    /// The Enable bit.
    pub const ENABLE: u64 = 1;
    /// Bits that are defined (everything else is RsvdP).
    pub const DEFINED: u64 = Self::ENABLE | PAGE_GPA_MASK;

    /// A value with the given enable bit and page base (the low 12 bits of `gpa` are dropped).
    pub const fn new(enabled: bool, gpa: u64) -> Self {
        Self((gpa & PAGE_GPA_MASK) | enabled as u64)
    }

    /// The Enable bit.
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }

    /// Guest physical address of the page (4 KiB aligned).
    pub const fn gpa(self) -> u64 {
        self.0 & PAGE_GPA_MASK
    }

    /// The page base when enabled.
    pub const fn enabled_gpa(self) -> Option<u64> {
        if self.enabled() {
            Some(self.gpa())
        } else {
            None
        }
    }
}

impl core::fmt::Debug for PageRegister {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageRegister")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("enabled", &self.enabled())
            .field("gpa", &format_args!("{:#x}", self.gpa()))
            .finish()
    }
}

raw_register!(
    /// `SINTn`: bits 7:0 Vector, 15:8 RsvdP, 16 Masked, 17 AutoEOI, 18 Polling, 63:19 RsvdP.
    Sint
);

impl Sint {
    /// Vector field.
    pub const VECTOR: u64 = 0xFF;
    /// Masked bit.
    pub const MASKED: u64 = 1 << 16;
    /// AutoEOI bit.
    pub const AUTO_EOI: u64 = 1 << 17;
    /// Polling bit.
    pub const POLLING: u64 = 1 << 18;
    /// Bits that are defined (everything else is RsvdP).
    pub const DEFINED: u64 = Self::VECTOR | Self::MASKED | Self::AUTO_EOI | Self::POLLING;
    /// The reset value: masked, vector 0.
    pub const RESET: Sint = Sint(Self::MASKED);
    /// Lowest vector a SINT may use (0..=15 are exceptions).
    pub const FIRST_VALID_VECTOR: u8 = 16;

    /// An unmasked SINT with `vector` and the given flags.
    pub const fn new(vector: u8, auto_eoi: bool, polling: bool) -> Self {
        Self(
            vector as u64
                | if auto_eoi { Self::AUTO_EOI } else { 0 }
                | if polling { Self::POLLING } else { 0 },
        )
    }

    /// The interrupt vector.
    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR) as u8
    }

    /// Masked: no interrupt is raised (messages still queue, flags still set).
    pub const fn masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }

    /// AutoEOI: the interrupt is EOI'd on delivery.
    pub const fn auto_eoi(self) -> bool {
        self.0 & Self::AUTO_EOI != 0
    }

    /// Polling: unmasked, but the hypervisor raises no interrupt; the guest polls.
    pub const fn polling(self) -> bool {
        self.0 & Self::POLLING != 0
    }

    /// This value with the Masked bit set or cleared.
    pub const fn with_masked(self, masked: bool) -> Self {
        if masked {
            Self(self.0 | Self::MASKED)
        } else {
            Self(self.0 & !Self::MASKED)
        }
    }

    /// True when a message or flag on this SINT raises an interrupt: not masked, not polling.
    pub const fn raises_interrupt(self) -> bool {
        !self.masked() && !self.polling()
    }
}

impl core::fmt::Debug for Sint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sint")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("vector", &self.vector())
            .field("masked", &self.masked())
            .field("auto_eoi", &self.auto_eoi())
            .field("polling", &self.polling())
            .finish()
    }
}

raw_register!(
    /// `STIMERn_CONFIG`: 0 Enable, 1 Periodic, 2 Lazy, 3 AutoEnable, 11:4 ApicVector,
    /// 12 DirectMode, 15:13 RsvdZ, 19:16 SINTx, 63:20 RsvdZ.
    StimerConfig
);

impl StimerConfig {
    /// Enable bit.
    pub const ENABLE: u64 = 1;
    /// Periodic bit.
    pub const PERIODIC: u64 = 1 << 1;
    /// Lazy bit.
    pub const LAZY: u64 = 1 << 2;
    /// AutoEnable bit.
    pub const AUTO_ENABLE: u64 = 1 << 3;
    /// ApicVector field (direct mode).
    pub const APIC_VECTOR: u64 = 0xFF << 4;
    /// DirectMode bit.
    pub const DIRECT_MODE: u64 = 1 << 12;
    /// SINTx field.
    pub const SINTX: u64 = 0xF << 16;
    /// Bits that are defined (everything else is RsvdZ).
    pub const DEFINED: u64 = Self::ENABLE
        | Self::PERIODIC
        | Self::LAZY
        | Self::AUTO_ENABLE
        | Self::APIC_VECTOR
        | Self::DIRECT_MODE
        | Self::SINTX;

    /// Enable bit.
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    /// Periodic bit (else one-shot).
    pub const fn periodic(self) -> bool {
        self.0 & Self::PERIODIC != 0
    }
    /// Lazy bit.
    pub const fn lazy(self) -> bool {
        self.0 & Self::LAZY != 0
    }
    /// AutoEnable bit.
    pub const fn auto_enable(self) -> bool {
        self.0 & Self::AUTO_ENABLE != 0
    }
    /// Vector raised in direct mode.
    pub const fn apic_vector(self) -> u8 {
        ((self.0 & Self::APIC_VECTOR) >> 4) as u8
    }
    /// DirectMode bit: raise `apic_vector` instead of sending a message.
    pub const fn direct_mode(self) -> bool {
        self.0 & Self::DIRECT_MODE != 0
    }
    /// The SINT that receives expiry messages.
    pub const fn sintx(self) -> u8 {
        ((self.0 & Self::SINTX) >> 16) as u8
    }
    /// This value with the Enable bit set or cleared.
    pub const fn with_enabled(self, enabled: bool) -> Self {
        if enabled {
            Self(self.0 | Self::ENABLE)
        } else {
            Self(self.0 & !Self::ENABLE)
        }
    }
    /// A config value built from its fields.
    pub const fn new(
        enabled: bool,
        periodic: bool,
        lazy: bool,
        auto_enable: bool,
        sintx: u8,
    ) -> Self {
        Self(
            (enabled as u64)
                | (periodic as u64) << 1
                | (lazy as u64) << 2
                | (auto_enable as u64) << 3
                | ((sintx as u64 & 0xF) << 16),
        )
    }
    /// A direct-mode config value raising `vector`.
    pub const fn new_direct(enabled: bool, periodic: bool, vector: u8) -> Self {
        Self((enabled as u64) | (periodic as u64) << 1 | (vector as u64) << 4 | Self::DIRECT_MODE)
    }
}

impl core::fmt::Debug for StimerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StimerConfig")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("enabled", &self.enabled())
            .field("periodic", &self.periodic())
            .field("lazy", &self.lazy())
            .field("auto_enable", &self.auto_enable())
            .field("direct_mode", &self.direct_mode())
            .field("apic_vector", &self.apic_vector())
            .field("sintx", &self.sintx())
            .finish()
    }
}

raw_register!(
    /// `HYPERCALL`: bit 0 Enable, bit 1 Locked, bits 11:2 RsvdP, bits 63:12 page number.
    Hypercall
);

impl Hypercall {
    /// Enable bit.
    pub const ENABLE: u64 = 1;
    /// Locked bit: once set, only a reset clears the register (TLFS).
    pub const LOCKED: u64 = 1 << 1;
    /// Bits that are defined (everything else is RsvdP).
    pub const DEFINED: u64 = Self::ENABLE | Self::LOCKED | PAGE_GPA_MASK;

    /// Enable bit.
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    /// Locked bit.
    pub const fn locked(self) -> bool {
        self.0 & Self::LOCKED != 0
    }
    /// Guest physical address of the hypercall page.
    pub const fn gpa(self) -> u64 {
        self.0 & PAGE_GPA_MASK
    }
}

impl core::fmt::Debug for Hypercall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hypercall")
            .field("raw", &format_args!("{:#x}", self.0))
            .field("enabled", &self.enabled())
            .field("locked", &self.locked())
            .field("gpa", &format_args!("{:#x}", self.gpa()))
            .finish()
    }
}

const _: () = assert!(core::mem::size_of::<Sint>() == 8);
const _: () = assert!(core::mem::size_of::<StimerConfig>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sint_fields_decode() {
        let s = Sint(0x5_0042 | 0xFF00);
        assert_eq!(s.vector(), 0x42);
        assert!(s.masked());
        assert!(!s.auto_eoi());
        assert!(s.polling());
        assert!(!s.raises_interrupt());
        assert_eq!(Sint::new(0x30, true, false).0, 0x2_0030);
    }

    #[test]
    fn stimer_config_fields_decode() {
        let c = StimerConfig::new(true, true, false, true, 5);
        assert!(c.enabled() && c.periodic() && !c.lazy() && c.auto_enable());
        assert_eq!(c.sintx(), 5);
        let d = StimerConfig::new_direct(true, false, 0xEF);
        assert!(d.direct_mode());
        assert_eq!(d.apic_vector(), 0xEF);
        assert_eq!(d.0 & !StimerConfig::DEFINED, 0);
    }

    #[test]
    fn page_register_splits_enable_and_gpa() {
        let p = PageRegister(0x1234_5FFF);
        assert!(p.enabled());
        assert_eq!(p.gpa(), 0x1234_5000);
        assert_eq!(PageRegister::new(false, 0x7000).enabled_gpa(), None);
    }
}
