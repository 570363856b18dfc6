//! The fuzz corpus and every minimised crash, replayed on the stable toolchain: each file in
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same function the
//! libFuzzer harness calls (`pibake::fuzzing::<target>`), and none may panic. A finding fixed
//! once stays fixed without nightly or cargo-fuzz.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use pibake::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist (a target with no findings yet).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let mut failed = Vec::new();
    let mut count = 0;
    for (name, target) in TARGETS {
        for file in files(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&file).unwrap();
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "targets panicked on: {failed:#?}");
    count
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let n = replay("corpus");
    assert!(n > 0, "no corpus under {}", fuzz_dir().display());
}

#[test]
fn fuzz_regressions_replay_without_panics() {
    replay("regressions");
}

#[test]
fn fuzz_every_target_has_seeds_and_a_harness() {
    let dir = fuzz_dir();
    for (name, _) in TARGETS {
        assert!(
            !files(&dir.join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name}/ has no seed"
        );
        assert!(
            dir.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
    // A directory with no target behind it would be replayed by nothing.
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(dir.join(kind)).into_iter().flatten() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name}/ names no target in pibake::fuzzing::TARGETS"
            );
        }
    }
}
