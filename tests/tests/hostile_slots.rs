//! A guest that plays with its message slots: garbage message types, MessagePending set and
//! cleared in odd orders, slots freed without EOM, EOMs on empty slots, and EOM storms while
//! the host posts. The host never loses, duplicates or reorders a message, writes only the
//! message page, and answers bad EOMs as the profile says.

#[path = "hostile/common.rs"]
mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use synic::{Error, Posted, VpIndex};
use synic_e2e::harness::host_message;
use synic_e2e::layout::{state, vector};
use synic_e2e::scenarios::messages::assert_sequence;
use synic_e2e::{run, Eoi, Setup, SintValue, SynicGuest, VmSpec};
use synic_msr::index;

use common::{assert_wrote_only, clear_dirty, tlfs, Record, SIMP0};

const SINT: u8 = 4;
const SLOT: u64 = SIMP0 + 256 * SINT as u64;

/// Guest stores into its own slot (not host writes).
fn store32(g: &mut SynicGuest, at: u64, value: u32) {
    g.emit(|a| {
        a.mov(rax, at)?;
        a.mov(dword_ptr(rax), value)?;
        a.mfence()
    })
    .unwrap();
}

fn store8(g: &mut SynicGuest, at: u64, value: u8) {
    g.emit(|a| {
        a.mov(rax, at)?;
        a.mov(byte_ptr(rax), u32::from(value))?;
        a.mfence()
    })
    .unwrap();
}

/// On a masked SINT (messages land, no interrupts; the guest polls):
///
/// 1. The guest writes a garbage message_type and MessagePending into the empty slot: two posts
///    queue behind it (the slot is busy), the garbage stays.
/// 2. The guest clears MessagePending on the busy slot and writes EOM: the host finds the slot
///    still busy and sets MessagePending again.
/// 3. The guest frees the slot and clears MessagePending, no EOM: the next post first delivers
///    the oldest queued message (with MessagePending: more are queued).
/// 4. The guest takes three messages (each EOM brings the next).
/// 5. MessagePending set on an empty slot and two EOMs: nothing queued, nothing written; the
///    next post goes straight into the slot with the flags the host chose (none).
/// 6. A garbage type 0xFFFF_FFFF with PayloadSize 255, EOM: the next post queues; the guest frees
///    the slot and writes EOM: delivered.
///
/// Five messages, received once each, in order; the host wrote only the message page.
fn message_pending_and_type_games(setup: Setup) {
    let mut g = SynicGuest::new().unwrap();
    let masked = SintValue {
        masked: true,
        ..SintValue::vector(vector(SINT))
    };
    g.synic_up(&[(SINT, masked)]).unwrap();
    g.step(0).unwrap();
    // 1.
    store32(&mut g, SLOT, 0x7777);
    store8(&mut g, SLOT + 5, 1);
    g.step(1).unwrap();
    // 2.
    store8(&mut g, SLOT + 5, 0);
    g.wrmsr(index::EOM, 0).unwrap();
    g.step(2).unwrap();
    // 3.
    store32(&mut g, SLOT, 0);
    store8(&mut g, SLOT + 5, 0);
    g.step(3).unwrap();
    // 4.
    for _ in 0..3 {
        g.take_if_present(SINT).unwrap();
    }
    // 5.
    store8(&mut g, SLOT + 5, 1);
    g.wrmsr(index::EOM, 0).unwrap();
    g.wrmsr(index::EOM, 0).unwrap();
    g.step(4).unwrap();
    g.take_if_present(SINT).unwrap();
    // 6.
    store32(&mut g, SLOT, 0xFFFF_FFFF);
    store8(&mut g, SLOT + 4, 255);
    g.wrmsr(index::EOM, 0).unwrap();
    g.step(5).unwrap();
    store32(&mut g, SLOT, 0);
    g.wrmsr(index::EOM, 0).unwrap();
    g.take_if_present(SINT).unwrap();
    g.step(6).unwrap();
    g.exit_ok().unwrap();

    let done = Record::<u32>::new();
    let d = done.clone();
    let f = run(
        VmSpec::new(setup, 1),
        &g.build().unwrap(),
        move |host, _, step| {
            let mem = host.memory();
            let slot = || {
                let mut b = [0u8; 256];
                vm_memory::Bytes::read_slice(mem, &mut b, vm_memory::GuestAddress(SLOT)).unwrap();
                synic_e2e::Logged::from_bytes(&b)
            };
            let queued =
                || host.partition().counters(VpIndex(0)).unwrap().sints[usize::from(SINT)].queued;
            match step {
                0 => clear_dirty(mem),
                1 => {
                    assert_eq!(host.post(0, SINT, 0), Ok(Posted::Queued));
                    assert_eq!(host.post(0, SINT, 1), Ok(Posted::Queued));
                    let s = slot();
                    assert_eq!((s.message_type, s.flags), (0x7777, 1), "{s:?}");
                    assert_eq!(queued(), 2);
                }
                2 => {
                    let s = slot();
                    assert_eq!((s.message_type, s.flags), (0x7777, 1), "pending set again");
                    assert_eq!(queued(), 2);
                }
                3 => {
                    assert_eq!(host.post(0, SINT, 2), Ok(Posted::Queued));
                    let s = slot();
                    assert_eq!((s.message_type, s.qword(0), s.flags & 1), (0x100, 0, 1));
                    assert_eq!(queued(), 2);
                }
                4 => {
                    assert_eq!(queued(), 0);
                    assert_eq!(host.post(0, SINT, 3), Ok(Posted::Delivered));
                    let s = slot();
                    assert_eq!((s.qword(0), s.flags), (3, 0), "{s:?}");
                }
                5 => assert_eq!(host.post(0, SINT, 4), Ok(Posted::Queued)),
                _ => assert_wrote_only(mem, &[SIMP0], "slot games"),
            }
            d.push(step);
        },
    );
    f.assert_exited_ok();
    assert_eq!(done.get(), [0, 1, 2, 3, 4, 5, 6]);
    assert!(f.gps(0).is_empty(), "{:x?}", f.gps(0));
    let v = f.view();
    assert_sequence(&v.messages(0), SINT, 0..5);
}

const STORM: u32 = 20_000;
const BAD_EOMS: u32 = 500;
const MESSAGES: u64 = 300;

/// An EOM storm: the guest writes EOM 20 000 times with interrupts open while a host thread
/// posts 300 messages to SINT 1 (retrying while the queue is full), then 500 EOMs with a
/// non-zero value (TLFS: #GP each; KVM ignores the value). Every message arrives once, in
/// order; the model counted every accepted EOM.
fn eom_storm_while_the_host_posts(setup: Setup) {
    const S: u8 = 1;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(S), S, Eoi::Apic).unwrap();
    g.synic_up(&[(S, SintValue::vector(vector(S)))]).unwrap();
    g.step(1).unwrap();
    g.emit(|a| {
        let mut top = a.create_label();
        let mut bad = a.create_label();
        a.sti()?;
        a.mov(ebx, STORM)?;
        a.set_label(&mut top)?;
        a.mov(ecx, index::EOM)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.dec(ebx)?;
        a.jnz(top)?;
        a.mov(ebx, BAD_EOMS)?;
        a.set_label(&mut bad)?;
        a.mov(ecx, index::EOM)?;
        a.mov(eax, 1u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.dec(ebx)?;
        a.jnz(bad)
    })
    .unwrap();
    g.wait_messages(MESSAGES).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();

    type Poster = Arc<Mutex<Option<JoinHandle<()>>>>;
    let poster: Poster = Arc::new(Mutex::new(None));
    let p = poster.clone();
    let mut spec = VmSpec::new(setup, 1);
    spec.limit = Duration::from_secs(60);
    let f = run(spec, &g.build().unwrap(), move |host, _, _| {
        let synic = host.synic().clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(50);
            for seq in 0..MESSAGES {
                loop {
                    let m = host_message(S, seq, 240);
                    match synic.partition().post_message(VpIndex(0), u32::from(S), m) {
                        Ok(_) => break,
                        Err(e) if matches!(e.error, Error::QueueFull { .. }) => {
                            assert!(Instant::now() < deadline, "queue full for 50 s");
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(e) => panic!("post {seq}: {e}"),
                    }
                }
            }
        });
        *p.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    });
    let handle = poster.lock().unwrap_or_else(PoisonError::into_inner).take();
    handle
        .expect("the poster started")
        .join()
        .expect("the poster finished without panicking");
    f.assert_exited_ok();
    let v = f.view();
    assert_sequence(&v.messages(0), S, 0..MESSAGES);
    let bad_gps = if tlfs(setup) { BAD_EOMS as usize } else { 0 };
    assert_eq!(f.gps(0), vec![index::EOM; bad_gps]);
    let c = f.host.partition().counters(VpIndex(0)).unwrap();
    let storm = u64::from(STORM) + if tlfs(setup) { 0 } else { u64::from(BAD_EOMS) };
    assert!(c.eoms >= storm, "{} EOMs counted, {storm} written", c.eoms);
    assert_eq!(c.sints[usize::from(S)].queued, 0);
    assert_eq!(v.counter(0, state::MESSAGES), MESSAGES);
}

userspace_setups! {
    pending_and_type_games => message_pending_and_type_games;
    eom_storm => eom_storm_while_the_host_posts;
}
