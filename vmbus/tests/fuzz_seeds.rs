//! Seeds of the `vmbus` fuzz target (`fuzz/seeds/vmbus/`), built from operations: each must
//! decode back to them and pass the target's checker. With `SYNIC_WRITE_SEEDS=1` the test
//! (re)writes the files; otherwise it fails when a committed seed differs (the scheme of
//! `routing/tests/fuzz_seeds.rs`). Random inputs must pass the checker too.

use std::path::PathBuf;

use proptest::prelude::*;
use synic_vmbus::sim::fuzz::{seeds, Case};

#[test]
fn seeds_decode_pass_and_are_committed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/vmbus");
    let write = std::env::var_os("SYNIC_WRITE_SEEDS").is_some_and(|v| v == "1");
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, case) in seeds() {
        let bytes = case.encode();
        assert_eq!(Case::decode(&bytes), case, "{name} decodes back");
        case.run().unwrap_or_else(|e| panic!("seed {name}: {e}"));
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run with SYNIC_WRITE_SEEDS=1", path.display())
            });
            assert!(
                committed == bytes,
                "{} is stale; run with SYNIC_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the bytes, the checker finds nothing wrong.
    #[test]
    fn any_input_passes_the_checker(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let case = Case::decode(&data);
        if let Err(e) = case.run() {
            prop_assert!(false, "{}", e);
        }
    }

    /// Decoding then encoding gives bytes that decode to the same operations.
    #[test]
    fn encoding_round_trips(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let case = Case::decode(&data);
        prop_assert_eq!(Case::decode(&case.encode()), case);
    }
}
