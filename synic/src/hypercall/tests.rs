use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::*;

const RAM: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn input(conn: u32, ty: u32, size: u32, fill: u8) -> PostMessageInput {
    PostMessageInput {
        connection_id: conn,
        reserved: 0,
        message_type: ty,
        payload_size: size,
        payload: [fill; MAX_PAYLOAD],
    }
}

fn post_at(mem: &GuestMemoryMmap<()>, gpa: u64, msg: &PostMessageInput) -> HypercallRegs {
    mem.write_slice(msg.as_bytes(), GuestAddress(gpa)).unwrap();
    HypercallRegs {
        control: HypercallControl::simple(HVCALL_POST_MESSAGE, false).0,
        input: gpa,
        output: 0,
    }
}

fn signal_fast(value: u64) -> HypercallRegs {
    HypercallRegs {
        control: HypercallControl::simple(HVCALL_SIGNAL_EVENT, true).0,
        input: value,
        output: 0,
    }
}

#[test]
fn post_message_decodes_the_exact_payload() {
    let mem = memory();
    let mut msg = input(0x42, 1, 5, 0);
    msg.payload[..6].copy_from_slice(b"hello!");
    let Hypercall::PostMessage(m) = decode(&mem, &post_at(&mem, 0x2000, &msg)).unwrap() else {
        panic!("not a post")
    };
    assert_eq!(m.connection_id, 0x42);
    assert_eq!(m.message_type, 1);
    assert_eq!(m.payload(), b"hello");
}

#[test]
fn post_message_accepts_empty_and_full_payloads() {
    let mem = memory();
    for size in [0, 240] {
        let regs = post_at(&mem, 0x3000, &input(1, 0x7FFF_FFFF, size, 0xAB));
        let Ok(Hypercall::PostMessage(m)) = decode(&mem, &regs) else {
            panic!("size {size}")
        };
        assert_eq!(m.payload().len(), size as usize);
    }
}

#[test]
fn reserved_control_bits_are_invalid_input() {
    let mem = memory();
    let base = post_at(&mem, 0x2000, &input(1, 1, 0, 0));
    for bit in [27, 31, 44, 47, 60, 63] {
        let regs = HypercallRegs {
            control: base.control | 1 << bit,
            ..base
        };
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidHypercallInput),
            "bit {bit}"
        );
    }
}

#[test]
fn unknown_call_code_is_invalid_code() {
    let mem = memory();
    for code in [0u16, 0x5B, 0x5E, 0x8, 0xFFFF] {
        let regs = HypercallRegs {
            control: u64::from(code),
            input: 0x2000,
            output: 0,
        };
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidHypercallCode),
            "{code:#x}"
        );
    }
}

#[test]
fn rep_and_variable_header_on_simple_calls_are_invalid_input() {
    let mem = memory();
    let base = post_at(&mem, 0x2000, &input(1, 1, 0, 0));
    for extra in [1u64 << 32, 1 << 48, 1 << 17, 0x3FF << 17] {
        let regs = HypercallRegs {
            control: base.control | extra,
            ..base
        };
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidHypercallInput),
            "{extra:#x}"
        );
        let regs = HypercallRegs {
            control: signal_fast(1).control | extra,
            ..signal_fast(1)
        };
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidHypercallInput),
            "{extra:#x}"
        );
    }
}

#[test]
fn fast_post_message_is_invalid_input() {
    let mem = memory();
    let regs = HypercallRegs {
        control: HypercallControl::simple(HVCALL_POST_MESSAGE, true).0,
        input: 1,
        output: 1,
    };
    assert_eq!(decode(&mem, &regs), Err(HvStatus::InvalidHypercallInput));
}

#[test]
fn misaligned_page_crossing_or_absent_input_is_invalid_alignment() {
    let mem = memory();
    let msg = input(1, 1, 0, 0);
    let control = HypercallControl::simple(HVCALL_POST_MESSAGE, false).0;
    for gpa in [
        0x2004,
        0x2001,
        0x2F08,
        RAM,
        RAM - 0x80,
        u64::MAX - 7,
        1 << 52,
    ] {
        if gpa.saturating_add(256) <= RAM {
            mem.write_slice(
                &msg.as_bytes()[..0x3000u64.saturating_sub(gpa).min(256) as usize],
                GuestAddress(gpa),
            )
            .unwrap();
        }
        let regs = HypercallRegs {
            control,
            input: gpa,
            output: 0,
        };
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidAlignment),
            "{gpa:#x}"
        );
    }
    // The last 256 bytes of a page are fine.
    assert!(decode(&mem, &post_at(&mem, 0x2F00, &msg)).is_ok());
}

#[test]
fn bad_message_type_is_invalid_parameter() {
    let mem = memory();
    for ty in [0, 0x8000_0000, 0x8000_0010, u32::MAX] {
        let regs = post_at(&mem, 0x2000, &input(1, ty, 0, 0));
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidParameter),
            "{ty:#x}"
        );
    }
}

#[test]
fn oversized_payload_is_invalid_parameter() {
    let mem = memory();
    for size in [241, 256, 0x1_0000, u32::MAX] {
        let regs = post_at(&mem, 0x2000, &input(1, 1, size, 0));
        assert_eq!(
            decode(&mem, &regs),
            Err(HvStatus::InvalidParameter),
            "{size}"
        );
    }
}

#[test]
fn reserved_connection_bits_or_rsvdz_are_invalid_input() {
    let mem = memory();
    let regs = post_at(&mem, 0x2000, &input(0x0100_0001, 1, 0, 0));
    assert_eq!(decode(&mem, &regs), Err(HvStatus::InvalidHypercallInput));
    let mut msg = input(1, 1, 0, 0);
    msg.reserved = 1;
    let regs = post_at(&mem, 0x2000, &msg);
    assert_eq!(decode(&mem, &regs), Err(HvStatus::InvalidHypercallInput));
}

#[test]
fn signal_event_fast_form_decodes() {
    let mem = memory();
    let call = decode(&mem, &signal_fast(0x00AB_CDEF | 7 << 32)).unwrap();
    assert_eq!(
        call,
        Hypercall::SignalEvent(SignalEvent {
            connection_id: 0xAB_CDEF,
            flag_number: 7
        })
    );
}

#[test]
fn signal_event_reserved_bits_are_invalid_input() {
    let mem = memory();
    for bit in [24, 31, 48, 63] {
        assert_eq!(
            decode(&mem, &signal_fast(1 | 1 << bit)),
            Err(HvStatus::InvalidHypercallInput),
            "bit {bit}"
        );
    }
}

#[test]
fn signal_event_memory_form_reads_eight_bytes() {
    let mem = memory();
    mem.write_obj(0x0000_0009_0000_0033u64, GuestAddress(0x4008))
        .unwrap();
    let control = HypercallControl::simple(HVCALL_SIGNAL_EVENT, false).0;
    let regs = HypercallRegs {
        control,
        input: 0x4008,
        output: 0,
    };
    assert_eq!(
        decode(&mem, &regs),
        Ok(Hypercall::SignalEvent(SignalEvent {
            connection_id: 0x33,
            flag_number: 9
        }))
    );
    let regs = HypercallRegs {
        control,
        input: 0x4004,
        output: 0,
    };
    assert_eq!(decode(&mem, &regs), Err(HvStatus::InvalidAlignment));
    let regs = HypercallRegs {
        control,
        input: RAM,
        output: 0,
    };
    assert_eq!(decode(&mem, &regs), Err(HvStatus::InvalidAlignment));
}

#[derive(Default)]
struct Recorder {
    posts: Mutex<Vec<(VpIndex, u32, Vec<u8>)>>,
    signals: Mutex<Vec<(VpIndex, u16)>>,
    answer: Mutex<Option<HvStatus>>,
}

impl MessageConnection for Recorder {
    fn post(&self, caller: VpIndex, m: &PostMessage) -> HvStatus {
        self.posts
            .lock()
            .unwrap()
            .push((caller, m.message_type, m.payload().to_vec()));
        self.answer.lock().unwrap().unwrap_or(HvStatus::Success)
    }
}

impl EventConnection for Recorder {
    fn signal(&self, caller: VpIndex, flag: u16) -> HvStatus {
        self.signals.lock().unwrap().push((caller, flag));
        self.answer.lock().unwrap().unwrap_or(HvStatus::Success)
    }
}

#[test]
fn dispatch_reaches_the_registered_connection_with_the_caller() {
    let mem = memory();
    let conns = Connections::new();
    let rec = Arc::new(Recorder::default());
    conns.add_message(5, rec.clone()).unwrap();
    conns.add_event(5, rec.clone()).unwrap();
    let regs = post_at(&mem, 0x2000, &input(5, 9, 3, 0x11));
    assert_eq!(handle(&mem, &regs, VpIndex(3), &conns), 0);
    assert_eq!(
        *rec.posts.lock().unwrap(),
        vec![(VpIndex(3), 9, vec![0x11; 3])]
    );
    assert_eq!(
        handle(&mem, &signal_fast(5 | 2 << 32), VpIndex(1), &conns),
        0
    );
    assert_eq!(*rec.signals.lock().unwrap(), vec![(VpIndex(1), 2)]);
}

#[test]
fn connection_status_is_returned_in_rax() {
    let mem = memory();
    let conns = Connections::new();
    let rec = Arc::new(Recorder::default());
    *rec.answer.lock().unwrap() = Some(HvStatus::InsufficientBuffers);
    conns.add_message(1, rec).unwrap();
    let regs = post_at(&mem, 0x2000, &input(1, 1, 0, 0));
    assert_eq!(handle(&mem, &regs, VpIndex(0), &conns), 0x13);
}

#[test]
fn unknown_or_removed_connection_is_invalid_connection_id() {
    let mem = memory();
    let conns = Connections::new();
    let rec = Arc::new(Recorder::default());
    conns.add_event(7, rec.clone()).unwrap();
    // Message and event ids are separate spaces.
    let regs = post_at(&mem, 0x2000, &input(7, 1, 0, 0));
    assert_eq!(handle(&mem, &regs, VpIndex(0), &conns), 0x12);
    assert!(conns.remove_event(7).is_some());
    assert_eq!(handle(&mem, &signal_fast(7), VpIndex(0), &conns), 0x12);
    assert!(rec.signals.lock().unwrap().is_empty());
}

#[test]
fn registering_twice_or_a_wide_id_is_refused() {
    let conns = Connections::new();
    let rec = Arc::new(Recorder::default());
    conns.add_message(1, rec.clone()).unwrap();
    assert_eq!(
        conns.add_message(1, rec.clone()),
        Err(ConnectionError::InUse(1))
    );
    assert_eq!(
        conns.add_event(0x0100_0000, rec),
        Err(ConnectionError::InvalidId(0x0100_0000))
    );
}

#[test]
fn status_codes_round_trip_and_name_themselves() {
    for code in 0..=0x20u16 {
        if let Some(s) = HvStatus::from_code(code) {
            assert_eq!(s.code(), code);
            assert!(s.to_string().starts_with("HV_STATUS_"));
        }
    }
    assert_eq!(
        HvStatus::InvalidSynicState.to_string(),
        "HV_STATUS_INVALID_SYNIC_STATE (0x18)"
    );
}

/// Another vCPU rewrites the input page while this one decodes: every decode sees one
/// consistent copy (all-valid or rejected), never a mix that passes validation with a payload
/// size from one version and bytes from the other beyond what it validated.
#[test]
fn input_rewritten_concurrently_is_validated_on_the_copy() {
    let mem = Arc::new(memory());
    let good = input(1, 1, 240, 0x55);
    let bad = input(1, 1, 0xFFFF_FFFF, 0xAA);
    let regs = post_at(&mem, 0x2000, &good);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mem, stop) = (mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                let m = if flip { &bad } else { &good };
                mem.write_slice(m.as_bytes(), GuestAddress(0x2000)).unwrap();
                flip = !flip;
            }
        })
    };
    for _ in 0..20_000 {
        match decode(&*mem, &regs) {
            Ok(Hypercall::PostMessage(m)) => assert!(m.payload().len() <= MAX_PAYLOAD),
            Ok(other) => panic!("decoded {other:?}"),
            Err(s) => assert_eq!(s, HvStatus::InvalidParameter),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

proptest! {
    /// Arbitrary registers over arbitrary guest bytes: decode never panics, and whatever it
    /// accepts satisfies every TLFS rule.
    #[test]
    fn decode_never_panics_and_accepts_only_valid_input(
        control in prop_oneof![
            any::<u64>(),
            (any::<bool>(), prop_oneof![Just(0x5Cu16), Just(0x5D)])
                .prop_map(|(f, c)| HypercallControl::simple(c, f).0),
        ],
        input in prop_oneof![any::<u64>(), (0u64..RAM / 8).prop_map(|q| q * 8)],
        bytes in proptest::collection::vec(any::<u8>(), 256),
    ) {
        let mem = memory();
        if input < RAM {
            let n = (RAM - input).min(256) as usize;
            mem.write_slice(&bytes[..n], GuestAddress(input)).unwrap();
        }
        let regs = HypercallRegs { control, input, output: 0 };
        match decode(&mem, &regs) {
            Ok(Hypercall::PostMessage(m)) => {
                prop_assert_eq!(control & 0xFFFF, 0x5C);
                prop_assert!(m.message_type != 0 && m.message_type & 0x8000_0000 == 0);
                prop_assert!(m.payload().len() <= MAX_PAYLOAD);
                prop_assert!(m.connection_id <= CONNECTION_ID_MASK);
                prop_assert_eq!(input % 8, 0);
            }
            Ok(Hypercall::SignalEvent(e)) => {
                prop_assert_eq!(control & 0xFFFF, 0x5D);
                prop_assert!(e.connection_id <= CONNECTION_ID_MASK);
            }
            Err(_) => {}
        }
    }
}

mod ports {
    use super::*;
    use crate::testing::RecordingRaise;
    use crate::{FakeReferenceClock, Mode, Partition, PartitionConfig, SintIndex, Vp};
    use synic_msr::{index, Origin, Profile};

    type Mem = Arc<GuestMemoryMmap<()>>;

    fn partition(capacity: usize) -> (Arc<Partition<Mem>>, Vec<Vp<Mem>>, Arc<RecordingRaise>) {
        let raise = Arc::new(RecordingRaise::default());
        let config =
            PartitionConfig::new(Mode::Userspace, Profile::Tlfs, 2).with_queue_capacity(capacity);
        let (p, mut vps) = Partition::new(
            config,
            Arc::new(memory()),
            raise.clone(),
            Arc::new(FakeReferenceClock::new(0)),
        )
        .unwrap();
        let vp = &mut vps[1];
        vp.wrmsr(index::SCONTROL, 1, Origin::Guest).unwrap();
        vp.wrmsr(index::SIMP, 0x8001, Origin::Guest).unwrap();
        vp.wrmsr(index::SIEFP, 0x9001, Origin::Guest).unwrap();
        vp.wrmsr(index::SINT0 + 3, 0x50, Origin::Guest).unwrap();
        (p, vps, raise)
    }

    fn sint3() -> SintIndex {
        SintIndex::new(3).unwrap()
    }

    #[test]
    fn message_port_delivers_the_payload_to_its_sint() {
        let (p, _vps, raise) = partition(4);
        let conns = Connections::new();
        conns
            .add_message(
                0x77,
                Arc::new(MessagePort::new(p.clone(), VpIndex(1), sint3())),
            )
            .unwrap();
        let mem = p.memory().clone();
        let regs = post_at(&mem, 0x2000, &input(0x77, 0x1234, 4, 0xC3));
        assert_eq!(handle(&*mem, &regs, VpIndex(0), &conns), 0);
        let slot = 0x8000 + 3 * 256;
        assert_eq!(mem.read_obj::<u32>(GuestAddress(slot)).unwrap(), 0x1234);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(slot + 4)).unwrap(), 4);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(slot + 8)).unwrap(), 0x77);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(slot + 16)).unwrap(),
            0xC3C3_C3C3
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(slot + 20)).unwrap(), 0);
        assert_eq!(raise.raised().len(), 1);
    }

    #[test]
    fn message_port_with_a_full_queue_answers_insufficient_buffers() {
        let (p, _vps, _raise) = partition(1);
        let conns = Connections::new();
        conns
            .add_message(
                1,
                Arc::new(MessagePort::new(p.clone(), VpIndex(1), sint3())),
            )
            .unwrap();
        let mem = p.memory().clone();
        let regs = post_at(&mem, 0x2000, &input(1, 1, 0, 0));
        // First lands in the slot, second waits in the queue, third finds the queue full.
        assert_eq!(handle(&*mem, &regs, VpIndex(0), &conns), 0);
        assert_eq!(handle(&*mem, &regs, VpIndex(0), &conns), 0);
        assert_eq!(handle(&*mem, &regs, VpIndex(0), &conns), 0x13);
    }

    #[test]
    fn event_port_sets_base_plus_relative_flag_and_refuses_beyond_its_count() {
        let (p, _vps, raise) = partition(4);
        let conns = Connections::new();
        let port = EventPort::new(p.clone(), VpIndex(1), sint3(), 100, 4);
        conns.add_event(9, Arc::new(port)).unwrap();
        let mem = p.memory().clone();
        assert_eq!(
            handle(&*mem, &signal_fast(9 | 3 << 32), VpIndex(0), &conns),
            0
        );
        // Flag 103 of SINT3: byte 256*3 + 103/8, bit 103 % 8.
        let byte = mem
            .read_obj::<u8>(GuestAddress(0x9000 + 3 * 256 + 12))
            .unwrap();
        assert_eq!(byte, 1 << 7);
        assert_eq!(raise.raised().len(), 1);
        assert_eq!(
            handle(&*mem, &signal_fast(9 | 4 << 32), VpIndex(0), &conns),
            0x5
        );
    }

    #[test]
    fn event_port_past_the_last_flag_is_invalid_parameter() {
        let (p, _vps, _raise) = partition(4);
        let conns = Connections::new();
        conns
            .add_event(
                2,
                Arc::new(EventPort::new(p.clone(), VpIndex(1), sint3(), 2047, 2)),
            )
            .unwrap();
        let mem = p.memory().clone();
        assert_eq!(handle(&*mem, &signal_fast(2), VpIndex(0), &conns), 0);
        assert_eq!(
            handle(&*mem, &signal_fast(2 | 1 << 32), VpIndex(0), &conns),
            0x5
        );
    }

    #[test]
    fn event_port_on_a_disabled_event_page_is_invalid_synic_state() {
        let (p, mut vps, _raise) = partition(4);
        vps[1].wrmsr(index::SIEFP, 0, Origin::Guest).unwrap();
        let conns = Connections::new();
        conns
            .add_event(
                2,
                Arc::new(EventPort::new(p.clone(), VpIndex(1), sint3(), 0, 1)),
            )
            .unwrap();
        let mem = p.memory().clone();
        assert_eq!(handle(&*mem, &signal_fast(2), VpIndex(0), &conns), 0x18);
    }
}
