//! The metric selectors in a PromQL expression, enough to check that the
//! rules and the dashboard name only what clamgate exports. promtool proves
//! the expressions parse; this only reads names and `=` matchers out of
//! them, so it skips what cannot hold a metric name (strings, ranges, the
//! label lists of `by`, `on`, …) and takes an identifier before `(` for a
//! function.

use std::collections::BTreeMap;

/// One vector selector: the metric and its `label="value"` matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub equal: BTreeMap<String, String>,
}

/// Words that are never a metric name: operators, aggregations, modifiers.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

pub fn selectors(expr: &str) -> Vec<Selector> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i);
        } else if c == '#' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '[' {
            i = skip_past(&s, i, ']');
        } else if c == '{' {
            // A selector without a metric name (`{__name__=…}`): not ours to check.
            i = matchers(&s, i).0;
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`0.9`, `5m`, `1e3`).
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let next = (i..s.len()).find(|&j| !s[j].is_whitespace());
            let next_char = next.map(|j| s[j]);
            if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                if LABEL_LISTS.contains(&word.as_str()) && next_char == Some('(') {
                    i = skip_past(&s, next.unwrap(), ')');
                }
            } else if next_char == Some('(') {
                // A function call.
            } else if next_char == Some('{') {
                let (end, equal) = matchers(&s, next.unwrap());
                out.push(Selector { metric: word, equal });
                i = end;
            } else {
                out.push(Selector { metric: word, equal: BTreeMap::new() });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Index just past the string literal opening at `i`.
fn skip_string(s: &[char], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

fn skip_past(s: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < s.len() && s[j] != close {
        j += 1;
    }
    j + 1
}

/// Reads `{a="x", b=~"y"}` opening at `i`: the index past it and the `=` matchers.
fn matchers(s: &[char], i: usize) -> (usize, BTreeMap<String, String>) {
    let mut equal = BTreeMap::new();
    let mut j = i + 1;
    loop {
        while j < s.len() && (s[j].is_whitespace() || s[j] == ',') {
            j += 1;
        }
        if j >= s.len() || s[j] == '}' {
            return (j + 1, equal);
        }
        let start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == '_') {
            j += 1;
        }
        let label: String = s[start..j].iter().collect();
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        let op_start = j;
        while j < s.len() && matches!(s[j], '=' | '!' | '~') {
            j += 1;
        }
        let op: String = s[op_start..j].iter().collect();
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if j >= s.len() || !matches!(s[j], '"' | '\'' | '`') {
            panic!("cannot read the matchers in {:?}", s.iter().collect::<String>());
        }
        let end = skip_string(s, j);
        let value: String = s[j + 1..end - 1].iter().collect();
        if op == "=" {
            equal.insert(label, value);
        }
        j = end;
    }
}
