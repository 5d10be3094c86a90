//! Save and restore in the middle of traffic, into a fresh VM.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use synic_msr::index::{SCONTROL, SIEFP, SIMP, SINT0};
use synic_vmm::boot::LongModeEntry;
use synic_vmm::guest::layout::stack_top;
use synic_vmm::StopReason;
use vm_memory::{Bytes, GuestAddress};

use crate::harness::{Host, Prepared, VmSpec};
use crate::layout::{state, vector, MEM_SIZE};
use crate::{Eoi, Mode, Setup, SintValue, SynicGuest};

const SINT: u8 = 2;
/// Messages in all, and how many the guest takes before the save.
const TOTAL: u64 = 300;
const BEFORE_SAVE: u64 = 120;
/// The guest's exit code at the save point.
const SAVE_POINT: u32 = 0x5A;

/// Posts messages `next..total` to SINT 2 of VP 0 as fast as the partition takes them
/// (retrying while the queue is full), from the moment `ready` is set until `stop` is set.
struct Poster {
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poster {
    fn start(host: Arc<Host>, next: Arc<AtomicU64>, ready: Arc<AtomicBool>) -> Self {
        Self::start_to(host, next, ready, TOTAL)
    }

    fn start_to(host: Arc<Host>, next: Arc<AtomicU64>, ready: Arc<AtomicBool>, total: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, n) = (ready.clone(), stop.clone(), next.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !r.load(Ordering::Acquire) && !s.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "the guest never got ready");
                std::thread::sleep(Duration::from_micros(100));
            }
            while !s.load(Ordering::Acquire) {
                let seq = n.load(Ordering::Relaxed);
                if seq == total {
                    break;
                }
                match host.post(0, SINT, seq) {
                    Ok(_) => n.store(seq + 1, Ordering::Relaxed),
                    Err(synic::Error::QueueFull { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("post {seq}: {e}"),
                }
            }
        });
        Self {
            next,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the poster posted all it was asked to; returns the next sequence number.
    fn stop_when_done(mut self) -> u64 {
        if let Some(t) = self.thread.take() {
            t.join().expect("poster thread");
        }
        self.next.load(Ordering::Relaxed)
    }

    /// Stops posting; returns the next sequence number.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("poster thread");
        }
        self.next.load(Ordering::Relaxed)
    }
}

/// A guest takes messages from SINT 2 while a host thread posts 300 as fast as the queue
/// (capacity 4) takes them. After 120 the guest turns interrupts off, waits until its slot is
/// busy with MessagePending set (messages queued behind it) and stops at a save point; the
/// host stops posting, saves the SynIC state and copies guest RAM into a fresh VM, restores
/// there and starts the vCPU at the program's resume entry (a fresh local APIC, so the guest
/// takes whatever sits in its slot once by hand, EOM included) while a new host thread posts
/// the rest. Every message arrives exactly once, in order; at the save point messages were
/// queued behind a busy slot.
///
/// Kernel mode: KVM's own SynIC registers are vCPU state; the library reads them when the
/// vCPUs stop (host-initiated KVM_GET_MSRS, with the kvmclock) and `SynicVm::restore` writes
/// them into the new vCPU before the model, so the resumed guest needs no reprogramming.
pub fn save_restore_mid_traffic(setup: Setup) {
    let sint_value = SintValue::vector(vector(SINT));
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.synic_up(&[(SINT, sint_value)]).unwrap();
    g.step(1).unwrap();
    g.wait_messages(BEFORE_SAVE).unwrap(); // returns with interrupts off
                                           // Stop only once the slot is busy with more queued behind it (the poster may lag).
    g.wait_pending(SINT).unwrap();
    g.exit(SAVE_POINT).unwrap();
    let mut resume = g.label();
    g.entry_point(&mut resume).unwrap();
    g.lapic_enable().unwrap();
    g.take_if_present(SINT).unwrap();
    g.step(2).unwrap();
    g.wait_messages(TOTAL).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let program = g.build().unwrap();
    let resume_at = program.address_of(&resume).unwrap();

    let spec = VmSpec {
        queue_capacity: 4,
        ..VmSpec::new(setup, 1)
    };
    let next = Arc::new(AtomicU64::new(0));
    let ready =
        |flag: Arc<AtomicBool>| move |_: &Host, _: u32, _: u32| flag.store(true, Ordering::Release);

    // The first VM, up to the save point.
    let ready_a = Arc::new(AtomicBool::new(false));
    let old = Prepared::new(spec, &program, ready(ready_a.clone())).start();
    let poster = Poster::start(old.host().clone(), next.clone(), ready_a);
    let first = old.wait();
    let posted_before = poster.stop();
    assert_eq!(
        first.outcome.reason,
        StopReason::DebugExit(SAVE_POINT),
        "{:#x?}",
        first.reports
    );
    let state = first.host.synic().save().expect("save");
    // Kernel mode: the SINT the guest programmed came along in KVM's registers.
    match (&state.kernel, setup.mode) {
        (None, Mode::Userspace) => {}
        (Some(k), Mode::Kernel) => {
            let sint = SINT0 + u32::from(SINT);
            let saved = k.vcpus[0].iter().find(|r| r.0 == sint).map(|r| r.1);
            assert_eq!(saved, Some(sint_value.raw()), "KVM's SINT{SINT}: {k:x?}");
            for msr in [SCONTROL, SIEFP, SIMP] {
                let saved = k.vcpus[0].iter().find(|r| r.0 == msr).map(|r| r.1);
                let model = state.vps[0]
                    .registers
                    .iter()
                    .find(|r| r.0 == msr)
                    .map(|r| r.1);
                assert_eq!(saved, model, "MSR {msr:#x}: KVM and the model agree");
            }
        }
        other => panic!("saved state does not match the mode: {other:?}"),
    }
    let queued = state.vps[0].queues[usize::from(SINT)].len();
    assert!(
        queued > 0,
        "the save must catch messages queued behind a busy slot ({posted_before} posted)"
    );
    let slot = first.view().slot(0, crate::layout::SIMP, SINT);
    assert!(
        slot.message_type != 0 && slot.pending(),
        "busy slot with MessagePending at the save: {slot:?}"
    );
    let mut ram = vec![0u8; MEM_SIZE as usize];
    first
        .host
        .memory()
        .read_slice(&mut ram, GuestAddress(0))
        .unwrap();

    // A fresh VM: RAM, vCPU state (kernel mode: KVM's SynIC MSRs), the SynIC, then resume.
    let ready_b = Arc::new(AtomicBool::new(false));
    let mut new = Prepared::new(spec, &program, ready(ready_b.clone()));
    new.host()
        .memory()
        .write_slice(&ram, GuestAddress(0))
        .unwrap();
    new.restore(&state).expect("restore");
    new.vm_mut()
        .boot_long_mode(|cpu| LongModeEntry {
            rip: resume_at,
            rsp: stack_top(cpu),
            rdi: u64::from(cpu),
        })
        .unwrap();
    let running = new.start();
    let poster = Poster::start(running.host().clone(), next, ready_b);
    let second = running.wait();
    let posted = poster.stop();
    second.assert_exited_ok();
    assert_eq!(posted, TOTAL);
    let v = second.view();
    super::messages::assert_sequence(&v.messages(0), SINT, 0..TOTAL);
    assert_eq!(
        v.counter(0, state::POLLED),
        1,
        "the slot taken by hand after the restore"
    );
    let c = second.host.partition().counters(synic::VpIndex(0)).unwrap();
    assert_eq!(c.sints[usize::from(SINT)].queued, 0);
}

/// Pause, save, resume — at an arbitrary moment of traffic, not at a point the guest chose.
/// A guest takes messages on SINT 2 (queue capacity 4, so messages wait behind a busy slot)
/// while a host thread posts 600 of them. When 200 are posted the host stops its poster (a
/// device thread is the VMM's to pause), pauses the VM — every vCPU parks, capturing its state
/// and, in kernel mode, KVM's SynIC registers — saves the SynIC, the vCPUs and RAM, resumes,
/// and posts the rest: the running guest takes all 600 exactly once, in order. Then the
/// snapshot goes into a fresh VM (RAM, vCPU state, SynIC state) and runs on from where the
/// pause caught it, with the rest posted again from the saved point: that guest, too, takes
/// all 600 exactly once, in order.
pub fn pause_save_resume_mid_traffic(setup: Setup) {
    const N: u64 = 600;
    const AT: u64 = 200;
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    g.synic_up(&[(SINT, SintValue::vector(vector(SINT)))])
        .unwrap();
    g.step(1).unwrap();
    g.wait_messages(N).unwrap();
    g.settle().unwrap();
    g.exit_ok().unwrap();
    let program = g.build().unwrap();
    let spec = VmSpec {
        queue_capacity: 4,
        ..VmSpec::new(setup, 1)
    };
    let ready =
        |flag: Arc<AtomicBool>| move |_: &Host, _: u32, _: u32| flag.store(true, Ordering::Release);

    let ready_a = Arc::new(AtomicBool::new(false));
    let running = Prepared::new(spec, &program, ready(ready_a.clone())).start();
    let next = Arc::new(AtomicU64::new(0));
    let poster = Poster::start_to(running.host().clone(), next.clone(), ready_a.clone(), AT);
    assert_eq!(poster.stop_when_done(), AT);
    running.pause().expect("pause");
    let state = running.host().synic().save().expect("save while paused");
    let vcpus = running.vcpu_snapshots().expect("vCPU state while paused");
    let mut ram = vec![0u8; MEM_SIZE as usize];
    running
        .host()
        .memory()
        .read_slice(&mut ram, GuestAddress(0))
        .unwrap();
    let queued = state.vps[0].queues[usize::from(SINT)].len();
    running.resume().expect("resume");
    let poster = Poster::start_to(running.host().clone(), next.clone(), ready_a, N);
    let first = running.wait();
    assert_eq!(poster.stop(), N);
    first.assert_exited_ok();
    super::messages::assert_sequence(&first.view().messages(0), SINT, 0..N);

    // The snapshot in a fresh VM: it runs on from the pause.
    let ready_b = Arc::new(AtomicBool::new(true));
    let mut new = Prepared::new(spec, &program, ready(ready_b.clone()));
    new.host()
        .memory()
        .write_slice(&ram, GuestAddress(0))
        .unwrap();
    new.restore_vcpus(&vcpus).expect("restore the vCPUs");
    new.restore(&state).expect("restore the SynIC");
    let running = new.start();
    let next = Arc::new(AtomicU64::new(AT));
    let poster = Poster::start_to(running.host().clone(), next, ready_b, N);
    let second = running.wait();
    assert_eq!(poster.stop(), N);
    second.assert_exited_ok();
    super::messages::assert_sequence(&second.view().messages(0), SINT, 0..N);
    eprintln!("paused with {queued} messages queued behind the slot");
}
