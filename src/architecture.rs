//! Checks on the shape of the crate itself, read from its source: the stages point one way, only
//! `main` uses `cli`, only `cli` uses `clap`, and no source file grows past the size a reader
//! can hold in their head. These are tests because a rule nobody checks erodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom of the pipeline to the top. A module may use only modules
/// that come before it here.
const LAYERS: &[&str] = &[
    "error", "progress", "parallel", "xz", "compress", "sshkey", "disk", "acquire", "fs", "facts",
    "overlay", "recipe", "plan", "apply", "scrub", "output", "bake", "cluster", "fuzzing", "cli",
];

/// Longest source file, in lines, before it should be split.
const MAX_LINES: usize = 800;

/// Known breaches of the rules below, each to be removed by issue 12 (one clear shape). The
/// checks fail on a breach not listed here, and on a listed one that is gone, so the list can
/// only shrink.
const KNOWN_DEBT: &[&str] = &[];

/// Fail on breaches that are not known debt, and on known debt of this check that is paid.
fn judge(check: &str, found: Vec<String>, is_mine: impl Fn(&str) -> bool) {
    let new: Vec<&String> = found
        .iter()
        .filter(|f| !KNOWN_DEBT.contains(&f.as_str()))
        .collect();
    let paid: Vec<&&str> = KNOWN_DEBT
        .iter()
        .filter(|d| is_mine(d) && !found.iter().any(|f| f == *d))
        .collect();
    assert!(
        new.is_empty() && paid.is_empty(),
        "{check}:\nnew breaches: {new:#?}\nno longer true, remove from KNOWN_DEBT: {paid:#?}"
    );
}

/// `src/...` relative path of a source file, for stable messages.
fn shown(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src/");
    format!("src/{}", rel.display())
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/disk/cow.rs` → `disk`), or its own name for
/// `lib.rs` and `main.rs`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src/");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Source text without `//` comments (doc links are not dependencies).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Keep `//` inside string literals such as URLs: only cut when no quote precedes it.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules `text` refers to through `crate::` paths, including `use crate::{a, b}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // Skip identifiers that merely end in `crate` (`pibake_crate::`): the char before must
        // not be part of an identifier.
        let before_ok = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if before_ok {
            if let Some(group) = after.strip_prefix('{') {
                for item in top_level_items(group) {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        refs.insert(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        }
        rest = after;
    }
    refs
}

/// The comma-separated items of a `use` group up to its closing brace, nested groups kept whole:
/// `a::{b, c}, d}` gives `a::{b, c}` and `d`.
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// Module → the other top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        let text = code(&std::fs::read_to_string(&f).expect("source is readable"));
        let deps = g.entry(m.clone()).or_default();
        for r in crate_refs(&text) {
            if r != m {
                deps.insert(r);
            }
        }
    }
    g
}

/// Every error type with a kind is one the CLI recognises in an error chain, so none can
/// silently become exit code 1.
#[test]
fn every_classified_error_is_known_to_the_cli() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let cli = code(&std::fs::read_to_string(src().join("cli/mod.rs")).expect("cli/mod.rs"));
    let list = cli
        .split("by_kind!(")
        .nth(1)
        .and_then(|rest| rest.split(");").next())
        .expect("the by_kind! list in cli/mod.rs");
    let listed: BTreeSet<&str> = list
        .split(',')
        .filter_map(|t| t.trim().rsplit("::").next())
        .filter(|t| !t.is_empty())
        .collect();
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable source");
        for part in text.split("Classify for ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let in_test_module = text
                .find(&format!("Classify for {name}"))
                .is_some_and(|at| text[..at].contains("#[cfg(test)]"));
            if !name.is_empty() && !in_test_module && !listed.contains(name.as_str()) {
                missing.push(format!("{} ({name})", shown(f)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in cli::classify's list: {missing:#?}"
    );
}

/// Every error type the library defines says what kind it is: one that did not would leave the
/// CLI guessing, and a new type would silently become exit code 1.
#[test]
fn every_library_error_is_classified() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read_to_string(f).expect("readable source"),
            )
        })
        .collect();
    let classified = |name: &str| {
        texts.iter().any(|(_, t)| {
            t.contains(&format!("Classify for {name} "))
                || t.contains(&format!("Classify for {name}<"))
        })
    };
    let mut unclassified = Vec::new();
    for (f, text) in &texts {
        let body = text.split("#[cfg(test)]").next().unwrap_or("");
        for part in body.split("thiserror::Error").skip(1) {
            // The item the derive is on: whichever of `enum` and `struct` comes first.
            let Some(at) = ["enum ", "struct "]
                .iter()
                .filter_map(|k| part.find(k))
                .min()
            else {
                continue;
            };
            let name: String = part[at..]
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !classified(&name) {
                unclassified.push(format!("{} ({name})", shown(f)));
            }
        }
    }
    assert!(
        unclassified.is_empty(),
        "error types without a Classify impl: {unclassified:#?}"
    );
}

#[test]
fn stages_point_one_way() {
    let g = graph();
    let mut wrong = Vec::new();
    for (m, deps) in &g {
        if m == "lib" || m == "main" || m == "architecture" {
            continue;
        }
        let Some(level) = LAYERS.iter().position(|l| l == m) else {
            wrong.push(format!(
                "{m} is not in LAYERS: place it in src/architecture.rs"
            ));
            continue;
        };
        for d in deps {
            match LAYERS.iter().position(|l| l == d) {
                Some(dl) if dl < level => {}
                Some(_) => wrong.push(format!("{m} uses {d}, which is above it")),
                None => wrong.push(format!("{m} uses {d}, which is not in LAYERS")),
            }
        }
    }
    judge("stages point one way", wrong, |d| d.contains("which is"));
}

#[test]
fn only_main_uses_cli_and_only_cli_uses_clap() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let m = module_of(&f);
        if m == "cli" || m == "main" || m == "architecture" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).expect("source is readable"));
        if crate_refs(&text).contains("cli") {
            wrong.push(format!("{} uses cli", shown(&f)));
        }
        if text.contains("clap::") || text.contains("use clap") {
            wrong.push(format!("{} uses clap", shown(&f)));
        }
    }
    judge("cli and clap", wrong, |d| {
        d.ends_with(" uses cli") || d.ends_with(" uses clap")
    });
}

#[test]
fn no_source_file_is_too_long() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} is over the line limit", shown(f)))
        })
        .collect();
    judge("file length", long, |d| d.ends_with("line limit"));
}

#[test]
fn the_reference_reader_sees_what_it_should() {
    let text = "use crate::{disk::{Image, Region}, fs};\nlet x = crate::xz::XzIndex::read(f); // crate::cli\n";
    let refs = crate_refs(&code(text));
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["disk", "fs", "xz"],
        "comments are not dependencies"
    );
    assert_eq!(module_of(&src().join("disk/cow.rs")), "disk");
    assert_eq!(module_of(&src().join("facts.rs")), "facts");
}
