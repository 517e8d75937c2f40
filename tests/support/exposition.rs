//! A small, strict parser of the Prometheus text format (0.0.4) so tests can assert
//! exact values per series, independently of the exporter's own encoder.

use std::collections::BTreeMap;

/// A sorted label set.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Default)]
pub struct Exposition {
    samples: BTreeMap<(String, Labels), f64>,
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    /// Samples that carried a timestamp (the exporter must set none).
    pub timestamped: usize,
}

impl Exposition {
    /// Parses a whole exposition; panics naming the line on anything malformed,
    /// including a series that appears twice.
    pub fn parse(text: &str) -> Exposition {
        let mut exp = Exposition::default();
        for (i, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("exposition line {}: {why}: {line:?}", i + 1) };
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.trim_start().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("HELP"), Some(name), text) => {
                        let text = unescape(text.unwrap_or_default());
                        if exp.help.insert(name.to_string(), text).is_some() {
                            fail("second HELP for the family");
                        }
                    }
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        let previous = exp.types.insert(name.to_string(), kind.to_string());
                        if previous.is_some() {
                            fail("second TYPE for the family");
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let (name, labels, rest) = split_sample(line).unwrap_or_else(|why| fail(&why));
            let mut fields = rest.split_whitespace();
            let value = fields
                .next()
                .and_then(parse_value)
                .unwrap_or_else(|| fail("bad value"));
            match fields.next() {
                None => {}
                Some(ts) if ts.parse::<i64>().is_ok() => exp.timestamped += 1,
                Some(_) => fail("bad timestamp"),
            }
            if exp.samples.insert((name, labels), value).is_some() {
                fail("duplicate series");
            }
        }
        exp
    }

    /// The value of the series `name` with exactly these labels (any order).
    /// Panics listing the series that do exist when it is absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.try_get(name, labels).unwrap_or_else(|| {
            panic!(
                "no series {name}{{{}}}; near:\n{}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(","),
                self.near(name)
            )
        })
    }

    pub fn try_get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .get(&(name.to_string(), sorted(labels)))
            .copied()
    }

    /// Every series of the metric `name`, with its labels.
    pub fn series(&self, name: &str) -> Vec<(&Labels, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
    }

    /// The sum over the series of `name` whose labels include all of `matching`.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.series(name)
            .into_iter()
            .filter(|(labels, _)| {
                matching
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The HELP text of a family (the name in the `# HELP` line).
    pub fn help(&self, family: &str) -> Option<&str> {
        self.help.get(family).map(String::as_str)
    }

    /// The TYPE of a family: counter, gauge, histogram, summary, untyped.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Every metric name with at least one sample.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.samples.keys().map(|(n, _)| n.as_str()).collect();
        names.dedup();
        names
    }

    /// The series of `name`, or failing that the names sharing its prefix, for
    /// error messages.
    fn near(&self, name: &str) -> String {
        let same: Vec<String> = self
            .series(name)
            .into_iter()
            .map(|(labels, v)| format!("  {name}{} {v}", render(labels)))
            .collect();
        if !same.is_empty() {
            return same.join("\n");
        }
        let prefix = name.rsplit_once('_').map_or(name, |(p, _)| p);
        let names: Vec<&str> = self
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        format!("  (no series named {name}; names starting {prefix:?}: {names:?})")
    }
}

fn render(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn sorted(labels: &[(&str, &str)]) -> Labels {
    let mut l: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

/// `name{a="x",b="y"} rest` -> (name, sorted labels, rest).
fn split_sample(line: &str) -> Result<(String, Labels, &str), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // label name up to '=' (or the closing brace)
            let mut key = String::new();
            let close = loop {
                match chars.next() {
                    Some((i, '}')) if key.trim().is_empty() => break Some(i),
                    Some((_, '=')) => break None,
                    Some((_, ',')) if key.trim().is_empty() => {}
                    Some((_, c)) => key.push(c),
                    None => return Err("unterminated label set".into()),
                }
            };
            if let Some(i) = close {
                rest = &after[i + 1..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key:?} value not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
    }
    labels.sort();
    if labels.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("repeated label name".into());
    }
    Ok((name.to_string(), labels, rest))
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// HELP text escapes: `\\` and `\n`.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
