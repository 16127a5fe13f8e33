//! Parsers for Jepsen-recorded histories (the formats of the test vectors
//! in `testdata/linearizability-vectors`). Times are line numbers.

use std::collections::BTreeMap;

use super::kv::{KvInput, KvOutput};
use super::register::{RegisterInput, RegisterOutput};
use super::{Operation, Outcome};

/// A line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

fn err(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line: line + 1,
        reason: reason.into(),
    }
}

/// Pairs invocations with completions per process. An invocation with no
/// completion by the end has an unknown outcome.
struct Pairing<I, O> {
    open: BTreeMap<u64, (I, u64)>,
    ops: Vec<Operation<I, O>>,
}

impl<I, O> Pairing<I, O> {
    fn new() -> Self {
        Pairing {
            open: BTreeMap::new(),
            ops: Vec::new(),
        }
    }

    fn invoke(&mut self, line: usize, process: u64, input: I) -> Result<(), ParseError> {
        if self.open.insert(process, (input, line as u64)).is_some() {
            return Err(err(line, format!("process {process} invoked twice")));
        }
        Ok(())
    }

    fn complete(&mut self, line: usize, process: u64, output: Option<O>) -> Result<&I, ParseError> {
        let (input, call) = self
            .open
            .remove(&process)
            .ok_or_else(|| err(line, format!("process {process} completed without invoke")))?;
        self.ops.push(Operation {
            client: process,
            input,
            call,
            outcome: match output {
                Some(output) => Outcome::Returned {
                    output,
                    at: line as u64,
                },
                None => Outcome::Unknown,
            },
        });
        Ok(&self.ops.last().expect("just pushed").input)
    }

    fn finish(mut self) -> Vec<Operation<I, O>> {
        for (process, (input, call)) in std::mem::take(&mut self.open) {
            self.ops.push(Operation::unknown(process, input, call));
        }
        self.ops.sort_by_key(|op| op.call);
        self.ops
    }
}

fn parse_value(line: usize, text: &str) -> Result<Option<i64>, ParseError> {
    if text == "nil" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| err(line, format!("bad value {text:?}")))
}

fn parse_pair(line: usize, text: &str) -> Result<(i64, i64), ParseError> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| err(line, format!("bad cas argument {text:?}")))?;
    let mut parts = inner.split_whitespace();
    let mut next = || -> Result<i64, ParseError> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err(line, format!("bad cas argument {text:?}")))
    };
    Ok((next()?, next()?))
}

/// Parses an etcd register history: lines
/// `INFO  jepsen.util - P  :TYPE  :F  VALUE`.
///
/// `:fail :cas` is a compare-and-set whose comparison failed; `:info` and
/// `:fail :read :timed-out` have unknown outcomes.
pub fn parse_etcd(text: &str) -> Result<Vec<Operation<RegisterInput, RegisterOutput>>, ParseError> {
    let mut pairing = Pairing::new();
    for (n, raw) in text.lines().enumerate() {
        let tokens: Vec<&str> = raw.split_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        if tokens.len() < 7 || tokens[1] != "jepsen.util" {
            return Err(err(n, format!("unrecognized line {raw:?}")));
        }
        let process: u64 = tokens[3]
            .parse()
            .map_err(|_| err(n, format!("bad process {:?}", tokens[3])))?;
        let (kind, f, value) = (tokens[4], tokens[5], tokens[6..].join(" "));
        match (kind, f) {
            (":invoke", ":read") => pairing.invoke(n, process, RegisterInput::Read)?,
            (":invoke", ":write") => {
                let v = parse_value(n, &value)?.ok_or_else(|| err(n, "write of nil"))?;
                pairing.invoke(n, process, RegisterInput::Write(v))?
            }
            (":invoke", ":cas") => {
                let (from, to) = parse_pair(n, &value)?;
                pairing.invoke(n, process, RegisterInput::Cas { from, to })?
            }
            (":ok", ":read") => {
                let v = parse_value(n, &value)?;
                pairing.complete(n, process, Some(RegisterOutput::Read(v)))?;
            }
            (":ok", ":write") => {
                pairing.complete(n, process, Some(RegisterOutput::Write))?;
            }
            (":ok", ":cas") => {
                pairing.complete(n, process, Some(RegisterOutput::Cas(true)))?;
            }
            (":fail", ":cas") => {
                pairing.complete(n, process, Some(RegisterOutput::Cas(false)))?;
            }
            (":fail", ":read") | (":info", _) => {
                pairing.complete(n, process, None)?;
            }
            _ => return Err(err(n, format!("unrecognized operation {kind} {f}"))),
        }
    }
    Ok(pairing.finish())
}

/// Reads the value of `field` (`:field VALUE`) in an EDN-like map line:
/// a quoted string, `nil` (as `None`) or a bare word.
fn edn_field<'a>(raw: &'a str, field: &str) -> Option<Option<&'a str>> {
    let start = raw.find(&format!(":{field} "))? + field.len() + 2;
    let rest = &raw[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(Some(&quoted[..quoted.find('"')?]));
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    let word = rest[..end].trim();
    Some(if word == "nil" { None } else { Some(word) })
}

/// Parses a get/put/append history: lines
/// `{:process P, :type :invoke|:ok|:fail|:info, :f :get|:put|:append, :key "K", :value "V"|nil}`.
/// A get's `:ok` value is what it read (`""` for a missing key).
pub fn parse_kv(text: &str) -> Result<Vec<Operation<KvInput, KvOutput>>, ParseError> {
    let mut pairing = Pairing::new();
    for (n, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let field = |name: &str| {
            edn_field(raw, name).ok_or_else(|| err(n, format!("no :{name} in {raw:?}")))
        };
        let process: u64 = field("process")?
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err(n, "bad :process"))?;
        let kind = field("type")?.unwrap_or("");
        let f = field("f")?.unwrap_or("");
        let key = field("key")?.unwrap_or("").to_string();
        let value = field("value")?.map(str::to_string);
        match kind {
            ":invoke" => {
                let input = match f {
                    ":get" => KvInput::Get { key },
                    ":put" => KvInput::Put {
                        key,
                        value: value.unwrap_or_default(),
                    },
                    ":append" => KvInput::Append {
                        key,
                        value: value.unwrap_or_default(),
                    },
                    _ => return Err(err(n, format!("unknown :f {f}"))),
                };
                pairing.invoke(n, process, input)?;
            }
            ":ok" => {
                let output = if f == ":get" {
                    KvOutput::Value(value.unwrap_or_default())
                } else {
                    KvOutput::Done
                };
                pairing.complete(n, process, Some(output))?;
            }
            ":info" => {
                pairing.complete(n, process, None)?;
            }
            // A definite failure: the operation never took effect.
            ":fail" => {
                pairing
                    .open
                    .remove(&process)
                    .ok_or_else(|| err(n, format!("process {process} failed without invoke")))?;
            }
            _ => return Err(err(n, format!("unknown :type {kind}"))),
        }
    }
    Ok(pairing.finish())
}
