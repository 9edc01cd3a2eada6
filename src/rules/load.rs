//! Loading a rule directory (SPEC §2): every `.toml` and `.json` file below
//! it, dot-names skipped, validated all-or-nothing with `FILE:LINE:COL`
//! errors.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::raw::{Key, LineCursor, Node, Value, line_col, table_from_toml};
use super::validate::{Origin, validate_rule};
use super::{Rule, Source};

/// One error, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as reached from the directory given (`rules/x.toml`).
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

#[derive(Debug)]
pub enum LoadError {
    /// The directory does not exist (yet): callers wait rather than treat
    /// it as an empty rule set.
    Missing(PathBuf),
    /// The set is invalid; each problem is listed.
    Invalid(Vec<Diagnostic>),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Missing(dir) => {
                write!(f, "{}: rules directory does not exist", dir.display())
            }
            LoadError::Invalid(diags) => {
                for (i, d) in diags.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// The files a rule set is made of, with their text: what a reload hashes to
/// decide whether anything changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuleFiles {
    /// (path relative to the root, with `/` separators; contents)
    pub files: Vec<(String, String)>,
}

/// Reads and validates a rule directory.
pub fn load_dir(root: &Path) -> Result<Vec<Rule>, LoadError> {
    let files = read_dir(root)?;
    parse_files(root, &files)
}

/// Reads every rule file below `root`, following symbolic links (ConfigMap
/// and git-sync layouts are made of them) but never looping.
pub fn read_dir(root: &Path) -> Result<RuleFiles, LoadError> {
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(LoadError::Invalid(vec![Diagnostic {
                file: root.to_path_buf(),
                line: 1,
                col: 1,
                message: "rules_dir is not a directory".into(),
            }]));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LoadError::Missing(root.to_path_buf()));
        }
        Err(e) => return Err(io_error(root, &e)),
    }
    let mut out = RuleFiles::default();
    let mut visiting = HashSet::new();
    walk(root, "", &mut visiting, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    visiting: &mut HashSet<PathBuf>,
    out: &mut RuleFiles,
) -> Result<(), LoadError> {
    let canonical = fs::canonicalize(dir).map_err(|e| io_error(dir, &e))?;
    if !visiting.insert(canonical.clone()) {
        return Ok(()); // a symlink loop: this directory is already being read
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_error(dir, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_error(dir, &e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let rel_path = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        // `metadata` follows links; a dangling link (mid-swap) is skipped and
        // the next reload sees the settled tree.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, &rel_path, visiting, out)?;
        } else if meta.is_file() && (name.ends_with(".toml") || name.ends_with(".json")) {
            let text = match fs::read(&path) {
                Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
                    LoadError::Invalid(vec![Diagnostic {
                        file: path.clone(),
                        line: 1,
                        col: 1,
                        message: "file is not valid UTF-8".into(),
                    }])
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path, &e)),
            };
            out.files.push((rel_path, text));
        }
    }
    visiting.remove(&canonical);
    Ok(())
}

fn io_error(path: &Path, e: &io::Error) -> LoadError {
    LoadError::Invalid(vec![Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message: format!("cannot read: {e}"),
    }])
}

/// Parses and validates files already read; all-or-nothing.
pub fn parse_files(root: &Path, files: &RuleFiles) -> Result<Vec<Rule>, LoadError> {
    let mut rules = Vec::new();
    let mut diags = Vec::new();
    // Where each id was first defined: the text and offset, turned into a
    // line and column only for a duplicate, since counting lines for every
    // rule made loading quadratic in the size of a file.
    let mut first_seen: HashMap<String, (PathBuf, &str, usize)> = HashMap::new();
    for (rel, text) in &files.files {
        let display = root.join(rel);
        let mut cursor = LineCursor::new(text);
        let mut diag = |span: Range<usize>, message: String| {
            let (line, col) = cursor.line_col(span.start);
            Diagnostic {
                file: display.clone(),
                line,
                col,
                message,
            }
        };
        let tables = if rel.ends_with(".json") {
            json_rules(text)
        } else {
            toml_rules(text)
        };
        let tables = match tables {
            Ok(tables) => tables,
            Err((span, message)) => {
                diags.push(diag(span, message));
                continue;
            }
        };
        for (rule_span, table) in tables {
            match validate_rule(
                &table,
                rule_span.clone(),
                Origin::File,
                Source::File(rel.clone()),
            ) {
                Ok(rule) => {
                    let id_span = table
                        .iter()
                        .find(|(k, _)| k.name == "id")
                        .map_or(rule_span.clone(), |(_, n)| n.span.clone());
                    if let Some((file, first_text, first_offset)) = first_seen.get(&rule.id) {
                        let (l, c) = line_col(first_text, *first_offset);
                        diags.push(diag(
                            id_span,
                            format!(
                                "duplicate id \"{}\", first defined at {}:{l}:{c}",
                                rule.id,
                                file.display()
                            ),
                        ));
                    } else {
                        first_seen.insert(rule.id.clone(), (display.clone(), text, id_span.start));
                        rules.push(rule);
                    }
                }
                Err(errors) => diags.extend(errors.into_iter().map(|e| diag(e.span, e.message))),
            }
        }
    }
    if diags.is_empty() {
        Ok(rules)
    } else {
        Err(LoadError::Invalid(diags))
    }
}

type Tables = Vec<(Range<usize>, Vec<(Key, Node)>)>;
type SyntaxError = (Range<usize>, String);

fn toml_rules(text: &str) -> Result<Tables, SyntaxError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        (span, e.message().trim().to_owned())
    })?;
    let root = Node::new(doc.span(), Value::Table(table_from_toml(doc.get_ref())));
    rule_tables(root, "[[rule]] tables")
}

fn json_rules(text: &str) -> Result<Tables, SyntaxError> {
    let strict = jsonc_parser::ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &strict).map_err(|e| {
        let range = e.range();
        (range.start..range.end, e.kind().to_string())
    })?;
    let Some(value) = parsed.value else {
        return Ok(Vec::new()); // an empty file holds no rules
    };
    rule_tables(Node::from_json(&value), "a {\"rule\": [...]} object")
}

/// Extracts the `rule` array's tables from a parsed file.
fn rule_tables(root: Node, shape: &str) -> Result<Tables, SyntaxError> {
    let Value::Table(entries) = root.value else {
        return Err((root.span, format!("a rule file must be {shape}")));
    };
    let mut seen_rule = false;
    let mut out = Vec::new();
    for (key, node) in entries {
        if key.name != "rule" {
            return Err((
                key.span,
                format!(
                    "unknown top-level key \"{}\"; a rule file holds only {shape} under \"rule\"",
                    key.name
                ),
            ));
        }
        if seen_rule {
            return Err((key.span, "duplicate key \"rule\"".into()));
        }
        seen_rule = true;
        let Value::Array(items) = node.value else {
            return Err((
                node.span,
                format!("\"rule\" must be a list of rules ({shape})"),
            ));
        };
        for item in items {
            match item.value {
                Value::Table(table) => out.push((item.span, table)),
                other => {
                    return Err((
                        item.span,
                        format!("each rule must be a table, found {}", other.type_name()),
                    ));
                }
            }
        }
    }
    Ok(out)
}
