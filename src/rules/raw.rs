//! A syntax-neutral tree of rule values with byte spans, built from TOML or
//! JSON, so that one validator serves every format and every error can point
//! at a line and column.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::value::Datetime;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A TOML date-time literal (possibly local, which validation refuses).
    Datetime(Datetime),
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Range<usize>,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
            Value::Null => "null",
        }
    }
}

impl Node {
    pub fn new(span: Range<usize>, value: Value) -> Self {
        Node { span, value }
    }

    /// Converts a parsed TOML value, keeping every span.
    pub fn from_toml(value: &toml::Spanned<DeValue<'_>>) -> Node {
        let span = value.span();
        let converted = match value.get_ref() {
            DeValue::String(s) => Value::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::Int(n),
                Err(_) => Value::Float(f64::INFINITY),
            },
            DeValue::Float(f) => Value::Float(f.as_str().parse().unwrap_or(f64::NAN)),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::Datetime(*d),
            DeValue::Array(items) => Value::Array(items.iter().map(Node::from_toml).collect()),
            DeValue::Table(table) => Value::Table(table_from_toml(table)),
        };
        Node::new(span, converted)
    }

    /// Converts a parsed JSON value, keeping every span.
    pub fn from_json(value: &jsonc_parser::ast::Value<'_>) -> Node {
        use jsonc_parser::ast::Value as J;
        match value {
            J::StringLit(s) => {
                Node::new(s.range.start..s.range.end, Value::Str(s.value.to_string()))
            }
            J::NumberLit(n) => {
                let v = match n.value.parse::<i64>() {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Float(n.value.parse().unwrap_or(f64::NAN)),
                };
                Node::new(n.range.start..n.range.end, v)
            }
            J::BooleanLit(b) => Node::new(b.range.start..b.range.end, Value::Bool(b.value)),
            J::NullKeyword(k) => Node::new(k.range.start..k.range.end, Value::Null),
            J::Array(a) => Node::new(
                a.range.start..a.range.end,
                Value::Array(a.elements.iter().map(Node::from_json).collect()),
            ),
            J::Object(o) => Node::new(
                o.range.start..o.range.end,
                Value::Table(
                    o.properties
                        .iter()
                        .map(|p| {
                            let range = match &p.name {
                                jsonc_parser::ast::ObjectPropName::String(s) => s.range,
                                jsonc_parser::ast::ObjectPropName::Word(w) => w.range,
                            };
                            let key = Key {
                                name: p.name.as_str().to_owned(),
                                span: range.start..range.end,
                            };
                            (key, Node::from_json(&p.value))
                        })
                        .collect(),
                ),
            ),
        }
    }

    /// Converts a `serde_json` value, for bodies that carry no positions
    /// (REST requests): spans are empty and errors name the field instead.
    pub fn from_serde_json(value: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let v = match value {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Array(items.iter().map(Node::from_serde_json).collect()),
            J::Object(map) => Value::Table(
                map.iter()
                    .map(|(k, v)| {
                        let key = Key {
                            name: k.clone(),
                            span: 0..0,
                        };
                        (key, Node::from_serde_json(v))
                    })
                    .collect(),
            ),
        };
        Node::new(0..0, v)
    }
}

pub fn table_from_toml(table: &DeTable<'_>) -> Vec<(Key, Node)> {
    let mut entries: Vec<(Key, Node)> = table
        .iter()
        .map(|(k, v)| {
            let key = Key {
                name: k.get_ref().to_string(),
                span: k.span(),
            };
            (key, Node::from_toml(v))
        })
        .collect();
    // Keep the order of the source, so errors come out top to bottom.
    entries.sort_by_key(|(k, _)| k.span.start);
    entries
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineCursor::new(text).line_col(offset)
}

/// Lines and columns of many offsets into one text. Each is counted on from
/// the previous one, so offsets in order (as a file's errors come) cost one
/// pass over the text, where calling [`line_col`] for each would be
/// quadratic.
pub struct LineCursor<'t> {
    text: &'t str,
    offset: usize,
    line: usize,
    col: usize,
}

impl<'t> LineCursor<'t> {
    pub fn new(text: &'t str) -> Self {
        LineCursor {
            text,
            offset: 0,
            line: 1,
            col: 1,
        }
    }

    pub fn line_col(&mut self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        if offset < self.offset {
            *self = LineCursor::new(self.text);
        }
        for c in self.text[self.offset..offset].chars() {
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        self.offset = offset;
        (self.line, self.col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 8), (3, 1));
        assert_eq!(line_col(text, 7), (2, 4));
        assert_eq!(line_col(text, 999), (3, 2));
    }

    #[test]
    fn line_cursor_agrees_with_line_col_in_any_order() {
        let text = "ab\ncdé\nf\n\nxyz";
        let mut cursor = LineCursor::new(text);
        for offset in [0, 3, 5, 6, 8, 2, 9, 10, 1, 14, 999, 4] {
            assert_eq!(
                cursor.line_col(offset),
                line_col_naive(text, offset),
                "{offset}"
            );
        }
    }

    fn line_col_naive(text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, text[line_start..offset].chars().count() + 1)
    }
}
