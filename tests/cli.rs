//! The `bouncer check` and `bouncer eval` commands (SPEC §4), run as a user
//! runs them: the built binary, real files, standard input and output.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

fn repo_rules() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
}

/// The output lines of `bouncer eval` as JSON values; asserts exit 0.
fn eval(rules: &Path, extra: &[&str], input: &[u8]) -> Vec<Value> {
    let mut args = vec!["eval", "--rules", rules.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = run(&args, input);
    assert!(
        output.status.success(),
        "eval failed ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout_lines(&output)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

fn forwarded() -> Value {
    json!({"outcome": "forwarded", "rule": null, "code": null, "status": null,
           "description": null, "shadow": []})
}

/// The reason code of an `invalid` line, checking its shape on the way.
fn invalid_reason(line: &Value) -> String {
    let obj = line.as_object().expect("an object");
    assert_eq!(
        obj.len(),
        2,
        "an invalid line has outcome and error only: {line}"
    );
    assert_eq!(line["outcome"], "invalid", "{line}");
    let error = line["error"].as_str().expect("error is a string");
    let code = error.split(": ").next().unwrap();
    assert!(
        error == code || error.starts_with(&format!("{code}: ")),
        "{error}"
    );
    code.to_owned()
}

/// A rule directory for the eval tests.
fn eval_rules() -> tempfile::TempDir {
    let text = [
        "[[rule]]\nid = \"cancel-x\"\ncode = 550\nstatus = \"5.7.1\"\n\
         description = \"Campaign X cancelled\"\ntags = [\"campaign_X\"]\n",
        "[[rule]]\nid = \"defer-gmail\"\ncode = 451\n\
         description = \"Deferred: gmail throttles us\"\ndomain = \"gmail.com\"\n",
        "[[rule]]\nid = \"window\"\ncode = 554\nstatus = \"5.3.2\"\ndescription = \"Maintenance\"\n\
         pool = \"p-window\"\nnot_before = 2026-12-01T08:00:00Z\nexpires = \"2026-12-01T10:00:00+00:00\"\n",
        "[[rule]]\nid = \"watch-b\"\ncode = 550\ndescription = \"Watching\"\n\
         domain = \"*.example\"\nmode = \"shadow\"\n",
        "[[rule]]\nid = \"Watch-a\"\ncode = 450\ndescription = \"Watching too\"\n\
         domain = [\"x.example\", \"gmail.com\"]\nmode = \"shadow\"\n",
    ]
    .concat();
    rules_dir(&[("r.toml", &text)])
}

// ------------------------------------------------------------------- check

#[test]
fn the_example_rules_pass_check() {
    let output = run(&["check", repo_rules().to_str().unwrap()], b"");
    assert!(
        output.status.success(),
        "rules/ must stay valid:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_prints_file_line_col_message_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            (
                "rules/campaigns.toml",
                &rule("c", 550, "pool = \"p\"\n      domian = \"gmail.com\""),
            ),
            (
                "rules/sub/x.json",
                "{\"rule\": [\n  {\"id\": \"api-x\", \"code\": 550, \"description\": \"d\", \"pool\": \"p\"}\n]}",
            ),
            ("rules/ok.toml", &rule("fine", 451, "tags = \"t\"")),
        ],
    );
    let output = run_in(Some(dir.path()), &["check", "rules"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&output),
        [
            "rules/campaigns.toml:6:7: unknown key \"domian\" (did you mean \"domain\"?)",
            "rules/sub/x.json:2:10: id \"api-x\" uses the \"api-\" prefix, which is reserved for rules created through the API",
        ]
    );
}

#[test]
fn check_reports_every_kind_of_error_at_its_location() {
    // (file, text, expected `FILE:LINE:COL`)
    let cases: Vec<(&str, String, &str)> = vec![
        ("dup.toml", format!("{}{}", rule("d", 550, "pool = \"p\""), rule("d", 550, "pool = \"q\"")), "dup.toml:7:6"),
        ("cidr.toml", rule("c", 550, "mta = [\"192.0.2.0/24\", \"192.0.2.0/33\"]"), "cidr.toml:5:24"),
        ("host.toml", rule("h", 550, "mta = \"192.0.2.1/24\""), "host.toml:5:7"),
        ("empty.toml", rule("e", 550, "pool = \"p\"\ntags = []"), "empty.toml:6:8"),
        ("code.toml", rule("k", 600, "pool = \"p\""), "code.toml:3:8"),
        ("status.toml", "[[rule]]\nid = \"s\"\ncode = 451\nstatus = \"5.7.1\"\ndescription = \"d\"\npool = \"p\"\n".into(), "status.toml:4:10"),
        ("window.toml", rule("w", 550, "pool = \"p\"\nnot_before = 2026-12-02T00:00:00Z\nexpires = 2026-12-01T00:00:00Z"), "window.toml:7:1"),
        ("local.toml", rule("l", 550, "pool = \"p\"\nexpires = 2026-12-01T00:00:00"), "local.toml:6:11"),
        ("localstr.toml", rule("m", 550, "pool = \"p\"\nnot_before = \"2026-12-01T00:00:00\""), "localstr.toml:6:14"),
        ("nocond.toml", format!("\n{}", rule("n", 550, "")), "nocond.toml:2:1"),
        ("zero.toml", rule("z", 550, "mta = \"::/0\""), "zero.toml:5:7"),
        ("api.toml", rule("api-1", 550, "pool = \"p\""), "api.toml:2:6"),
        ("desc.toml", format!("[[rule]]\nid = \"t\"\ncode = 550\ndescription = \"{}\"\npool = \"p\"\n", "x".repeat(513)), "desc.toml:4:15"),
        ("ctrl.toml", "[[rule]]\nid = \"u\"\ncode = 550\ndescription = \"a\\tb\"\npool = \"p\"\n".into(), "ctrl.toml:4:15"),
        ("id.toml", rule("bad id", 550, "pool = \"p\""), "id.toml:2:6"),
        ("syntax.toml", "[[rule]]\nid = \"v\"\ncode = = 550\n".into(), "syntax.toml:3:"),
    ];
    for (file, text, location) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &[(&format!("rules/{file}"), &text)]);
        let output = run_in(Some(dir.path()), &["check", "rules"], b"");
        assert_eq!(output.status.code(), Some(1), "{file}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{file}: {lines:#?}");
        let want = format!("rules/{location}");
        assert!(
            lines[0].starts_with(&want),
            "{file}: expected {want}, got {lines:#?}"
        );
        // FILE:LINE:COL: message
        let rest = &lines[0][format!("rules/{file}:").len()..];
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().unwrap().parse().expect("a line number");
        let col: usize = parts.next().unwrap().parse().expect("a column number");
        let message = parts.next().unwrap();
        assert!(
            line >= 1 && col >= 1 && message.starts_with(' ') && message.len() > 1,
            "{lines:#?}"
        );
    }
}

#[test]
fn check_names_the_first_location_of_a_duplicate_id() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("rules/a.toml", &rule("same", 550, "pool = \"p\"")),
            (
                "rules/b/c.json",
                "{\"rule\": [{\"id\": \"same\", \"code\": 550, \"description\": \"d\", \"pool\": \"q\"}]}",
            ),
        ],
    );
    let output = run_in(Some(dir.path()), &["check", "rules"], b"");
    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("rules/b/c.json:1:18: duplicate id \"same\""),
        "{lines:#?}"
    );
    assert!(lines[0].contains("rules/a.toml:2:6"), "{lines:#?}");
}

#[test]
fn check_accepts_match_all_and_skips_dot_names_and_other_files() {
    let broken = "[[[ not rules";
    let dir = rules_dir(&[
        ("all.toml", &rule("all", 421, "match_all = true")),
        (
            "zero.toml",
            &rule("zero", 550, "mta = \"0.0.0.0/0\"\nmatch_all = true"),
        ),
        (
            "deep/er/x.json",
            r#"{"rule": [{"id": "x", "code": 550, "description": "d", "pool": "p"}]}"#,
        ),
        (".git/config.toml", broken),
        ("..data/x.toml", broken),
        (".#editor-lock.toml", broken),
        ("README.md", broken),
        ("x.toml.orig", broken),
    ]);
    let output = run(&["check", dir.path().to_str().unwrap()], b"");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("3 rules"), "{stdout}");
}

#[test]
fn check_fails_when_the_directory_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["check", dir.path().join("nope").to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(!output.stderr.is_empty());
}

#[test]
fn check_is_all_or_nothing() {
    let dir = rules_dir(&[
        ("a.toml", &rule("good", 550, "pool = \"p\"")),
        ("b.toml", &rule("bad", 550, "pool = \"p\"\ncode = 551")),
    ]);
    let output = run(&["check", dir.path().to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("b.toml:6:1: "), "{lines:#?}");
}

// ------------------------------------------------------------------ eval shape

#[test]
fn eval_writes_the_spec_example_line_for_the_example_rules() {
    let lines = eval(
        repo_rules(),
        &["--at", "2026-11-27T12:00:00Z"],
        br#"{"recipient": "someone@example.net", "tags": ["campaign_X", "customer_Y"]}"#,
    );
    assert_eq!(
        lines,
        [
            json!({"outcome": "failed", "rule": "cancel-campaign-x", "code": 550, "status": "5.7.1",
                "description": "Campaign X cancelled by the customer", "shadow": []})
        ]
    );
}

#[test]
fn eval_lines_have_exactly_the_spec_shape() {
    let dir = eval_rules();
    let input = concat!(
        r#"{"recipient": "a@nowhere.test"}"#,
        "\n",
        r#"{"recipient": "a@nowhere.test", "tags": ["campaign_X"]}"#,
        "\n",
        r#"{"recipient": "a@gmail.com"}"#,
        "\n",
        r#"{"recipient": "a@x.example"}"#,
        "\n",
        r#"{"recipient": "a@x.example", "tags": ["campaign_X"]}"#,
        "\n",
    );
    let lines = eval(
        dir.path(),
        &["--at", "2026-11-27T12:00:00Z"],
        input.as_bytes(),
    );
    assert_eq!(
        lines,
        [
            forwarded(),
            json!({"outcome": "failed", "rule": "cancel-x", "code": 550, "status": "5.7.1",
                   "description": "Campaign X cancelled", "shadow": []}),
            // No status in the rule: null, not absent.
            json!({"outcome": "deferred", "rule": "defer-gmail", "code": 451, "status": null,
                   "description": "Deferred: gmail throttles us", "shadow": ["Watch-a"]}),
            json!({"outcome": "forwarded", "rule": null, "code": null, "status": null,
                   "description": null, "shadow": ["Watch-a", "watch-b"]}),
            json!({"outcome": "failed", "rule": "cancel-x", "code": 550, "status": "5.7.1",
                   "description": "Campaign X cancelled", "shadow": ["Watch-a", "watch-b"]}),
        ]
    );
}

#[test]
fn eval_reads_a_file_argument_or_standard_input_alike() {
    let dir = eval_rules();
    let input = "{\"recipient\": \"a@gmail.com\"}\n{\"recipient\": \"a@y.test\"}\n";
    let file = dir.path().join("events.jsonl.txt");
    std::fs::write(&file, input).unwrap();
    let from_file = eval(
        dir.path(),
        &["--at", "2026-11-27T12:00:00Z", file.to_str().unwrap()],
        b"",
    );
    let from_stdin = eval(
        dir.path(),
        &["--at", "2026-11-27T12:00:00Z"],
        input.as_bytes(),
    );
    assert_eq!(from_file.len(), 2);
    assert_eq!(from_file[0]["rule"], "defer-gmail");
    assert_eq!(from_file[1], forwarded());
    assert_eq!(from_file, from_stdin);
}

// ------------------------------------------------------------- eval lines

#[test]
fn eval_writes_one_line_per_input_line_in_order() {
    let dir = eval_rules();
    let mut input = String::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        match i % 4 {
            0 => {
                input += &format!("{{\"recipient\": \"u{i}@gmail.com\"}}\n");
                expected.push("defer-gmail");
            }
            1 => {
                input +=
                    &format!("{{\"recipient\": \"u{i}@a.test\", \"tags\": [\"campaign_X\"]}}\n");
                expected.push("cancel-x");
            }
            2 => {
                input += &format!("{{\"recipient\": \"u{i}\"}}\n");
                expected.push("invalid");
            }
            _ => {
                input += &format!("{{\"recipient\": \"u{i}@a.test\"}}\n");
                expected.push("forwarded");
            }
        }
    }
    let lines = eval(dir.path(), &[], input.as_bytes());
    let got: Vec<&str> = lines
        .iter()
        .map(|l| match l["outcome"].as_str().unwrap() {
            "invalid" | "forwarded" => l["outcome"].as_str().unwrap(),
            _ => l["rule"].as_str().unwrap(),
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn eval_reports_every_reason_code() {
    let dir = eval_rules();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"recipient\": \"a@gmail.com\xff\"}".to_vec(), "not-utf8"),
        (b"{\"recipient\": ".to_vec(), "not-json"),
        (b"[\"a@gmail.com\"]".to_vec(), "not-object"),
        (b"{}".to_vec(), "recipient-missing"),
        (b"{\"recipient\": null}".to_vec(), "recipient-missing"),
        (
            b"{\"recipient\": \"nobody\"}".to_vec(),
            "recipient-no-domain",
        ),
        (
            b"{\"recipient\": \"nobody@\"}".to_vec(),
            "recipient-no-domain",
        ),
        (b"{\"recipient\": 7}".to_vec(), "wrong-type:recipient"),
        (
            b"{\"recipient\": \"a@b.test\", \"envelope\": 7}".to_vec(),
            "wrong-type:envelope",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"ips\": \"192.0.2.1\"}".to_vec(),
            "wrong-type:ips",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"pool\": [\"p\"]}".to_vec(),
            "wrong-type:pool",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"tags\": \"campaign_X\"}".to_vec(),
            "wrong-type:tags",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"maxdelivertime\": 1764244800}".to_vec(),
            "wrong-type:maxdelivertime",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"maxattempts\": -1}".to_vec(),
            "wrong-type:maxattempts",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"results\": {}}".to_vec(),
            "wrong-type:results",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"recipient\": \"c@d.test\"}".to_vec(),
            "duplicate-key:recipient",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"envelope\": \"\", \"envelope\": \"\"}".to_vec(),
            "duplicate-key:envelope",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"ips\": [], \"ips\": []}".to_vec(),
            "duplicate-key:ips",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"pool\": \"p\", \"pool\": \"p\"}".to_vec(),
            "duplicate-key:pool",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"tags\": [], \"tags\": [\"campaign_X\"]}".to_vec(),
            "duplicate-key:tags",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"maxdelivertime\": null, \"maxdelivertime\": null}"
                .to_vec(),
            "duplicate-key:maxdelivertime",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"maxattempts\": 1, \"maxattempts\": 2}".to_vec(),
            "duplicate-key:maxattempts",
        ),
        (
            b"{\"recipient\": \"a@b.test\", \"results\": [], \"results\": []}".to_vec(),
            "duplicate-key:results",
        ),
        (b"".to_vec(), "not-json"),
    ];
    let mut input = Vec::new();
    for (line, _) in &cases {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let lines = eval(dir.path(), &[], &input);
    assert_eq!(lines.len(), cases.len());
    for ((line, want), got) in cases.iter().zip(&lines) {
        assert_eq!(
            invalid_reason(got),
            *want,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn eval_ignores_a_trailing_carriage_return() {
    let dir = eval_rules();
    let lines = eval(
        dir.path(),
        &[],
        b"{\"recipient\": \"a@gmail.com\"}\r\n{\"recipient\": \"a@b.test\"}\r\n{\"recipient\": \"a@gmail.com\"}\r",
    );
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["rule"], "defer-gmail");
    assert_eq!(lines[1], forwarded());
    assert_eq!(lines[2]["rule"], "defer-gmail");
}

#[test]
fn eval_treats_an_empty_line_as_invalid() {
    let dir = eval_rules();
    let lines = eval(dir.path(), &[], b"\n\r\n{\"recipient\": \"a@b.test\"}\n\n");
    assert_eq!(lines.len(), 4);
    assert_eq!(invalid_reason(&lines[0]), "not-json");
    assert_eq!(invalid_reason(&lines[1]), "not-json");
    assert_eq!(lines[2], forwarded());
    assert_eq!(invalid_reason(&lines[3]), "not-json");
}

#[test]
fn eval_evaluates_a_last_line_without_newline_and_adds_none() {
    let dir = eval_rules();
    assert_eq!(
        eval(dir.path(), &[], b"{\"recipient\": \"a@b.test\"}"),
        [forwarded()]
    );
    assert_eq!(
        eval(dir.path(), &[], b"{\"recipient\": \"a@b.test\"}\n"),
        [forwarded()]
    );
    assert!(eval(dir.path(), &[], b"").is_empty());
}

#[test]
fn eval_marks_an_oversize_line_too_large_and_carries_on() {
    let dir = eval_rules();
    let event = |len: usize| {
        let head = "{\"recipient\": \"a@gmail.com\", \"pad\": \"";
        let tail = "\"}";
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    let mut input = Vec::new();
    input.extend_from_slice(event(MIB + 1).as_bytes());
    input.push(b'\n');
    input.extend_from_slice(b"{\"recipient\": \"a@b.test\"}\n");
    input.extend_from_slice(event(MIB).as_bytes()); // exactly the limit
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(event(3 * MIB).as_bytes());
    input.push(b'\n');
    input.extend_from_slice(b"{\"recipient\": \"a@gmail.com\", \"tags\": [\"campaign_X\"]}\n");
    input.extend_from_slice(event(MIB + 10).as_bytes()); // last, no newline
    let lines = eval(dir.path(), &[], &input);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(invalid_reason(&lines[0]), "too-large");
    assert_eq!(lines[1], forwarded());
    assert_eq!(
        lines[2]["rule"], "defer-gmail",
        "a line of exactly 1 MiB is evaluated"
    );
    assert_eq!(invalid_reason(&lines[3]), "too-large");
    assert_eq!(lines[4]["rule"], "cancel-x");
    assert_eq!(invalid_reason(&lines[5]), "too-large");
}

#[test]
fn eval_max_event_bytes_sets_the_limit() {
    let dir = eval_rules();
    let line = "{\"recipient\": \"a@gmail.com\"}"; // 28 bytes
    let input = format!("{line}\n{line}\n");
    let lines = eval(dir.path(), &["--max-event-bytes", "28"], input.as_bytes());
    assert_eq!(lines[0]["rule"], "defer-gmail");
    let lines = eval(dir.path(), &["--max-event-bytes", "27"], input.as_bytes());
    assert_eq!(lines.len(), 2);
    assert_eq!(invalid_reason(&lines[0]), "too-large");
    assert_eq!(invalid_reason(&lines[1]), "too-large");
    // The largest limit there is: everything fits.
    let max = usize::MAX.to_string();
    let lines = eval(dir.path(), &["--max-event-bytes", &max], input.as_bytes());
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().all(|l| l["rule"] == "defer-gmail"),
        "{lines:#?}"
    );
}

// ------------------------------------------------------------------ eval --at

#[test]
fn eval_at_sets_the_instant_for_time_windows() {
    let dir = eval_rules();
    let event = b"{\"recipient\": \"a@b.test\", \"pool\": \"p-window\"}\n";
    let outcome = |at: &str| eval(dir.path(), &["--at", at], event)[0]["outcome"].clone();
    assert_eq!(outcome("2026-12-01T07:59:59Z"), "forwarded");
    assert_eq!(outcome("2026-12-01T07:59:59.999999999Z"), "forwarded");
    assert_eq!(outcome("2026-12-01T08:00:00Z"), "failed");
    assert_eq!(outcome("2026-12-01T09:00:00+01:00"), "failed");
    assert_eq!(outcome("2026-12-01T09:59:59Z"), "failed");
    assert_eq!(outcome("2026-12-01T10:00:00Z"), "forwarded");
    assert_eq!(outcome("2026-12-01T11:00:00+01:00"), "forwarded");
}

#[test]
fn eval_at_sets_the_instant_for_maxdelivertime() {
    let dir = eval_rules();
    let event = b"{\"recipient\": \"a@gmail.com\", \"maxdelivertime\": \"2026-11-27 12:00:00\"}\n";
    let line = |at: &str| eval(dir.path(), &["--at", at], event).remove(0);
    let expected = |outcome: &str| {
        json!({"outcome": outcome, "rule": "defer-gmail", "code": 451, "status": null,
               "description": "Deferred: gmail throttles us", "shadow": ["Watch-a"]})
    };
    assert_eq!(line("2026-11-27T11:59:59Z"), expected("deferred"));
    assert_eq!(line("2026-11-27T12:00:00Z"), expected("failed"));
    assert_eq!(line("2026-11-27T13:00:00+01:00"), expected("failed"));
}

#[test]
fn eval_turns_a_deferral_final_after_maxattempts() {
    let dir = eval_rules();
    let input = concat!(
        "{\"recipient\": \"a@gmail.com\", \"maxattempts\": 2, \"results\": [{}, {}]}\n",
        "{\"recipient\": \"a@gmail.com\", \"maxattempts\": 2, \"results\": [{}]}\n",
        "{\"recipient\": \"a@gmail.com\", \"maxattempts\": 0, \"results\": [{}, {}, {}]}\n",
    );
    let lines = eval(dir.path(), &[], input.as_bytes());
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "deferred", "deferred"]);
    assert!(lines.iter().all(|l| l["code"] == 451));
}

#[test]
fn eval_without_at_decides_at_the_current_time() {
    let text = [
        rule("past", 550, "pool = \"p\"\nexpires = 2000-01-01T00:00:00Z"),
        rule(
            "future",
            550,
            "pool = \"p\"\nnot_before = \"2999-01-01T00:00:00Z\"",
        ),
        rule(
            "now",
            451,
            "pool = \"p\"\nnot_before = 2000-01-01T00:00:00Z\nexpires = 2999-01-01T00:00:00Z",
        ),
    ]
    .concat();
    let dir = rules_dir(&[("r.toml", &text)]);
    let input = concat!(
        "{\"recipient\": \"a@b.test\", \"pool\": \"p\"}\n",
        "{\"recipient\": \"a@b.test\", \"pool\": \"p\", \"maxdelivertime\": \"2000-01-01 00:00:00\"}\n",
        "{\"recipient\": \"a@b.test\", \"pool\": \"p\", \"maxdelivertime\": \"2999-01-01 00:00:00\"}\n",
    );
    let lines = eval(dir.path(), &[], input.as_bytes());
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["outcome"].as_str().unwrap(), l["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("deferred", "now"), ("failed", "now"), ("deferred", "now")]
    );
}

#[test]
fn eval_fails_when_the_events_file_cannot_be_read() {
    let dir = eval_rules();
    let missing = dir.path().join("no-such-events.jsonl");
    let output = run(
        &[
            "eval",
            "--rules",
            dir.path().to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        b"",
    );
    // Not 0 (nothing was evaluated) and not 1 (the rules are fine).
    assert!(!output.status.success());
    assert_ne!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-events.jsonl"));
}

#[test]
fn eval_refuses_an_at_that_is_not_rfc3339() {
    let dir = eval_rules();
    let output = run(
        &[
            "eval",
            "--rules",
            dir.path().to_str().unwrap(),
            "--at",
            "2026-12-01 08:00:00",
        ],
        b"{\"recipient\": \"a@b.test\"}\n",
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

// ------------------------------------------------------- eval and bad rules

#[test]
fn eval_exits_1_for_an_invalid_rule_directory() {
    let dir = rules_dir(&[
        ("good.toml", &rule("good", 550, "pool = \"p\"")),
        ("bad.toml", &rule("bad", 550, "mta = \"192.0.2.1/24\"")),
    ]);
    let output = run(
        &["eval", "--rules", dir.path().to_str().unwrap()],
        b"{\"recipient\": \"a@b.test\", \"pool\": \"p\"}\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "no verdicts from an invalid rule set"
    );
    let stderr = stderr_lines(&output);
    assert!(
        stderr.iter().any(|l| l.contains("bad.toml:5:7: ")),
        "{stderr:#?}"
    );
}

#[test]
fn eval_exits_1_for_a_missing_rule_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &["eval", "--rules", dir.path().join("nope").to_str().unwrap()],
        b"{\"recipient\": \"a@b.test\"}\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
}
