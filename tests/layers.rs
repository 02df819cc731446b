//! The layering rules of docs/ARCHITECTURE.md, checked on the source so that breaking one
//! fails the build's tests rather than a reviewer's memory:
//!
//! - the pure core (`src/ocsp/`, `src/crl/`, `src/status/`) does no IO: it imports no signer,
//!   runtime, Redis, PKCS#11, file system, network, thread or clock, and no module above it;
//! - only `src/clock.rs` reads the wall clock;
//! - nothing changes the process environment at run time (`set_var` is a data race with
//!   threads reading it, and `unsafe` in edition 2024);
//! - outside the binary (`src/cli/`, where errors become the exit message) no function returns
//!   `Result<_, String>`: errors are typed.
//!
//! Comments are not checked. The core's rule covers its tests too; the others leave out
//! everything from a file's `#[cfg(test)]` on, and files of tests only (`tests.rs`,
//! `testkit.rs`).
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    all_rust_files(dir)
        .into_iter()
        .filter(|p| !p.ends_with("tests.rs") && !p.ends_with("testkit.rs"))
        .collect()
}

fn all_rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of `text` without comments: (1-based line number, code). With `tests` false,
/// everything from the first `#[cfg(test)]` on is left out too.
fn code_of(text: &str, tests: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if !tests && line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        if !code.trim().is_empty() {
            out.push((i + 1, code.to_string()));
        }
    }
    out
}

/// The code lines of the file at `path` (see [`code_of`]).
fn code_lines(path: &Path, tests: bool) -> Vec<(usize, String)> {
    code_of(&std::fs::read_to_string(path).expect("read source"), tests)
}

#[test]
fn the_reader_skips_comments_and_tests() {
    let sample = "use a; // names tokio\n/// docs: tokio\nuse tokio;\n#[cfg(test)]\nuse redis;\n";
    let all: Vec<String> = code_of(sample, true).into_iter().map(|(_, c)| c).collect();
    assert_eq!(all, ["use a; ", "use tokio;", "#[cfg(test)]", "use redis;"]);
    assert_eq!(code_of(sample, false).len(), 2);
}

fn rel(p: &Path) -> String {
    p.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Every code line of `files` (their tests too with `tests`) that contains one of `needles`,
/// as "file:line: needle: text".
fn offending(files: &[PathBuf], needles: &[&str], tests: bool) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        for (n, line) in code_lines(f, tests) {
            if let Some(needle) = needles.iter().find(|x| line.contains(*x)) {
                out.push(format!("{}:{n}: {needle}: {}", rel(f), line.trim()));
            }
        }
    }
    out
}

#[test]
fn the_core_does_no_io_and_imports_nothing_above_it() {
    let mut files = Vec::new();
    for d in ["ocsp", "crl", "status"] {
        files.extend(all_rust_files(&src().join(d)));
    }
    assert!(
        files.len() >= 10,
        "the core's files were not found: {files:?}"
    );
    let forbidden = [
        // other layers
        "crate::signer",
        "crate::responder",
        "crate::feed",
        "crate::http",
        "crate::config",
        "crate::crl_service",
        "crate::app",
        "crate::cache",
        "crate::background",
        "crate::backup",
        "crate::archive",
        "crate::writer",
        "crate::apply",
        "crate::demo",
        "crate::drill",
        "crate::journal",
        "crate::clock",
        "vigil::signer",
        // runtimes, services, devices
        "tokio",
        "redis",
        "cryptoki",
        "hyper",
    ];
    // Files, sockets, processes, threads and time: the core's own tests may start threads
    // and time out (the view's concurrency test), its code may not.
    let io = [
        "std::fs",
        "std::net",
        "std::thread::spawn",
        "thread::Builder",
        "std::process",
        "std::env",
        "SystemTime",
        "Instant",
    ];
    // Tests included for the layers: a `#[cfg(test)]` import is an import (tests that sign
    // use the crate's testkit, outside the core).
    let mut found = offending(&files, &forbidden, true);
    found.extend(offending(&files, &io, false));
    assert!(
        found.is_empty(),
        "the pure core reaches outside itself:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_clock_reads_the_wall_clock() {
    let files: Vec<_> = rust_files(&src())
        .into_iter()
        .filter(|p| !p.ends_with("clock.rs"))
        .collect();
    let found = offending(
        &files,
        &[
            "SystemTime::now",
            "clock::unix_now",
            "UNIX_EPOCH.elapsed",
            "now_utc",
            "now_local",
            "Utc::now",
        ],
        false,
    );
    assert!(
        found.is_empty(),
        "the wall clock is read outside src/clock.rs (take a `Clock`):\n{}",
        found.join("\n")
    );
}

#[test]
fn nothing_changes_the_process_environment() {
    let found = offending(
        &rust_files(&src()),
        &["env::set_var", "env::remove_var"],
        true,
    );
    assert!(found.is_empty(), "set at run time:\n{}", found.join("\n"));
}

/// The error type of every `Result<T, E>` written on `line`, as text (`E` at the outermost
/// nesting of each `Result<`).
fn result_error_types(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("Result<") {
        let after = &rest[at + "Result<".len()..];
        let (mut depth, mut last_comma, mut end) = (0i32, None, None);
        for (i, c) in after.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                '>' | ')' | ']' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                '>' | ')' | ']' => depth -= 1,
                ',' if depth == 0 => last_comma = Some(i),
                _ => {}
            }
        }
        if let (Some(c), Some(e)) = (last_comma, end) {
            out.push(after[c + 1..e].trim().to_string());
        }
        rest = after;
    }
    out
}

#[test]
fn the_error_type_reader_sees_the_outer_error() {
    assert_eq!(
        result_error_types("fn f() -> Result<BTreeMap<String, String>, Error> {"),
        ["Error"]
    );
    assert_eq!(result_error_types("-> Result<Vec<u8>, String>"), ["String"]);
    assert_eq!(
        result_error_types("x: Vec<(String, Result<StoreOutcome, String>)>,"),
        ["String"]
    );
}

#[test]
fn errors_are_typed_outside_the_binary() {
    let files: Vec<_> = rust_files(&src())
        .into_iter()
        .filter(|p| !rel(p).starts_with("src/cli/"))
        .collect();
    let mut found = Vec::new();
    for f in &files {
        for (n, line) in code_lines(f, false) {
            if result_error_types(&line).iter().any(|e| e == "String") {
                found.push(format!("{}:{n}: {}", rel(f), line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} function(s) return a String error:\n{}",
        found.len(),
        found.join("\n")
    );
}
