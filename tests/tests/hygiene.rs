//! Checks on the repository itself that `cargo test --workspace` runs: the library crates are
//! publishable (crates.io metadata, a runnable example at the top of `lib.rs`, no unsafe code
//! where none is needed) and every unsafe block is listed, with its invariant, in
//! `docs/unsafe.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The library crates (directory, package).
const LIBRARIES: [(&str, &str); 5] = [
    ("msr", "synic-msr"),
    ("synic", "synic"),
    ("routing", "synic-routing"),
    ("kvm", "synic-kvm"),
    ("vmbus", "synic-vmbus"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && name != ".git" && name != "corpus" && name != "artifacts" {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Unsafe blocks, impls and fns in `src` (comment lines skipped).
fn unsafe_count(src: &str) -> usize {
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| {
            let mut n = 0;
            let mut rest = l;
            while let Some(i) = rest.find("unsafe") {
                let after = rest[i + "unsafe".len()..].trim_start();
                let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
                if before_ok
                    && (after.starts_with('{')
                        || after.starts_with("impl")
                        || after.starts_with("fn ")
                        || after.is_empty())
                {
                    n += 1;
                }
                rest = &rest[i + "unsafe".len()..];
            }
            n
        })
        .sum()
}

#[test]
fn unsafe_code_is_listed_in_docs_unsafe_md() {
    let root = root();
    let mut files = Vec::new();
    for dir in [
        "msr", "synic", "routing", "kvm", "vmm", "tests", "fuzz", "vmbus",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = BTreeMap::new();
    for f in &files {
        let n = unsafe_count(&read(f));
        if n > 0 {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            found.insert(rel, n);
        }
    }
    let doc = read(&root.join("docs/unsafe.md"));
    let mut listed = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let file = cells[1].trim_matches('`').to_string();
        let n: usize = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("count in {line}"));
        listed.insert(file, n);
    }
    assert_eq!(
        found, listed,
        "unsafe blocks per file (left: the code, right: docs/unsafe.md)"
    );
}

#[test]
fn the_unsafe_counter_counts_blocks_impls_and_fns_not_lints() {
    // Built from pieces so that this file holds no unsafe block of its own.
    let kw = "unsafe";
    let src = format!(
        "#![forbid({kw}_code)]\n// SAFETY: {kw} {{ in a comment }}\nlet a = {kw} {{ x }};\n\
         {kw} impl Send for T {{}}\npub {kw} fn f() {{}}\nlet b = {kw} {{\nlet c = not{kw} {{}};\n"
    );
    assert_eq!(unsafe_count(&src), 4);
}

#[test]
fn library_crates_are_publishable() {
    let root = root();
    for (dir, package) in LIBRARIES {
        let manifest = read(&root.join(dir).join("Cargo.toml"));
        assert!(
            manifest.contains(&format!("name = \"{package}\"")),
            "{dir}/Cargo.toml is {package}"
        );
        for field in [
            "description",
            "license",
            "repository",
            "readme",
            "keywords",
            "categories",
        ] {
            assert!(
                manifest
                    .lines()
                    .any(|l| l.starts_with(&format!("{field} "))
                        || l.starts_with(&format!("{field}."))),
                "{package}: no `{field}` in its Cargo.toml"
            );
        }
        assert!(
            !manifest.contains("publish = false"),
            "{package} is publishable"
        );
        assert!(
            root.join(dir).join("README.md").exists(),
            "{package}: README.md"
        );

        let lib = read(&root.join(dir).join("src/lib.rs"));
        let header: String = lib
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let example = header
            .lines()
            .any(|l| l.trim() == "//! ```" || l.trim() == "//! ```rust");
        assert!(
            example,
            "{package}: lib.rs opens with a doctest that runs (not no_run/ignore)"
        );
        let mut sources = Vec::new();
        rust_files(&root.join(dir).join("src"), &mut sources);
        let unsafe_blocks: usize = sources.iter().map(|f| unsafe_count(&read(f))).sum();
        if unsafe_blocks == 0 {
            assert!(
                lib.contains("#![forbid(unsafe_code)]"),
                "{package} has no unsafe code: it should forbid it"
            );
        }
    }
}

#[test]
fn a_changelog_exists() {
    let log = read(&root().join("CHANGELOG.md"));
    assert!(log.starts_with("# Changelog"), "CHANGELOG.md heading");
}

/// Places where an error is turned into text on purpose, with why.
const STRINGLY_ALLOWED: [(&str, &str); 7] = [
    ("vmm/src/main.rs", "the binary's top level prints the error"),
    (
        "vmm/src/linux/cli.rs",
        "the CLI's top level prints the error",
    ),
    (
        "msr/src/oracle/",
        "the oracle checker reports a divergence as a test failure message",
    ),
    (
        "synic/src/fuzzing/",
        "fuzzing checkers report a divergence as a failure message",
    ),
    (
        "vmbus/src/sim/",
        "the simulated guest's fuzzing checker reports a failure message",
    ),
    (
        "vmbus/src/host/channels.rs",
        "an open's failure reason goes to the exchange log and the guest's OPENCHANNEL_RESULT",
    ),
    (
        "vmm/src/demo/device.rs",
        "the demo's report lists failures as lines of text",
    ),
];

/// `map_err(|e| ...)` closures in `src` that turn their error `e` into text (`e.to_string()`,
/// `{e}` or `{e:?}` in a format string), as `(line, closure body)`.
fn stringly_map_errs(src: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(at) = src[rest..].find("map_err(|") {
        let start = rest + at + "map_err(|".len();
        rest = start;
        let Some(bar) = src[start..].find('|') else {
            break;
        };
        let name = src[start..start + bar]
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        // The closure body: up to the parenthesis that closes `map_err(`.
        let mut depth = 1;
        let mut end = start + bar + 1;
        for (i, c) in src[end..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end += i;
                break;
            }
        }
        let body = &src[start + bar + 1..end];
        let text = body.contains(&format!("{name}.to_string()"))
            || body.contains(&format!("{{{name}}}"))
            || body.contains(&format!("{{{name}:"));
        if text {
            let line = src[..start].lines().count();
            found.push((line, body.trim().to_string()));
        }
    }
    found
}

#[test]
fn errors_keep_their_type() {
    let root = root();
    let mut files = Vec::new();
    for dir in ["msr", "synic", "routing", "kvm", "vmbus", "vmm"] {
        rust_files(&root.join(dir).join("src"), &mut files);
    }
    let mut stringly = Vec::new();
    let mut allowed_used = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        let found = stringly_map_errs(&read(f));
        if let Some((p, _)) = STRINGLY_ALLOWED.iter().find(|(p, _)| rel.starts_with(p)) {
            *allowed_used.entry(*p).or_insert(0) += found.len();
            continue;
        }
        for (line, body) in found {
            stringly.push(format!("{rel}:{line}: {body}"));
        }
    }
    for (p, why) in STRINGLY_ALLOWED {
        assert!(
            allowed_used.get(p).is_some_and(|&n| n > 0),
            "{p} is allowed to turn errors into text ({why}) but no longer does: drop it"
        );
    }
    assert!(
        stringly.is_empty(),
        "errors turned into text instead of kept as their type (issue 17.3): wrap the error \
         in a variant that holds it:\n{}",
        stringly.join("\n")
    );
}

#[test]
fn the_stringly_error_finder_finds_them() {
    let src = "a.map_err(|e| Error::Config(e.to_string()))?;\n\
               b.map_err(|err| Error::Load(format!(\"at {gpa:#x}: {err}\")))?;\n\
               c.map_err(|e: Foo| X(format!(\"{e:?}\")))?;\n\
               d.map_err(|source| Error::Kvm { op, source })?;\n\
               e.map_err(|_| Error::Config(\"fixed\".into()))?;\n";
    let found: Vec<usize> = stringly_map_errs(src).into_iter().map(|(l, _)| l).collect();
    assert_eq!(found, [1, 2, 3]);
}
