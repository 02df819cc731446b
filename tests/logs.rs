//! Log output of a real `vigil serve`: `log.format = "json"` (and `VIGIL_LOG_FORMAT`) gives one
//! JSON object per line; text lines carry ANSI colour only on a terminal and never with
//! `NO_COLOR`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::BIN;

/// A `vigil serve` (embedded default config unless `config` is given) with stderr to a pipe;
/// returns the child and the stderr lines as they come.
fn serve_piped(
    dir: &Path,
    config: Option<&Path>,
    env: &[(&str, &str)],
) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .arg("serve")
        .env("VIGIL_LISTEN", "127.0.0.1:0")
        .env("VIGIL_LOG", "info")
        .env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vigil");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Lines until one contains `want` (or 20 s pass), then whatever follows within 300 ms.
fn lines_until(rx: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains(want);
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(_) => panic!("no stderr line with {want:?} in 20 s; got {lines:#?}"),
        }
    }
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        lines.push(l);
    }
    lines
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The message of the info line `vigil serve` logs once its status view is loaded (with the
/// fields `events`, `certificates`, `journal`).
const STARTED: &str = "status view loaded";

fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty());
    let mut saw_field = false;
    for line in lines {
        assert!(
            !line.contains('\x1b'),
            "ANSI escape in a JSON line: {line:?}"
        );
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let ts = o["timestamp"].as_str().expect("timestamp");
        // RFC 3339, UTC: 2026-12-03T19:36:27.123456Z
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T'),
            "timestamp {ts:?}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&o["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            o["target"].as_str().expect("target").starts_with("vigil"),
            "{line}"
        );
        let fields = o["fields"].as_object().expect("fields");
        assert!(
            fields["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {line}"
        );
        saw_field |= fields.len() > 1;
    }
    assert!(
        saw_field,
        "no line carried a field besides the message: {lines:#?}"
    );
}

#[test]
fn json_lines_from_the_config_file() {
    let (_tmp, data) = common::demo_dir();
    let config = data.join("json-logs.toml");
    std::fs::write(
        &config,
        "data_dir = \".\"\n[log]\nformat = \"json\"\n[[issuer]]\nname = \"demo\"\n\
         certificate = \"ca.pem\"\nresponder_certificate = \"responder.pem\"\n\
         responder_key = \"responder.key\"\n",
    )
    .unwrap();
    let (child, rx) = serve_piped(&data, Some(&config), &[]);
    let lines = lines_until(&rx, STARTED);
    stop(child);
    assert_json_lines(&lines);
}

#[test]
fn json_lines_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx) = serve_piped(dir.path(), None, &[("VIGIL_LOG_FORMAT", "json")]);
    let lines = lines_until(&rx, STARTED);
    stop(child);
    assert_json_lines(&lines);
}

#[test]
fn text_lines_under_a_pipe_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rx) = serve_piped(dir.path(), None, &[]);
    let lines = lines_until(&rx, STARTED);
    stop(child);
    assert!(lines.iter().any(|l| l.contains(" INFO ")), "{lines:#?}");
    for l in &lines {
        assert!(!l.contains('\x1b'), "ANSI escape under a pipe: {l:?}");
        assert!(serde_json::from_str::<serde_json::Value>(l).is_err(), "{l}");
    }
}

/// Runs `vigil serve` on a pseudo-terminal (util-linux `script`) until it listens; returns what
/// the terminal showed.
fn on_a_terminal(dir: &Path, no_color: Option<&str>) -> String {
    let mut cmd = Command::new("script");
    cmd.current_dir(dir)
        .args(["-q", "-e", "-c"])
        .arg(format!("exec {BIN} serve"))
        .arg("/dev/null")
        .env("VIGIL_LISTEN", "127.0.0.1:0")
        .env("VIGIL_LOG", "info")
        .env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let mut child = cmd.spawn().expect("spawn script (util-linux)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let lines = lines_until(&rx, STARTED);
    // `script` ends when vigil (its child, exec'd by the shell) does.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child_of(child.id()))
        .status();
    let _ = child.kill();
    let _ = child.wait();
    lines.join("\n")
}

/// The pid of the child `script` started, read from /proc.
fn child_of(script_pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{script_pid}/task/{script_pid}/children"))
                .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.to_owned();
        }
        assert!(Instant::now() < deadline, "script has no child");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("util-linux `script` is needed for the terminal case");
    }
    let dir = tempfile::tempdir().unwrap();
    let tty = on_a_terminal(dir.path(), None);
    assert!(tty.contains('\x1b'), "no colour on a terminal: {tty:?}");
    let tty = on_a_terminal(dir.path(), Some("1"));
    assert!(tty.contains(STARTED), "{tty:?}");
    assert!(!tty.contains('\x1b'), "colour despite NO_COLOR=1: {tty:?}");
    // An empty NO_COLOR does not count (https://no-color.org).
    let tty = on_a_terminal(dir.path(), Some(""));
    assert!(tty.contains('\x1b'), "{tty:?}");
}

#[test]
fn an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("check-config")
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_LOG_FORMAT", "logfmt")
        .output()
        .unwrap();
    let err = common::refused(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("log.format (from VIGIL_LOG_FORMAT)")
            && err.contains("\"logfmt\"")
            && err.contains("\"text\" or \"json\""),
        "{err}"
    );
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[log]\nformat = \"yaml\"\n").unwrap();
    let out = common::vigil_with(&config, &["check-config"]);
    let err = common::refused(&out);
    assert!(err.contains("format") && err.contains("yaml"), "{err}");
    assert!(err.contains("`text`") && err.contains("`json`"), "{err}");
}
