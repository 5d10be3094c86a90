//! ACPI tables for the Linux guest, built with rust-vmm's `acpi_tables`: RSDP, XSDT, FADT (with
//! a FACS), MADT and a DSDT that holds `\_S5` (so the guest can power off) and, when asked, the
//! VMBus device (`\_SB.VMBS`, `_HID "VMBus"`), which Linux's hv_vmbus finds only through ACPI.
//!
//! The fixed hardware the FADT describes is in [`super::devices`]: the PM1a event and control
//! blocks and the PM timer at [`PM_BASE`], and the reset register at [`RESET_PORT`].

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::boot::BIOS_AREA_START;
use super::LinuxError;
use crate::layout::{HIGH_MEMORY, LAPIC_ADDR};
use crate::memory::GuestMemory;

/// The in-kernel IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// Base of the PM register block: PM1a_EVT (4 bytes), PM1a_CNT (+4, 2 bytes), PM_TMR (+8).
pub const PM_BASE: u16 = 0x600;
/// PM1a event block (status, enable).
pub const PM1A_EVT: u16 = PM_BASE;
/// PM1a control block.
pub const PM1A_CNT: u16 = PM_BASE + 4;
/// PM timer (32-bit, 3.579545 MHz).
pub const PM_TMR: u16 = PM_BASE + 8;
/// The FADT reset register (the PC's reset control port).
pub const RESET_PORT: u16 = 0xCF9;
/// The value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x06;
/// SLP_TYP of `\_S5` (soft off) in the DSDT; the PM1a control device powers off on it.
pub const S5_SLP_TYP: u8 = 5;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u16 = 9;

const OEM_ID: [u8; 6] = *b"SYNIC ";
const OEM_TABLE_ID: [u8; 8] = *b"SYNICVMM";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flag: no VGA (bit 2). Bit 1 (8042 present) stays clear, so Linux
/// does not probe for a keyboard controller.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// What goes into the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (LAPIC ids 0..n).
    pub vcpus: u32,
    /// Whether the DSDT declares the VMBus device.
    pub vmbus: bool,
}

/// The DSDT's AML body: `\_S5` and, optionally, `\_SB.VMBS`.
pub fn dsdt_body(vmbus: bool) -> Vec<u8> {
    let mut body = Vec::new();
    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved.
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);
    if vmbus {
        // Hyper-V Gen1 calls it "VMBus"; hv_vmbus matches "VMBUS" and "VMBus" and walks its
        // _CRS (which must exist; an empty template is fine when no MMIO is handed out).
        let crs = aml::ResourceTemplate::new(vec![]);
        let hid = aml::Name::new("_HID".into(), &"VMBus");
        let uid = aml::Name::new("_UID".into(), &0u8);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new("_SB_.VMBS".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    }
    body
}

fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    // No SMI command port: the machine is always in ACPI mode (ACPI 2.0+).
    f.sci_int = SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT).into();
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = u32::from(PM1A_CNT).into();
    f.pm1_cnt_len = 2;
    f.pm_tmr_blk = u32::from(PM_TMR).into();
    f.pm_tmr_len = 4;
    f.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(RESET_PORT),
    );
    f.reset_value = RESET_VALUE;
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(vcpus: u32) -> Result<Vec<u8>, LinuxError> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for id in 0..vcpus {
        let id = u8::try_from(id)
            .map_err(|_| LinuxError::Config(format!("{vcpus} vCPUs do not fit xAPIC ids")))?;
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // KVM's default routing sends ISA IRQ n to IOAPIC pin n: identity, so no source overrides.
    m.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut bytes = Vec::new();
    m.to_aml_bytes(&mut bytes);
    Ok(bytes)
}

/// Where each table went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// The RSDP (what `boot_params.acpi_rsdp_addr` points at; also found by the BIOS-area
    /// scan, since it sits 16-byte aligned at 0xE0000).
    pub rsdp: u64,
    /// XSDT.
    pub xsdt: u64,
    /// FADT.
    pub fadt: u64,
    /// FACS.
    pub facs: u64,
    /// MADT.
    pub madt: u64,
    /// DSDT.
    pub dsdt: u64,
    /// One past the last byte written.
    pub end: u64,
}

/// Writes the tables into the reserved BIOS area at 0xE0000.
pub fn write_tables(mem: &GuestMemory, config: AcpiConfig) -> Result<AcpiLayout, LinuxError> {
    // Fixed slots (the tables are small): each table 64-byte aligned, FACS as required.
    let rsdp = BIOS_AREA_START;
    let xsdt = rsdp + 0x40;
    let fadt_at = xsdt + 0x80;
    let facs = fadt_at + 0x140;
    let madt_at = facs + 0x40;
    let dsdt_at = madt_at + 0x400;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(config.vmbus));
    let madt_bytes = madt(config.vcpus)?;
    if madt_bytes.len() as u64 > dsdt_at - madt_at {
        return Err(LinuxError::Config(format!(
            "MADT for {} vCPUs does not fit its slot",
            config.vcpus
        )));
    }
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    x.add_entry(fadt_at);
    x.add_entry(madt_at);
    let mut xsdt_bytes = Vec::new();
    x.to_aml_bytes(&mut xsdt_bytes);
    let mut facs_bytes = Vec::new();
    FACS::new().to_aml_bytes(&mut facs_bytes);
    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp_bytes);

    let end = dsdt_at + dsdt.len() as u64;
    if end > HIGH_MEMORY {
        return Err(LinuxError::Config("DSDT does not fit below 1 MiB".into()));
    }
    let tables: [(u64, &[u8]); 6] = [
        (rsdp, &rsdp_bytes),
        (xsdt, &xsdt_bytes),
        (fadt_at, &fadt(dsdt_at, facs)),
        (facs, &facs_bytes),
        (madt_at, &madt_bytes),
        (dsdt_at, dsdt.as_slice()),
    ];
    for (gpa, bytes) in tables {
        mem.write_slice(bytes, GuestAddress(gpa))
            .map_err(|source| LinuxError::GuestMemory {
                what: "ACPI table",
                gpa,
                source,
            })?;
    }
    Ok(AcpiLayout {
        rsdp,
        xsdt,
        fadt: fadt_at,
        facs,
        madt: madt_at,
        dsdt: dsdt_at,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    fn table(mem: &GuestMemory, gpa: u64) -> Vec<u8> {
        let len = u32::from_le_bytes(read(mem, gpa + 4, 4).try_into().unwrap());
        read(mem, gpa, len as usize)
    }

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_link_up_and_checksum() {
        let mem = crate::memory::allocate(16 << 20).unwrap();
        let l = write_tables(
            &mem,
            AcpiConfig {
                vcpus: 2,
                vmbus: true,
            },
        )
        .unwrap();
        let rsdp = read(&mem, l.rsdp, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(&rsdp));
        assert_eq!(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()), l.xsdt);
        let xsdt = table(&mem, l.xsdt);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(sums_to_zero(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![l.fadt, l.madt]);
        let fadt = table(&mem, l.fadt);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(sums_to_zero(&fadt));
        // X_DSDT at offset 140, PM1a_CNT_BLK at 64, PM_TMR_BLK at 76, RESET_VALUE at 128.
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            l.dsdt
        );
        assert_eq!(
            u32::from_le_bytes(fadt[64..68].try_into().unwrap()),
            u32::from(PM1A_CNT)
        );
        assert_eq!(
            u32::from_le_bytes(fadt[76..80].try_into().unwrap()),
            u32::from(PM_TMR)
        );
        assert_eq!(fadt[128], RESET_VALUE);
        let madt = table(&mem, l.madt);
        assert!(sums_to_zero(&madt));
        // Two LAPIC entries (type 0) then the IOAPIC (type 1).
        assert_eq!((madt[44], madt[52], madt[60]), (0, 0, 1));
        assert_eq!(madt[55], 1, "second LAPIC has id 1");
        let dsdt = table(&mem, l.dsdt);
        assert!(sums_to_zero(&dsdt));
        assert_eq!(&read(&mem, l.facs, 4), b"FACS");
        assert_eq!(l.facs % 64, 0);
    }

    #[test]
    fn dsdt_names_s5_and_the_vmbus_device_only_when_asked() {
        let with = dsdt_body(true);
        let without = dsdt_body(false);
        let has = |b: &[u8], s: &[u8]| b.windows(s.len()).any(|w| w == s);
        assert!(has(&with, b"_S5_") && has(&without, b"_S5_"));
        assert!(has(&with, b"VMBS") && has(&with, b"VMBus\0"));
        assert!(!has(&without, b"VMBS"));
        // DeviceOp is the extended opcode 0x5B 0x82.
        assert!(has(&with, &[0x5B, 0x82]));
        assert!(!has(&without, &[0x5B, 0x82]));
    }
}
