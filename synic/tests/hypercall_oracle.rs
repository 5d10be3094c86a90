//! The hypercall oracle (`synic::fuzzing::hypercall`, shared with the fuzz target `hypercall`):
//! random cases over every memory layout, and hand-written calls that reach every status.

use proptest::prelude::*;
use synic::fuzzing::hypercall::{Call, Case, Step, LAYOUTS};

fn post(input: u64, header: [u32; 4]) -> Step {
    Step::Call(Call {
        control: 0x5C,
        input,
        header,
        fill: 0xA5,
    })
}

fn signal(control: u64, input: u64, connection: u32, word1: u32) -> Step {
    Step::Call(Call {
        control,
        input,
        header: [connection, word1, 0, 0],
        fill: 0,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn library_agrees_with_the_reference_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..1500),
    ) {
        if let Err(divergence) = Case::decode(&bytes).run() {
            return Err(TestCaseError::fail(divergence));
        }
    }
}

#[test]
fn hand_written_calls_reach_every_status() {
    let steps = vec![
        post(0x2000, [1, 0, 7, 24]),          // delivered into the slot
        post(0x2000, [1, 0, 7, 240]),         // queued
        post(0x2000, [1, 0, 7, 0]),           // queued (queue now full)
        post(0x2000, [1, 0, 7, 0]),           // INSUFFICIENT_BUFFERS
        Step::GuestIsr,                       // slot freed, one moves up
        post(0x2000, [1, 0, 7, 0]),           // room again
        post(0x2000, [0x0100_0001, 0, 7, 0]), // connection id bits 31:24
        post(0x2000, [1, 1, 7, 0]),           // RsvdZ
        post(0x2000, [1, 0, 0, 0]),           // type 0
        post(0x2000, [1, 0, 0x8000_0010, 0]), // hypervisor type
        post(0x2000, [1, 0, 7, 241]),         // payload too large
        post(0x2004, [1, 0, 7, 0]),           // unaligned
        post(0x2F08, [1, 0, 7, 0]),           // crosses a page
        post(0xF_0000, [1, 0, 7, 0]),         // not RAM
        post(0x2000, [3, 0, 7, 0]),           // no such connection
        signal(0x5D, 0x3000, 2, 5),           // flag 5 of connection 2
        signal(0x1_005D, 0, 2, 15),           // fast form (input bytes 0..8)
        signal(0x5D, 0x3000, 2, 16),          // beyond the port's 16 flags
        signal(0x5D, 0x3000, 0xFF_FFFF, 8),   // base 2040 + 8: no flag 2048
        signal(0x5D, 0x3000, 2, 1 << 16),     // RsvdZ
        signal(0x5D | 1 << 27, 0x3000, 2, 0), // reserved control bit
        signal(0x5E, 0x3000, 2, 0),           // unknown call code
        signal(0x5D | 1 << 32, 0x3000, 2, 0), // rep count on a simple call
        signal(0x1_005C, 0x3000, 1, 0),       // fast HvPostMessage
    ];
    let statuses = Case { layout: 0, steps }.run().unwrap();
    assert_eq!(
        statuses,
        [0, 0, 0, 0x13, 0, 3, 3, 5, 5, 5, 4, 4, 4, 0x12, 0, 0, 5, 5, 3, 3, 2, 3, 3]
    );
}

#[test]
fn input_at_the_edges_of_every_layout() {
    for layout in 0..LAYOUTS.len() as u8 {
        let regions = LAYOUTS[usize::from(layout)];
        let steps = synic::fuzzing::hypercall::interesting_gpas(regions)
            .into_iter()
            .flat_map(|gpa| {
                [
                    post(gpa, [1, 0, 9, 16]),
                    signal(0x5D, gpa, 2, 3),
                    Step::GuestIsr,
                ]
            })
            .collect();
        let case = Case { layout, steps };
        case.run().unwrap();
        assert_eq!(Case::decode(&case.encode()), case);
    }
}
