//! One test per row of `docs/msr-semantics.md`, named after the row id and the behaviour it
//! pins down, plus a check that the document's rows and these tests match one to one.

use synic_msr::index::{
    EOM, GUEST_OS_ID, HYPERCALL, REFERENCE_TSC, SCONTROL, SIEFP, SIMP, SINT0, STIMER0_CONFIG,
    STIMER0_COUNT, SVERSION, TIME_REF_COUNT, VP_INDEX,
};
use synic_msr::{
    Change, GpReason, Hypercall, KvmSynic, Msr, Origin, PageRegister, PageUpdate,
    PartitionRegisters, Profile, Sint, SintIndex, StimerIndex, VpRegisters, WriteOutcome,
};

use Origin::{Guest, Host};

mod control;
mod lifecycle;
mod pages;
mod partition;
mod sint;
mod stimer;
mod vp_index;

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers.

/// The 34 modelled indices, written out independently of the crate's classifier.
#[rustfmt::skip]
const KNOWN: [u32; 34] = [
    0x4000_0000, 0x4000_0001, 0x4000_0002, 0x4000_0020, 0x4000_0021, 0x4000_0080, 0x4000_0081,
    0x4000_0082, 0x4000_0083, 0x4000_0084, 0x4000_0090, 0x4000_0091, 0x4000_0092, 0x4000_0093,
    0x4000_0094, 0x4000_0095, 0x4000_0096, 0x4000_0097, 0x4000_0098, 0x4000_0099, 0x4000_009A,
    0x4000_009B, 0x4000_009C, 0x4000_009D, 0x4000_009E, 0x4000_009F, 0x4000_00B0, 0x4000_00B1,
    0x4000_00B2, 0x4000_00B3, 0x4000_00B4, 0x4000_00B5, 0x4000_00B6, 0x4000_00B7,
];
const PARTITION: [u32; 4] = [GUEST_OS_ID, HYPERCALL, TIME_REF_COUNT, REFERENCE_TSC];
const SYNIC: [u32; 5] = [SCONTROL, SVERSION, SIEFP, SIMP, EOM];
const PAGES: [u32; 2] = [SIMP, SIEFP];
const VALUES: [u64; 6] = [0, 1, 0x1_0000, 0x5001, u64::MAX, 1 << 63];
const ACTIVATIONS: [Option<KvmSynic>; 3] = [None, Some(KvmSynic::V1), Some(KvmSynic::V2)];

fn sints() -> impl Iterator<Item = u32> {
    SINT0..SINT0 + 16
}
fn cfg(n: u32) -> u32 {
    STIMER0_CONFIG + 2 * n
}
fn cnt(n: u32) -> u32 {
    STIMER0_COUNT + 2 * n
}
fn stimer_regs() -> impl Iterator<Item = u32> {
    (0..4).flat_map(|n| [cfg(n), cnt(n)])
}
fn unknown_indices() -> Vec<u32> {
    let mut v: Vec<u32> = (0x4000_0000..=0x4000_00FF)
        .filter(|i| !KNOWN.contains(i))
        .collect();
    v.extend([
        0,
        0x3FFF_FFFF,
        0x4000_0100,
        0x4000_1080,
        0xC000_0080,
        u32::MAX,
    ]);
    v
}

fn tlfs() -> VpRegisters {
    VpRegisters::new(Profile::Tlfs, 3)
}
fn kvm(v: KvmSynic) -> VpRegisters {
    let mut vp = VpRegisters::new(Profile::Kvm, 3);
    vp.activate(v);
    vp
}
fn kvm_off() -> VpRegisters {
    VpRegisters::new(Profile::Kvm, 3)
}
fn kvm_any(a: Option<KvmSynic>) -> VpRegisters {
    match a {
        Some(v) => kvm(v),
        None => kvm_off(),
    }
}
/// Every KVM activation state, each with both versions when activated.
fn kvm_all() -> Vec<VpRegisters> {
    ACTIVATIONS.iter().map(|&a| kvm_any(a)).collect()
}
fn kvm_on() -> Vec<VpRegisters> {
    vec![kvm(KvmSynic::V1), kvm(KvmSynic::V2)]
}

fn rd(vp: &VpRegisters, index: u32, origin: Origin) -> u64 {
    vp.rdmsr(index, origin)
        .unwrap_or_else(|gp| panic!("read {index:#x} by {origin:?} refused: {gp}"))
}
fn wr(vp: &mut VpRegisters, index: u32, value: u64, origin: Origin) -> WriteOutcome {
    vp.wrmsr(index, value, origin)
        .unwrap_or_else(|gp| panic!("write {index:#x} = {value:#x} by {origin:?} refused: {gp}"))
}
/// A refused read: returns the reason after checking the fault names the index.
fn rd_gp(vp: &VpRegisters, index: u32, origin: Origin) -> GpReason {
    let gp = vp
        .rdmsr(index, origin)
        .expect_err("read should have been refused");
    assert_eq!(gp.index, index);
    gp.reason
}
/// A refused write: returns the reason after checking the fault names the index and that the
/// register file did not change.
fn wr_gp(vp: &mut VpRegisters, index: u32, value: u64, origin: Origin) -> GpReason {
    let before = vp.clone();
    let gp = vp.wrmsr(index, value, origin).expect_err(&format!(
        "write {index:#x} = {value:#x} by {origin:?} should have been refused"
    ));
    assert_eq!(gp.index, index);
    assert_eq!(*vp, before, "a refused write changed the register file");
    gp.reason
}

fn part(profile: Profile) -> PartitionRegisters {
    PartitionRegisters::new(profile)
}
fn prd(p: &PartitionRegisters, index: u32, origin: Origin) -> u64 {
    p.rdmsr(index, origin, 0)
        .unwrap_or_else(|gp| panic!("read {index:#x} refused: {gp}"))
}
fn pwr(p: &mut PartitionRegisters, index: u32, value: u64, origin: Origin) -> WriteOutcome {
    p.wrmsr(index, value, origin)
        .unwrap_or_else(|gp| panic!("write {index:#x} = {value:#x} by {origin:?} refused: {gp}"))
}
fn pwr_gp(p: &mut PartitionRegisters, index: u32, value: u64, origin: Origin) -> GpReason {
    let before = p.clone();
    let gp = p
        .wrmsr(index, value, origin)
        .expect_err("write should have been refused");
    assert_eq!(gp.index, index);
    assert_eq!(
        *p, before,
        "a refused write changed the partition registers"
    );
    gp.reason
}

fn sint(n: u8) -> SintIndex {
    SintIndex::new(u32::from(n)).unwrap()
}
fn timer(n: u8) -> StimerIndex {
    StimerIndex::new(u32::from(n)).unwrap()
}
fn page_change(index: u32, old: u64, new: u64, zero_page: bool) -> Change {
    let update = PageUpdate {
        old: PageRegister(old),
        new: PageRegister(new),
        zero_page,
    };
    if index == SIMP {
        Change::MessagePage(update)
    } else {
        Change::EventFlagsPage(update)
    }
}

/// Asserts a write outcome's register, old and new values and change.
fn assert_outcome(out: WriteOutcome, index: u32, old: u64, new: u64, change: Change) {
    assert_eq!(out.msr, Msr::from_index(index).unwrap());
    assert_eq!((out.old, out.new), (old, new), "old/new of {index:#x}");
    assert_eq!(out.change, change, "change of {index:#x}");
}

// Shared by every KVMOFF row: guest accesses refused; host reads pass; host zero writes pass.
fn inactive_guest_refused(index: u32, read_gated: bool) {
    let mut vp = kvm_off();
    if read_gated {
        assert_eq!(rd_gp(&vp, index, Guest), GpReason::SynicInactive);
    } else {
        rd(&vp, index, Guest);
    }
    for value in VALUES {
        assert_eq!(wr_gp(&mut vp, index, value, Guest), GpReason::SynicInactive);
    }
}

fn inactive_host_nonzero_refused(vp: &mut VpRegisters, index: u32) {
    for value in VALUES.into_iter().filter(|&v| v != 0) {
        assert_eq!(
            wr_gp(vp, index, value, Host),
            GpReason::InactiveNonZeroWrite
        );
    }
    // Even the value already stored.
    let current = rd(vp, index, Host);
    if current != 0 {
        assert_eq!(
            wr_gp(vp, index, current, Host),
            GpReason::InactiveNonZeroWrite
        );
    }
}

#[test]
fn sctl_g_kvmoff_1_guest_access_is_gp_synic_inactive() {
    inactive_guest_refused(SCONTROL, true);
}

#[test]
fn sctl_h_kvmoff_1_host_reads_and_writes_zero_only() {
    let mut vp = kvm_off();
    assert_eq!(rd(&vp, SCONTROL, Host), 0);
    let out = wr(&mut vp, SCONTROL, 0, Host);
    assert_outcome(out, SCONTROL, 0, 0, Change::None);
    inactive_host_nonzero_refused(&mut vp, SCONTROL);
}

// ---------------------------------------------------------------------------------------------
// The document and this file must describe the same rows.

/// Every file of this test, so the check sees every test function.
const SOURCES: [&str; 8] = [
    include_str!("main.rs"),
    include_str!("control.rs"),
    include_str!("lifecycle.rs"),
    include_str!("pages.rs"),
    include_str!("partition.rs"),
    include_str!("sint.rs"),
    include_str!("stimer.rs"),
    include_str!("vp_index.rs"),
];

/// Row ids in the first cell of the document's tables: `` | `GROUP-O-PROFILE-N` | ``.
fn doc_row_ids(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|id| is_row_id(id))
        .map(str::to_owned)
        .collect()
}

fn is_row_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('-').collect();
    parts.len() == 4
        && !parts[0].is_empty()
        && parts[0].chars().all(|c| c.is_ascii_uppercase())
        && matches!(parts[1], "G" | "H")
        && matches!(parts[2], "TLFS" | "KVM" | "KVMOFF")
        && !parts[3].is_empty()
        && parts[3].chars().all(|c| c.is_ascii_digit())
}

/// Names of the `#[test]` functions in `src`.
fn test_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[test]" {
            let f = lines.next().unwrap_or_default().trim();
            let name = f
                .strip_prefix("fn ")
                .and_then(|rest| rest.split('(').next())
                .unwrap_or_else(|| panic!("#[test] not followed by a fn: {f}"));
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn doc_rows_and_table_tests_match() {
    let doc = include_str!("../../../docs/msr-semantics.md");
    let modules = SOURCES[0].lines().filter(|l| l.starts_with("mod ")).count();
    assert_eq!(
        modules + 1,
        SOURCES.len(),
        "a module of this test is missing from SOURCES"
    );
    let src = SOURCES.concat();
    let ids = doc_row_ids(doc);
    assert!(ids.len() > 100, "only {} row ids found", ids.len());
    let mut seen = std::collections::HashSet::new();
    for id in &ids {
        assert!(seen.insert(id), "row id {id} appears twice in the document");
    }
    let prefixes: Vec<String> = ids
        .iter()
        .map(|id| format!("{}_", id.to_lowercase().replace('-', "_")))
        .collect();
    let tests: Vec<String> = test_names(&src)
        .into_iter()
        .filter(|t| t != "doc_rows_and_table_tests_match")
        .collect();
    for (id, prefix) in ids.iter().zip(&prefixes) {
        let n = tests
            .iter()
            .filter(|t| t.starts_with(prefix.as_str()))
            .count();
        assert_eq!(n, 1, "row {id} has {n} tests named {prefix}<behaviour>");
    }
    for t in &tests {
        let n = prefixes
            .iter()
            .filter(|p| t.starts_with(p.as_str()))
            .count();
        assert_eq!(n, 1, "test {t} matches {n} row ids in the document");
        assert!(
            prefixes
                .iter()
                .all(|p| t.len() > p.len() || !t.starts_with(p.as_str())),
            "test {t} does not name a behaviour after its row id"
        );
    }
    assert_eq!(tests.len(), ids.len());
}
