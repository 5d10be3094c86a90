//! A second vCPU rewrites the hypercall input while the first vCPU's HvPostMessage calls are
//! being handled: the host copies the input once and validates the copy, so every call is
//! answered with a TLFS status for one consistent input and no invalid message ever reaches
//! the receiver.

#[path = "hostile/common.rs"]
mod common;

use std::time::Duration;

use iced_x86::code_asm::*;
use synic_e2e::layout::{self, state, vector, MESSAGE_TYPE, SYNC_PAGE};
use synic_e2e::{run, Eoi, Setup, SintValue, SynicGuest, VmSpec};
use synic_vmm::guest::layout::HYPERCALL_PAGE;

use common::AREA0;

const CONN: u32 = 0x31;
const RECEIVER: u32 = 2;
const SINT: u8 = 2;
const CALLS: u64 = 4000;
const PAYLOAD_TAG: u64 = 0x5A5A_0000;
/// vCPU 0's hypercall input page, which vCPU 1 keeps rewriting.
const INPUT: u64 = AREA0 + layout::HC_INPUT;
/// vCPU 0's counters of results: SUCCESS, INVALID_HYPERCALL_INPUT, INVALID_PARAMETER,
/// INSUFFICIENT_BUFFERS, anything else.
const RESULTS: u64 = AREA0 + layout::STATE + state::SCRATCH;
const STATUSES: [u64; 4] = [0, 3, 5, 0x13];

/// vCPU 0 calls HvPostMessage 4000 times on one input page while vCPU 1 flips its fields
/// between valid and invalid values (reserved connection-id bits, PayloadSize 0xFFFF_FFFF,
/// MessageType 0) as fast as it can; vCPU 2 receives on SINT 2. Every call answers SUCCESS,
/// INVALID_HYPERCALL_INPUT, INVALID_PARAMETER or INSUFFICIENT_BUFFERS; both successes and
/// refusals occur (the race is real); every message that arrives is the valid one, byte for
/// byte; successes = messages received + still queued.
fn input_rewritten_during_hypercalls(setup: Setup) {
    let mut g = SynicGuest::new().unwrap();
    g.message_isr(vector(SINT), SINT, Eoi::Apic).unwrap();
    let mut others = g.label();
    let mut receiver = g.label();
    g.jump_unless_cpu(0, others).unwrap();

    // vCPU 0: a valid input, then the calls, counting results.
    g.enable_hypercalls().unwrap();
    g.emit(|a| {
        a.mov(rdi, INPUT)?;
        a.mov(dword_ptr(rdi), CONN)?;
        a.mov(dword_ptr(rdi + 4), 0u32)?;
        a.mov(dword_ptr(rdi + 8), MESSAGE_TYPE)?;
        a.mov(dword_ptr(rdi + 12), 240u32)?;
        a.mov(rax, PAYLOAD_TAG)?;
        for i in 0..30 {
            a.mov(qword_ptr(rdi + 16 + i * 8), rax)?;
            a.inc(rax)?;
        }
        a.mfence()
    })
    .unwrap();
    g.step(1).unwrap(); // the host registers the connection
    g.set_sync(0).unwrap();
    g.wait_sync_count(1, 2).unwrap(); // rewriter running, receiver ready
    g.emit(|a| {
        let mut top = a.create_label();
        let mut counted = a.create_label();
        a.mov(rbx, CALLS)?;
        a.set_label(&mut top)?;
        a.mov(rcx, 0x5Cu64)?;
        a.mov(rdx, INPUT)?;
        a.xor(r8, r8)?;
        a.mov(rax, HYPERCALL_PAGE)?;
        a.call(rax)?;
        a.mov(rdi, RESULTS + 4 * 8)?;
        for (n, status) in STATUSES.iter().enumerate() {
            let mut next = a.create_label();
            a.cmp(rax, *status as i32)?;
            a.jne(next)?;
            a.mov(rdi, RESULTS + n as u64 * 8)?;
            a.jmp(counted)?;
            a.set_label(&mut next)?;
            a.nop()?;
        }
        a.set_label(&mut counted)?;
        a.inc(qword_ptr(rdi))?;
        a.dec(rbx)?;
        a.jnz(top)
    })
    .unwrap();
    g.set_sync(2).unwrap();
    g.wait_sync(3).unwrap();
    g.exit_ok().unwrap();

    // vCPU 1: flip fields of vCPU 0's input until the calls are done.
    g.bind(&mut others).unwrap();
    g.jump_unless_cpu(1, receiver).unwrap();
    g.wait_sync(0).unwrap();
    g.set_sync(1).unwrap();
    g.emit(|a| {
        let mut top = a.create_label();
        a.mov(rdi, INPUT)?;
        a.mov(rsi, SYNC_PAGE + 2 * 8)?;
        a.set_label(&mut top)?;
        a.mov(dword_ptr(rdi + 12), 0xFFFF_FFFFu32)?;
        a.mov(dword_ptr(rdi), CONN | 1 << 24)?;
        a.mov(dword_ptr(rdi + 12), 240u32)?;
        a.mov(dword_ptr(rdi + 8), 0u32)?;
        a.mov(dword_ptr(rdi), CONN)?;
        a.mov(dword_ptr(rdi + 8), MESSAGE_TYPE)?;
        a.pause()?;
        a.cmp(qword_ptr(rsi), 0)?;
        a.je(top)
    })
    .unwrap();
    g.halt().unwrap();

    // vCPU 2: receive until the calls are done, then let the last ones arrive.
    g.bind(&mut receiver).unwrap();
    g.synic_up(&[(SINT, SintValue::vector(vector(SINT)))])
        .unwrap();
    g.set_sync(1).unwrap();
    g.emit(|a| a.sti()).unwrap();
    g.wait_sync(2).unwrap();
    for _ in 0..4 {
        g.settle().unwrap();
    }
    g.set_sync(3).unwrap();
    g.halt().unwrap();

    let mut spec = VmSpec::new(setup, 3);
    spec.limit = Duration::from_secs(60);
    let f = run(spec, &g.build().unwrap(), |host, _, _| {
        host.add_message_port(CONN, RECEIVER, SINT);
    });
    f.assert_exited_ok();

    let v = f.view();
    let results: Vec<u64> = (0..5).map(|n| v.scratch(0, n)).collect();
    eprintln!("results (SUCCESS, INPUT, PARAMETER, BUFFERS, other): {results:?}");
    assert_eq!(results[4], 0, "a status other than the four expected");
    assert_eq!(results.iter().sum::<u64>(), CALLS);
    assert!(results[0] > 0, "no call succeeded");
    assert!(
        results[1] + results[2] > 0,
        "no call saw an invalid input: the rewrite never raced"
    );
    let log = v.messages(RECEIVER);
    for (n, m) in log.iter().enumerate() {
        assert_eq!(
            (m.sint, m.message_type, m.payload_size, m.sender),
            (SINT, MESSAGE_TYPE, 240, u64::from(CONN)),
            "message {n}: {m:?}"
        );
        for q in 0..30 {
            assert_eq!(m.qword(q), PAYLOAD_TAG + q as u64, "message {n}, qword {q}");
        }
    }
    let c = f
        .host
        .partition()
        .counters(synic::VpIndex(RECEIVER))
        .unwrap();
    let sc = c.sints[usize::from(SINT)];
    assert_eq!(
        sc.posted, results[0],
        "every SUCCESS is one accepted message"
    );
    let in_slot = u64::from(v.slot(RECEIVER, layout::SIMP, SINT).message_type != 0);
    assert_eq!(log.len() as u64 + sc.queued + in_slot, results[0]);
}

userspace_setups! {
    input_rewritten => input_rewritten_during_hypercalls;
}
