//! The figures of one benchmark run, printed as text or as one JSON object.

use std::fmt::Write as _;

use super::histogram::Histogram;
use super::{BenchArgs, LogDbKind, procstat};

/// One value of the report.
#[derive(Clone, Debug)]
enum Value {
    U(u64),
    F(f64),
    S(String),
    B(bool),
    Obj(Vec<(String, Value)>),
}

/// Ordered figures; later `set`s of a key replace earlier ones.
#[derive(Clone, Debug, Default)]
pub struct Report {
    fields: Vec<(String, Value)>,
}

impl Report {
    /// A report starting with the run's settings.
    pub fn new(args: &BenchArgs, data_fs: &str) -> Report {
        let mode = if args.idle {
            "idle"
        } else if args.restart {
            "restart"
        } else if args.snapshot {
            "snapshot"
        } else {
            "throughput"
        };
        let mut r = Report::default();
        r.set_s("mode", mode);
        r.set_u("replicas", args.replicas);
        r.set_u("shards", args.shards);
        if mode == "throughput" || mode == "restart" {
            r.set_u("clients", args.clients as u64);
            r.set_u("payload_bytes", args.payload as u64);
        }
        if mode == "throughput" {
            r.set_f("read_ratio", args.read_ratio);
            r.set_s(
                "propose_on",
                &format!("{:?}", args.propose_on).to_lowercase(),
            );
        }
        r.set_s("transport", &format!("{:?}", args.transport).to_lowercase());
        r.set_s("logdb", &format!("{:?}", args.logdb).to_lowercase());
        r.set_s("data_fs", data_fs);
        if args.logdb == LogDbKind::Wal {
            r.set_b("fsync_on_disk", !procstat::is_memory_fs(data_fs));
        }
        r.set_u("rtt_ms", args.rtt_ms);
        r.set_u(
            "cpus",
            std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        );
        r
    }

    fn set(&mut self, key: &str, v: Value) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = v,
            None => self.fields.push((key.to_string(), v)),
        }
    }

    pub fn set_u(&mut self, key: &str, v: u64) {
        self.set(key, Value::U(v));
    }

    pub fn set_f(&mut self, key: &str, v: f64) {
        self.set(key, Value::F(v));
    }

    pub fn set_s(&mut self, key: &str, v: &str) {
        self.set(key, Value::S(v.to_string()));
    }

    pub fn set_b(&mut self, key: &str, v: bool) {
        self.set(key, Value::B(v));
    }

    /// Percentiles of `h` (recorded in ns) in microseconds.
    pub fn latency(&mut self, key: &str, h: &Histogram) {
        let us = |ns: u64| ns as f64 / 1000.0;
        self.set(
            key,
            Value::Obj(vec![
                ("count".into(), Value::U(h.count())),
                ("p50".into(), Value::F(us(h.quantile(0.50)))),
                ("p99".into(), Value::F(us(h.quantile(0.99)))),
                ("p999".into(), Value::F(us(h.quantile(0.999)))),
                ("max".into(), Value::F(us(h.max()))),
                ("mean".into(), Value::F(us(h.mean()))),
            ]),
        );
    }

    /// CPU seconds between two readings over `secs` of wall time.
    pub fn cpu(&mut self, before: Option<(f64, f64)>, after: Option<(f64, f64)>, secs: f64) {
        if let (Some(b), Some(a)) = (before, after) {
            let (user, sys) = (a.0 - b.0, a.1 - b.1);
            self.set_f("cpu_s", user + sys);
            self.set_f("cpu_user_s", user);
            self.set_f("cpu_sys_s", sys);
            self.set_f("cpu_cores_busy", (user + sys) / secs.max(1e-9));
        }
    }

    /// Resident memory and threads of the process now.
    pub fn rss(&mut self) {
        if let Some(b) = procstat::rss_bytes() {
            self.set_u("rss_bytes", b);
        }
        if let Some(n) = procstat::threads() {
            self.set_u("threads", n);
        }
    }

    /// Errors by kind.
    pub fn errors(&mut self, kinds: &[(String, u64)]) {
        if !kinds.is_empty() {
            let obj = kinds
                .iter()
                .map(|(k, n)| (k.clone(), Value::U(*n)))
                .collect();
            self.set("error_kinds", Value::Obj(obj));
        }
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let mut out = String::new();
        write_obj(&mut out, &self.fields);
        out
    }

    /// Lines of `key: value` for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            match v {
                Value::Obj(fields) => {
                    let parts: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| format!("{k} {}", text_value(v)))
                        .collect();
                    let _ = writeln!(out, "{k:<22} {}", parts.join("  "));
                }
                v => {
                    let _ = writeln!(out, "{k:<22} {}", text_value(v));
                }
            }
        }
        out
    }
}

fn text_value(v: &Value) -> String {
    match v {
        Value::U(n) => group_digits(*n),
        Value::F(f) if f.abs() >= 1000.0 => group_digits(f.round() as u64),
        Value::F(f) => format!("{f:.3}"),
        Value::S(s) => s.clone(),
        Value::B(b) => b.to_string(),
        Value::Obj(_) => String::from("{..}"),
    }
}

/// 1234567 -> "1,234,567".
fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_obj(out: &mut String, fields: &[(String, Value)]) {
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k);
        out.push(':');
        match v {
            Value::U(n) => {
                let _ = write!(out, "{n}");
            }
            Value::F(f) if f.is_finite() => {
                let _ = write!(out, "{}", (f * 1000.0).round() / 1000.0);
            }
            Value::F(_) => out.push_str("null"),
            Value::S(s) => write_str(out, s),
            Value::B(b) => {
                let _ = write!(out, "{b}");
            }
            Value::Obj(fields) => write_obj(out, fields),
        }
    }
    out.push('}');
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nests() {
        let mut r = Report::default();
        r.set_s("a", "x\"y\\\n\u{1}");
        r.set_u("n", 3);
        r.set_f("f", 0.5);
        r.set_f("nan", f64::NAN);
        r.set_b("b", true);
        r.latency("lat", &Histogram::default());
        r.set_u("n", 4);
        assert_eq!(
            r.json(),
            r#"{"a":"x\"y\\\n\u0001","n":4,"f":0.5,"nan":null,"b":true,"lat":{"count":0,"p50":0,"p99":0,"p999":0,"max":0,"mean":0}}"#
        );
        assert!(r.text().contains("n                      4"));
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
