//! Helpers shared by the integration tests: rule directories on disk, the
//! decision as owned data, and the `bouncer` binary.
#![allow(dead_code)] // each test crate uses a different subset

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bouncer::event::{DEFAULT_MAX_EVENT_BYTES, Event};
use bouncer::rules::{LoadError, RuleSet, load_dir};
use chrono::{DateTime, Utc};
use tempfile::TempDir;

/// The instant most tests decide at.
pub const NOW: &str = "2026-11-27T12:00:00Z";

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test instant is RFC 3339")
        .with_timezone(&Utc)
}

pub fn now() -> DateTime<Utc> {
    at(NOW)
}

/// One `[[rule]]` table with the required keys and `extra` lines.
pub fn rule(id: &str, code: u16, extra: &str) -> String {
    format!("[[rule]]\nid = \"{id}\"\ncode = {code}\ndescription = \"rule {id}\"\n{extra}\n")
}

/// A temporary rule directory holding `files` (relative path, contents).
pub fn rules_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    write_files(dir.path(), files);
    dir
}

pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&path, text).expect("write rule file");
    }
}

/// Loads rule tables (TOML) through the real loader and indexes them.
pub fn ruleset(tables: &[String]) -> RuleSet {
    let dir = rules_dir(&[("rules.toml", &tables.concat())]);
    match load_dir(dir.path()) {
        Ok(rules) => RuleSet::new(rules),
        Err(e) => panic!("test rules are invalid:\n{e}"),
    }
}

/// The diagnostics of an invalid rule directory as `FILE:LINE:COL: message`
/// with FILE relative to the directory; panics if the directory is valid.
pub fn load_errors(files: &[(&str, &str)]) -> Vec<String> {
    let dir = rules_dir(files);
    match load_dir(dir.path()) {
        Ok(rules) => panic!(
            "expected the rule set to be invalid, but it loaded {} rules",
            rules.len()
        ),
        Err(LoadError::Invalid(diags)) => diags
            .iter()
            .map(|d| {
                let file = d.file.strip_prefix(dir.path()).unwrap_or(&d.file);
                format!("{}:{}:{}: {}", file.display(), d.line, d.col, d.message)
            })
            .collect(),
        Err(e) => panic!("expected validation errors, got {e}"),
    }
}

/// Asserts that the directory fails with exactly one error, at `location`
/// (`FILE:LINE:COL`), whose message contains every one of `phrases`.
pub fn assert_one_error(files: &[(&str, &str)], location: &str, phrases: &[&str]) {
    let errors = load_errors(files);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let error = &errors[0];
    assert!(
        error.starts_with(&format!("{location}: ")),
        "expected the error at {location}, got {error:?}"
    );
    for phrase in phrases {
        assert!(
            error.contains(phrase),
            "expected {phrase:?} in the error {error:?}"
        );
    }
}

/// The decision on one event, as owned data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub outcome: &'static str,
    pub rule: Option<String>,
    pub shadow: Vec<String>,
    /// Every matching active rule, in precedence order.
    pub matched: Vec<String>,
}

pub fn decide_at(set: &RuleSet, event: &str, now: DateTime<Utc>) -> Decided {
    let event = Event::parse(event.as_bytes(), DEFAULT_MAX_EVENT_BYTES)
        .unwrap_or_else(|e| panic!("test event {event} is invalid: {e}"));
    let d = set.decide(&event, now);
    Decided {
        outcome: d.outcome.as_str(),
        rule: d.rule.map(|r| r.id.clone()),
        shadow: d.shadow_ids().into_iter().map(str::to_owned).collect(),
        matched: d.matched.iter().map(|r| r.id.clone()).collect(),
    }
}

pub fn decide(set: &RuleSet, event: &str) -> Decided {
    decide_at(set, event, now())
}

/// The winning rule's id at [`NOW`].
pub fn winner(set: &RuleSet, event: &str) -> Option<String> {
    decide(set, event).rule
}

/// Whether any active rule (enforce or shadow) matches at [`NOW`].
pub fn matches(set: &RuleSet, event: &str) -> bool {
    !decide(set, event).matched.is_empty()
}

/// The `bouncer` binary built for these tests.
pub fn bouncer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bouncer"))
}

/// Runs `bouncer` with `args`, feeding `stdin` from another thread so a
/// large input cannot dead-lock against the output.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_in(None, args, stdin)
}

pub fn run_in(dir: Option<&Path>, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = bouncer();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("bouncer starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The process may exit before reading everything (e.g. invalid
        // rules); a broken pipe then is expected.
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("bouncer runs");
    writer.join().expect("stdin writer");
    output
}

pub fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .expect("stdout is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stderr.clone())
        .expect("stderr is UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}
