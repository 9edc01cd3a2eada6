//! Loading a rule directory (SPEC §2): every validation error at its exact
//! line and column, JSON and TOML files, which files are read, and the
//! all-or-nothing rule.

mod common;

use bouncer::rules::{LoadError, Mode, MtaMatch, Source, load_dir};
use common::*;

/// A file holding one rule: the required keys on lines 2–4, `extra` from
/// line 5 on.
fn one_rule(extra: &str) -> String {
    rule("r", 550, extra)
}

fn loads(files: &[(&str, &str)]) -> Vec<String> {
    let dir = rules_dir(files);
    match load_dir(dir.path()) {
        Ok(rules) => rules.into_iter().map(|r| r.id).collect(),
        Err(e) => panic!("expected a valid rule set, got:\n{e}"),
    }
}

// ------------------------------------------------------------- unknown keys

#[test]
fn an_unknown_key_is_named_with_a_suggestion() {
    let text = one_rule("domian = \"gmail.com\"");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:5:1",
        &["unknown key \"domian\"", "did you mean \"domain\"?"],
    );
    let text = one_rule("pool = \"p\"\n  tag = \"campaign_X\"");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:6:3",
        &["unknown key \"tag\"", "did you mean \"tags\"?"],
    );
    let text = one_rule("pool = \"p\"\nexipres = 2026-01-01T00:00:00Z");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:6:1",
        &["unknown key \"exipres\"", "did you mean \"expires\"?"],
    );
}

#[test]
fn an_unknown_key_far_from_any_name_gets_no_suggestion() {
    let text = one_rule("pool = \"p\"\ncolour = \"blue\"");
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors, ["r.toml:6:1: unknown key \"colour\""]);
}

#[test]
fn an_unknown_top_level_key_is_refused() {
    let text = format!("rules = 1\n{}", one_rule("pool = \"p\""));
    assert_one_error(&[("r.toml", &text)], "r.toml:1:1", &["\"rules\""]);
}

// -------------------------------------------------------------- duplicate ids

#[test]
fn a_duplicate_id_across_files_names_the_first_location() {
    let first = format!("# first\n{}", rule("same", 550, "pool = \"p\""));
    let second = format!("\n\n{}", rule("same", 451, "pool = \"q\""));
    let errors = load_errors(&[("a.toml", &first), ("sub/b.toml", &second)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("sub/b.toml:4:6: duplicate id \"same\""),
        "{errors:#?}"
    );
    assert!(errors[0].contains("a.toml:3:6"), "{errors:#?}");
}

#[test]
fn a_duplicate_id_in_one_file_and_across_formats() {
    let text = format!(
        "{}{}",
        rule("same", 550, "pool = \"p\""),
        rule("same", 550, "pool = \"q\"")
    );
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("r.toml:7:6: duplicate id \"same\""),
        "{errors:#?}"
    );
    assert!(errors[0].contains("r.toml:2:6"), "{errors:#?}");

    let json = r#"{"rule": [
  {"id": "same", "code": 550, "description": "d", "pool": "p"}
]}"#;
    let errors = load_errors(&[
        ("a.toml", &rule("same", 550, "pool = \"q\"")),
        ("b.json", json),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("b.json:2:10: duplicate id \"same\""),
        "{errors:#?}"
    );
    assert!(errors[0].contains("a.toml:2:6"), "{errors:#?}");
}

// ----------------------------------------------------------------------- mta

#[test]
fn a_bad_cidr_is_located_at_its_list_element() {
    let text = one_rule(
        r#"mta = ["192.0.2.0/24", "192.0.2.0/33", "nope", "300.1.2.3", "2001:db8::/129"]"#,
    );
    let errors = load_errors(&[("r.toml", &text)]);
    let locations: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        locations,
        ["r.toml:5:24", "r.toml:5:40", "r.toml:5:48", "r.toml:5:61"],
        "{errors:#?}"
    );
    assert!(errors[0].contains("\"192.0.2.0/33\""), "{errors:#?}");
    assert!(errors[1].contains("\"nope\""), "{errors:#?}");
}

#[test]
fn a_cidr_with_host_bits_suggests_the_network() {
    let text = one_rule(r#"mta = "198.51.100.1/24""#);
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:5:7",
        &["\"198.51.100.1/24\"", "host bits", "198.51.100.0/24"],
    );
    let text = one_rule("mta = [\n  \"2001:db8::/32\",\n  \"2001:db8::1/64\",\n]");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:7:3",
        &["\"2001:db8::1/64\"", "host bits", "2001:db8::/64"],
    );
}

#[test]
fn a_zero_length_range_needs_match_all() {
    for (net, col) in [("0.0.0.0/0", 7), ("::/0", 7)] {
        let text = one_rule(&format!("mta = \"{net}\""));
        assert_one_error(
            &[("r.toml", &text)],
            &format!("r.toml:5:{col}"),
            &["/0", "match_all = true"],
        );
        let text = one_rule(&format!("mta = \"{net}\"\nmatch_all = true"));
        assert_eq!(loads(&[("r.toml", &text)]), ["r"]);
    }
    // In a list, alongside other ranges.
    let text = one_rule("domain = \"x.example\"\nmta = [\"192.0.2.0/24\", \"0.0.0.0/0\"]");
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("/0"), "{errors:#?}");
}

#[test]
fn mta_match_takes_all_or_any() {
    let text = one_rule("mta = \"192.0.2.1\"\nmta_match = \"some\"");
    assert_one_error(&[("r.toml", &text)], "r.toml:6:13", &["\"all\"", "\"any\""]);
    let dir = rules_dir(&[(
        "r.toml",
        &one_rule("mta = \"192.0.2.1\"\nmta_match = \"any\""),
    )]);
    let rules = load_dir(dir.path()).unwrap();
    assert_eq!(rules[0].conditions.mta_match, Some(MtaMatch::Any));
}

// ------------------------------------------------------------ condition lists

#[test]
fn an_empty_condition_list_is_refused_for_every_condition() {
    for key in ["mta", "pool", "domain", "sender_domain", "tags"] {
        // Another condition keeps the rule from having none at all.
        let other = if key == "pool" {
            "tags = \"t\""
        } else {
            "pool = \"p\""
        };
        let text = one_rule(&format!("{other}\n{key} = []"));
        let col = key.len() + 4;
        assert_one_error(
            &[("r.toml", &text)],
            &format!("r.toml:6:{col}"),
            &[&format!("\"{key}\""), "empty list"],
        );
    }
}

#[test]
fn a_condition_value_must_be_a_string() {
    let text = one_rule("pool = [\"p\", 7]");
    assert_one_error(&[("r.toml", &text)], "r.toml:5:14", &["\"pool\"", "string"]);
    let text = one_rule("tags = { a = 1 }");
    assert_one_error(&[("r.toml", &text)], "r.toml:5:8", &["\"tags\"", "string"]);
}

#[test]
fn a_bad_domain_pattern_is_refused() {
    for bad in [
        "*",
        "a.*.example",
        "user@example.com",
        "[192.0.2.1]",
        "exa mple.com",
        "*example.com",
    ] {
        let text = one_rule(&format!("domain = [\"ok.example\", {bad:?}]"));
        assert_one_error(&[("r.toml", &text)], "r.toml:5:25", &["\"domain\""]);
    }
}

// ---------------------------------------------------------------- code/status

#[test]
fn a_code_outside_400_to_599_is_refused() {
    for code in [0, 250, 399, 600, 999] {
        let text =
            format!("[[rule]]\nid = \"r\"\ncode = {code}\ndescription = \"d\"\npool = \"p\"\n");
        assert_one_error(
            &[("r.toml", &text)],
            "r.toml:3:8",
            &[&format!("{code}"), "400"],
        );
    }
    for code in [400, 599] {
        let text =
            format!("[[rule]]\nid = \"r\"\ncode = {code}\ndescription = \"d\"\npool = \"p\"\n");
        assert_eq!(loads(&[("r.toml", &text)]), ["r"], "code {code} is valid");
    }
    let text = "[[rule]]\nid = \"r\"\ncode = \"550\"\ndescription = \"d\"\npool = \"p\"\n";
    assert_one_error(&[("r.toml", text)], "r.toml:3:8", &["\"code\""]);
}

#[test]
fn a_status_class_must_equal_the_code_class() {
    let text =
        "[[rule]]\nid = \"r\"\ncode = 550\nstatus = \"4.7.1\"\ndescription = \"d\"\npool = \"p\"\n";
    assert_one_error(&[("r.toml", text)], "r.toml:4:10", &["\"4.7.1\"", "550"]);
    let text =
        "[[rule]]\nid = \"r\"\ncode = 451\nstatus = \"5.7.1\"\ndescription = \"d\"\npool = \"p\"\n";
    assert_one_error(&[("r.toml", text)], "r.toml:4:10", &["\"5.7.1\"", "451"]);
    let text =
        "[[rule]]\nid = \"r\"\ncode = 451\nstatus = \"4.7.0\"\ndescription = \"d\"\npool = \"p\"\n";
    assert_eq!(loads(&[("r.toml", text)]), ["r"]);
    let text =
        "[[rule]]\nid = \"r\"\ncode = 550\nstatus = \"5.7\"\ndescription = \"d\"\npool = \"p\"\n";
    assert_one_error(&[("r.toml", text)], "r.toml:4:10", &["\"5.7\""]);
}

#[test]
fn required_keys_are_named_at_the_rule() {
    let text = "pool = \"p\"\n[[rule]]\ndomain = \"x.example\"\n";
    let errors = load_errors(&[("r.toml", text)]);
    // `pool` at the top level is not a rule key.
    assert!(errors[0].starts_with("r.toml:1:1: "), "{errors:#?}");
    let text = "[[rule]]\ndomain = \"x.example\"\n";
    let errors = load_errors(&[("r.toml", text)]);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    for (error, key) in errors.iter().zip(["id", "code", "description"]) {
        assert!(error.starts_with("r.toml:1:1: "), "{error}");
        assert!(error.contains(&format!("\"{key}\"")), "{error} names {key}");
    }
}

// -------------------------------------------------------------- time windows

#[test]
fn expires_must_be_after_not_before() {
    for expires in [
        "2026-12-01T08:00:00Z",
        "\"2026-12-01T09:00:00+01:00\"",
        "2026-11-30T08:00:00Z",
    ] {
        let text = one_rule(&format!(
            "pool = \"p\"\nnot_before = 2026-12-01T08:00:00Z\nexpires = {expires}"
        ));
        assert_one_error(
            &[("r.toml", &text)],
            "r.toml:7:1",
            &["\"expires\"", "\"not_before\""],
        );
    }
    let text =
        one_rule("pool = \"p\"\nnot_before = 2026-12-01T08:00:00Z\nexpires = 2026-12-01T08:00:01Z");
    assert_eq!(loads(&[("r.toml", &text)]), ["r"]);
}

#[test]
fn a_local_time_without_offset_is_refused() {
    for (key, value, col) in [
        ("not_before", "2026-12-01T08:00:00", 14),
        ("expires", "2026-12-01T08:00:00", 11),
        ("not_before", "2026-12-01 08:00:00", 14),
        ("expires", "2026-12-01", 11),
        ("not_before", "\"2026-12-01T08:00:00\"", 14),
        ("expires", "\"2026-12-01T08:00:00\"", 11),
    ] {
        let text = one_rule(&format!("pool = \"p\"\n{key} = {value}"));
        assert_one_error(
            &[("r.toml", &text)],
            &format!("r.toml:6:{col}"),
            &[&format!("\"{key}\""), "offset"],
        );
    }
}

#[test]
fn time_bounds_accept_toml_date_times_and_rfc3339_strings() {
    let text = one_rule(
        "pool = \"p\"\nnot_before = 2026-12-01T09:00:00+01:00\nexpires = \"2026-12-02T08:00:00.5Z\"",
    );
    let dir = rules_dir(&[("r.toml", &text)]);
    let rules = load_dir(dir.path()).unwrap();
    assert_eq!(rules[0].not_before, Some(at("2026-12-01T08:00:00Z")));
    assert_eq!(rules[0].expires, Some(at("2026-12-02T08:00:00.5Z")));
    let text = one_rule("pool = \"p\"\nexpires = \"tomorrow\"");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:6:11",
        &["\"expires\"", "RFC 3339"],
    );
}

// --------------------------------------------------- the match_all guard

#[test]
fn a_rule_without_conditions_needs_match_all() {
    let text = format!(
        "{}\n\n{}",
        rule("ok", 550, "pool = \"p\""),
        rule("all", 550, "")
    );
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:8:1: "), "{errors:#?}");
    assert!(errors[0].contains("match_all = true"), "{errors:#?}");
    // match_all = false is no different from leaving it out.
    let text = rule("all", 550, "match_all = false");
    assert_one_error(&[("r.toml", &text)], "r.toml:1:1", &["no condition"]);

    let text = rule("all", 550, "match_all = true");
    assert_eq!(loads(&[("r.toml", &text)]), ["all"]);
}

// -------------------------------------------------------------- id, description

#[test]
fn the_api_prefix_is_reserved() {
    let text = rule("api-0123456789abcdef", 550, "pool = \"p\"");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:2:6",
        &["\"api-\"", "reserved"],
    );
    // Only the exact prefix is reserved.
    let text = rule("apiary", 550, "pool = \"p\"");
    assert_eq!(loads(&[("r.toml", &text)]), ["apiary"]);
}

#[test]
fn an_id_is_1_to_128_of_the_allowed_characters() {
    let long = "x".repeat(129);
    for bad in ["", "a b", "a/b", "bücher", "a:b", "a\\\\b", &long] {
        let text = rule(bad, 550, "pool = \"p\"");
        assert_one_error(&[("r.toml", &text)], "r.toml:2:6", &["id"]);
    }
    let max = "x".repeat(128);
    for good in ["A.b_c-9", "0", &max] {
        let text = rule(good, 550, "pool = \"p\"");
        assert_eq!(loads(&[("r.toml", &text)]), [good]);
    }
    let text = "[[rule]]\nid = 7\ncode = 550\ndescription = \"d\"\npool = \"p\"\n";
    assert_one_error(&[("r.toml", text)], "r.toml:2:6", &["\"id\""]);
}

#[test]
fn a_description_is_1_to_512_characters() {
    let desc = |d: &str| {
        format!("[[rule]]\nid = \"r\"\ncode = 550\ndescription = \"{d}\"\npool = \"p\"\n")
    };
    for bad in ["".to_owned(), "x".repeat(513), "é".repeat(513)] {
        assert_one_error(
            &[("r.toml", &desc(&bad))],
            "r.toml:4:15",
            &["description", "512"],
        );
    }
    // Characters, not bytes: 512 two-byte characters fit.
    for good in ["x".repeat(512), "é".repeat(512)] {
        assert_eq!(loads(&[("r.toml", &desc(&good))]), ["r"]);
    }
}

#[test]
fn a_description_has_no_control_characters() {
    let desc = |d: &str| {
        format!("[[rule]]\nid = \"r\"\ncode = 550\ndescription = \"{d}\"\npool = \"p\"\n")
    };
    for bad in [
        "line\\nbreak",
        "tab\\there",
        "bell\\u0007",
        "del\\u007f",
        "c1\\u0085",
    ] {
        assert_one_error(&[("r.toml", &desc(bad))], "r.toml:4:15", &["control"]);
    }
}

#[test]
fn mode_is_enforce_or_shadow() {
    let text = one_rule("pool = \"p\"\nmode = \"dry-run\"");
    assert_one_error(
        &[("r.toml", &text)],
        "r.toml:6:8",
        &["\"enforce\"", "\"shadow\""],
    );
    let dir = rules_dir(&[("r.toml", &one_rule("pool = \"p\"\nmode = \"shadow\""))]);
    assert_eq!(load_dir(dir.path()).unwrap()[0].mode, Mode::Shadow);
}

// ------------------------------------------------------- many errors at once

#[test]
fn every_error_in_every_file_is_reported_top_to_bottom() {
    let a = "[[rule]]\nid = \"a\"\ncode = 600\ndescription = \"d\"\ndomain = []\n";
    let b = "[[rule]]\nid = \"b b\"\ncode = 550\ndescription = \"d\"\npool = \"p\"\nmta = \"1.2.3.4/8\"\n";
    let errors = load_errors(&[("a.toml", a), ("b.toml", b)]);
    let locations: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        locations,
        ["a.toml:3:8", "a.toml:5:10", "b.toml:2:6", "b.toml:6:7"],
        "{errors:#?}"
    );
}

// ------------------------------------------------------------------------- JSON

#[test]
fn json_files_hold_rules_with_the_same_fields() {
    let json = r#"{"rule": [
  {"id": "j1", "code": 451, "status": "4.7.0", "description": "d",
   "domain": ["bücher.example", "*.x.example"], "mta": "192.0.2.0/24", "mta_match": "any",
   "not_before": "2026-12-01T08:00:00Z", "mode": "shadow"},
  {"id": "j2", "code": 550, "description": "d", "match_all": true}
]}"#;
    let dir = rules_dir(&[("r.json", json)]);
    let rules = load_dir(dir.path()).unwrap();
    assert_eq!(rules.len(), 2);
    let j1 = &rules[0];
    assert_eq!(j1.id, "j1");
    assert_eq!(j1.status.as_deref(), Some("4.7.0"));
    assert_eq!(j1.mode, Mode::Shadow);
    assert_eq!(j1.not_before, Some(at("2026-12-01T08:00:00Z")));
    assert_eq!(j1.source, Source::File("r.json".into()));
    assert!(rules[1].match_all);
}

#[test]
fn json_errors_are_located_at_the_key_or_the_enclosing_rule() {
    let json = r#"{"rule": [
  {"id": "a", "code": 550, "description": "x", "domian": "a.example"},
  {"id": "b", "code": 550, "description": "x"},
  {"id": "c", "code": 650, "description": "x", "pool": "p"}
]}"#;
    let errors = load_errors(&[("r.json", json)]);
    let locations: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        locations,
        ["r.json:2:48", "r.json:3:3", "r.json:4:23"],
        "{errors:#?}"
    );
    assert!(
        errors[0].contains("did you mean \"domain\"?"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("match_all"), "{errors:#?}");
}

#[test]
fn json_syntax_errors_are_located() {
    let errors = load_errors(&[("r.json", "{\"rule\": [\n  {\"id\": \"a\",, }\n]}")]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.json:2:"), "{errors:#?}");
    // A trailing comma is not JSON.
    let errors = load_errors(&[(
        "r.json",
        "{\"rule\": [{\"id\": \"a\", \"code\": 550, \"description\": \"d\", \"pool\": \"p\",}]}",
    )]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.json:1:"), "{errors:#?}");
    // The wrong shape.
    let errors = load_errors(&[("r.json", "\n[{\"id\": \"a\"}]")]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.json:2:1: "), "{errors:#?}");
}

// ------------------------------------------------------------------------- TOML

#[test]
fn toml_syntax_errors_are_located() {
    let text = format!("{}[[rule]\n", rule("a", 550, "pool = \"p\""));
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:6:"), "{errors:#?}");

    let text = "[[rule]]\nid = \"a\"\ncode = \ndescription = \"d\"\n";
    let errors = load_errors(&[("r.toml", text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:3:"), "{errors:#?}");

    // A key given twice is a TOML error.
    let text = one_rule("pool = \"p\"\npool = \"q\"");
    let errors = load_errors(&[("r.toml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:6:1: "), "{errors:#?}");
}

#[test]
fn a_file_that_is_not_utf8_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), b"# \xff\n").unwrap();
    assert!(matches!(load_dir(dir.path()), Err(LoadError::Invalid(_))));
}

#[test]
fn empty_files_hold_no_rules() {
    assert!(
        loads(&[
            ("a.toml", ""),
            ("b.json", ""),
            ("c.toml", "# only a comment\n")
        ])
        .is_empty()
    );
}

// ------------------------------------------------------------ which files are read

#[test]
fn subfolders_are_read_and_sources_are_relative_paths() {
    let dir = rules_dir(&[
        ("top.toml", &rule("top", 550, "pool = \"p\"")),
        ("a/b/c/deep.toml", &rule("deep", 550, "pool = \"p\"")),
        (
            "a/mid.json",
            r#"{"rule": [{"id": "mid", "code": 550, "description": "d", "pool": "p"}]}"#,
        ),
    ]);
    let mut rules = load_dir(dir.path()).unwrap();
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    let sources: Vec<(String, String)> = rules
        .iter()
        .map(|r| (r.id.clone(), r.source.to_string()))
        .collect();
    assert_eq!(
        sources,
        [
            ("deep".to_owned(), "file:a/b/c/deep.toml".to_owned()),
            ("mid".to_owned(), "file:a/mid.json".to_owned()),
            ("top".to_owned(), "file:top.toml".to_owned()),
        ]
    );
}

#[test]
fn dot_named_files_and_folders_are_skipped() {
    let broken = "this is [[ not a rule file";
    let ids = loads(&[
        ("ok.toml", &rule("ok", 550, "pool = \"p\"")),
        (".git/x.toml", broken),
        (".git/objects/y.json", broken),
        ("..data/x.toml", broken),
        ("..2026_11_27_12_00_00.1/x.toml", broken),
        (".hidden.toml", broken),
        ("sub/.swap.toml", broken),
        ("sub/.cache/z.toml", broken),
    ]);
    assert_eq!(ids, ["ok"]);
}

#[test]
fn only_toml_and_json_files_are_read() {
    let broken = "this is [[ not a rule file";
    let ids = loads(&[
        ("ok.toml", &rule("ok", 550, "pool = \"p\"")),
        ("README.md", broken),
        ("rules.yaml", broken),
        ("ok.toml.bak", broken),
        ("ok.toml~", broken),
        ("notes.txt", broken),
        ("json", broken),
        ("toml", broken),
    ]);
    assert_eq!(ids, ["ok"]);
}

#[cfg(unix)]
#[test]
fn a_configmap_mount_is_read_once_through_its_links() {
    use std::os::unix::fs::symlink;
    let dir = rules_dir(&[
        (
            "..2026_11_27_12_00_00.1/a.toml",
            &rule("a", 550, "pool = \"p\""),
        ),
        (
            "..2026_11_27_12_00_00.1/b.json",
            r#"{"rule": [{"id": "b", "code": 550, "description": "d", "pool": "p"}]}"#,
        ),
    ]);
    let root = dir.path();
    symlink("..2026_11_27_12_00_00.1", root.join("..data")).unwrap();
    symlink("..data/a.toml", root.join("a.toml")).unwrap();
    symlink("..data/b.json", root.join("b.json")).unwrap();
    let mut ids: Vec<String> = load_dir(root).unwrap().into_iter().map(|r| r.id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
}

// ------------------------------------------------------------- all or nothing

#[test]
fn one_bad_file_makes_the_whole_set_invalid() {
    let dir = rules_dir(&[
        ("a-good.toml", &rule("good", 550, "pool = \"p\"")),
        ("b-bad.toml", &rule("bad", 550, "pol = \"p\"")),
        (
            "c-good.json",
            r#"{"rule": [{"id": "good2", "code": 550, "description": "d", "pool": "p"}]}"#,
        ),
    ]);
    match load_dir(dir.path()) {
        Err(LoadError::Invalid(diags)) => {
            assert_eq!(diags.len(), 1, "{diags:#?}");
            assert!(diags[0].file.ends_with("b-bad.toml"), "{diags:#?}");
            assert_eq!((diags[0].line, diags[0].col), (5, 1));
        }
        other => panic!("expected the set to be invalid, got {other:?}"),
    }
}

#[test]
fn a_missing_directory_is_not_an_empty_rule_set() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-yet");
    assert!(matches!(load_dir(&missing), Err(LoadError::Missing(_))));
    assert!(load_dir(dir.path()).unwrap().is_empty());
}

#[test]
fn diagnostics_display_as_file_line_col_message() {
    let dir = rules_dir(&[("r.toml", &one_rule("domian = \"x\""))]);
    let Err(LoadError::Invalid(diags)) = load_dir(dir.path()) else {
        panic!("expected an invalid set");
    };
    let shown = diags[0].to_string();
    let expected_prefix = format!("{}:5:1: unknown key", dir.path().join("r.toml").display());
    assert!(shown.starts_with(&expected_prefix), "{shown}");
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[[rule]]\nid = \"r\"\ncode = 550\ndescription = \"😀 bücher\"   ;\n";
    let errors = load_errors(&[("r.toml", text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("r.toml:4:28: "), "{errors:#?}");

    let text = one_rule("domain = [\"bücher.example\", \"a b\"]");
    assert_one_error(&[("r.toml", &text)], "r.toml:5:29", &["\"a b\""]);

    let json = "{\"rule\": [\n  {\"id\": \"a\", \"code\": 550, \"description\": \"ééé 日本\", \"pool\": 5}\n]}";
    assert_one_error(&[("r.json", json)], "r.json:2:61", &["\"pool\""]);
}

#[test]
fn a_key_given_twice_in_a_json_rule_is_refused() {
    // Otherwise one of the two values would be silently ignored.
    let json = "{\"rule\": [\n  {\"id\": \"a\", \"code\": 550, \"description\": \"d\",\n   \"domain\": \"a.example\", \"domain\": \"b.example\"}\n]}";
    assert_one_error(
        &[("r.json", json)],
        "r.json:3:27",
        &["duplicate key \"domain\""],
    );
    let json = "{\"rule\": [], \"rule\": []}";
    assert_one_error(&[("r.json", json)], "r.json:1:14", &["\"rule\""]);
}
