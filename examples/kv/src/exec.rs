//! The commands as the state machine executes them: deterministic (time
//! is the shard's replicated clock in [`Ctx`]), with Redis's replies and
//! errors. The server has checked each command's name and arity; every
//! other check (syntax, types) is made here, so a command in the log always
//! gets the reply Redis would give.
//!
//! Besides client commands, a few internal forms exist (never accepted from
//! a client, whose commands are checked against the command table first):
//! `SCAN pos count pattern type` (one shard's part of a SCAN),
//! `KEYS pattern`, `RANDOMKEY seed`, `MGET key` (one key, an array reply),
//! [`EXEC_CMD`] (a transaction) and `\0DIGEST key` (what WATCH compares).

use std::collections::BTreeMap;

use crate::resp::Reply;
use crate::sm::{Ctx, EXEC_CMD, Exec, KvStateMachine, NeedsClock, Value};

/// Redis's reply to an operation on the wrong type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// Name of the internal command returning a key's digest (for WATCH).
pub const DIGEST_CMD: &[u8] = b"\x00DIGEST";
/// Name of the internal first command of a transaction with WATCHed keys:
/// its arguments are key, digest pairs; a mismatch aborts the transaction.
pub const WATCHED_CMD: &[u8] = b"\x00WATCHED";

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrongtype() -> Reply {
    Reply::Error(WRONGTYPE.into())
}

fn not_int() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn arity(name: &[u8]) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name).to_ascii_lowercase()
    ))
}

fn too_large(max: u64) -> Reply {
    Reply::err(format!(
        "string exceeds maximum allowed size (proto-max-bulk-len: {max} bytes)"
    ))
}

/// Parses an integer as Redis does (`string2ll`): an optional `-`, digits,
/// no leading zero, no sign on zero, no spaces.
pub fn parse_int(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits[0] == b'0' && (digits.len() > 1 || b[0] == b'-'))
    {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses a float as Redis does for INCRBYFLOAT (no spaces, not NaN).
pub fn parse_float(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// Formats a float as INCRBYFLOAT's reply (shortest round trip, no exponent).
pub fn format_float(v: f64) -> String {
    let s = format!("{v}");
    if s == "-0" { "0".into() } else { s }
}

/// Redis's glob match (`*`, `?`, `[...]` with ranges and `^`, `\` escapes).
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    fn go(p: &[u8], s: &[u8], depth: usize) -> bool {
        if depth > 64 {
            return false;
        }
        let (mut pi, mut si) = (0, 0);
        while pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi + 1 < p.len() && p[pi + 1] == b'*' {
                        pi += 1;
                    }
                    if pi + 1 == p.len() {
                        return true;
                    }
                    return (si..=s.len()).any(|k| go(&p[pi + 1..], &s[k..], depth + 1));
                }
                b'?' => {
                    if si >= s.len() {
                        return false;
                    }
                    si += 1;
                }
                b'[' => {
                    if si >= s.len() {
                        return false;
                    }
                    pi += 1;
                    let not = pi < p.len() && p[pi] == b'^';
                    if not {
                        pi += 1;
                    }
                    let mut matched = false;
                    while pi < p.len() && p[pi] != b']' {
                        if p[pi] == b'\\' && pi + 1 < p.len() {
                            pi += 1;
                            matched |= p[pi] == s[si];
                        } else if pi + 2 < p.len() && p[pi + 1] == b'-' {
                            let (a, b) = if p[pi] <= p[pi + 2] {
                                (p[pi], p[pi + 2])
                            } else {
                                (p[pi + 2], p[pi])
                            };
                            matched |= (a..=b).contains(&s[si]);
                            pi += 2;
                        } else {
                            matched |= p[pi] == s[si];
                        }
                        pi += 1;
                    }
                    if matched == not {
                        return false;
                    }
                    si += 1;
                }
                b'\\' if pi + 1 < p.len() => {
                    pi += 1;
                    if si >= s.len() || p[pi] != s[si] {
                        return false;
                    }
                    si += 1;
                }
                c => {
                    if si >= s.len() || c != s[si] {
                        return false;
                    }
                    si += 1;
                }
            }
            pi += 1;
        }
        si == s.len()
    }
    go(pattern, s, 0)
}

/// Whether a command only reads (it then runs on a lookup too).
pub fn is_read(cmd: &[Vec<u8>]) -> bool {
    let Some(name) = cmd.first() else {
        return true;
    };
    if name.as_slice() == EXEC_CMD {
        return split_exec(cmd).is_some_and(|subs| subs.iter().all(|c| is_read(c)));
    }
    if name.as_slice() == DIGEST_CMD {
        return true;
    }
    matches!(
        upper(name).as_str(),
        "GET"
            | "PING"
            | "ECHO"
            | "MGET"
            | "STRLEN"
            | "EXISTS"
            | "TOUCH"
            | "TYPE"
            | "TTL"
            | "PTTL"
            | "EXPIRETIME"
            | "PEXPIRETIME"
            | "KEYS"
            | "SCAN"
            | "RANDOMKEY"
            | "DBSIZE"
            | "GETRANGE"
            | "SUBSTR"
            | "HGET"
            | "HMGET"
            | "HGETALL"
            | "HLEN"
            | "HEXISTS"
            | "HKEYS"
            | "HVALS"
            | "HSTRLEN"
            | "HSCAN"
    )
}

/// Encodes a transaction as one internal command.
pub fn encode_exec(cmds: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    let mut out = vec![EXEC_CMD.to_vec()];
    for c in cmds {
        out.push(c.len().to_string().into_bytes());
        out.extend(c.iter().cloned());
    }
    out
}

/// The commands of a transaction (bounded by its arguments).
pub fn split_exec(cmd: &[Vec<u8>]) -> Option<Vec<&[Vec<u8>]>> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < cmd.len() {
        let n: usize = std::str::from_utf8(&cmd[i]).ok()?.parse().ok()?;
        let end = i.checked_add(1)?.checked_add(n)?;
        if n == 0 || end > cmd.len() {
            return None;
        }
        out.push(&cmd[i + 1..end]);
        i = end;
    }
    Some(out)
}

/// A key's digest for WATCH: its type, value and expiry (0 when absent).
fn digest(sm: &KvStateMachine, ctx: &Ctx, key: &[u8]) -> Result<u64, NeedsClock> {
    let Some(e) = sm.get(ctx, key)? else {
        return Ok(0);
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h = (h ^ *x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(&e.expire_at.unwrap_or(0).to_le_bytes());
    match &e.value {
        Value::Str(v) => {
            eat(b"s");
            eat(v);
        }
        Value::Hash(m) => {
            eat(b"h");
            for (f, v) in m {
                eat(&(f.len() as u64).to_le_bytes());
                eat(f);
                eat(&(v.len() as u64).to_le_bytes());
                eat(v);
            }
        }
    }
    Ok(h | 1)
}

/// A hash value.
type Hash = BTreeMap<Vec<u8>, Vec<u8>>;

fn bulk_or_nil(v: Option<&Vec<u8>>) -> Reply {
    v.map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
}

/// Checks a command's name and argument count (the server did; a command
/// in the log is never trusted): the error reply when they are wrong.
fn check_arity(cmd: &[Vec<u8>]) -> Option<Reply> {
    let Some(name) = cmd.first() else {
        return Some(Reply::err("empty command"));
    };
    if [EXEC_CMD, DIGEST_CMD, WATCHED_CMD].contains(&name.as_slice()) {
        return None;
    }
    if name.eq_ignore_ascii_case(b"RANDOMKEY") {
        return (cmd.len() > 2).then(|| arity(name));
    }
    match crate::commands::lookup(name) {
        Some(i) if i.arity_ok(cmd.len()) => None,
        Some(_) => Some(arity(name)),
        None => Some(Reply::err(format!(
            "unknown command '{}'",
            String::from_utf8_lossy(name)
                .chars()
                .take(64)
                .collect::<String>()
        ))),
    }
}

/// Runs a read command.
pub fn read(sm: &KvStateMachine, ctx: &Ctx, cmd: &[Vec<u8>]) -> Exec {
    if let Some(r) = check_arity(cmd) {
        return Ok(r);
    }
    let Some(name) = cmd.first() else {
        return Ok(Reply::err("empty command"));
    };
    let argc = cmd.len();
    if name.as_slice() == EXEC_CMD {
        let Some(subs) = split_exec(cmd) else {
            return Ok(Reply::err("bad transaction"));
        };
        let mut out = Vec::with_capacity(subs.len());
        for c in subs {
            if c[0].as_slice() == WATCHED_CMD {
                if !watched_ok(sm, ctx, c)? {
                    return Ok(Reply::NilArray);
                }
                continue;
            }
            out.push(read(sm, ctx, c)?);
        }
        return Ok(Reply::Array(out));
    }
    if name.as_slice() == DIGEST_CMD {
        let mut out = Vec::new();
        for k in &cmd[1..] {
            out.push(Reply::Bulk(digest(sm, ctx, k)?.to_string().into_bytes()));
        }
        return Ok(Reply::Array(out));
    }
    let key = cmd.get(1).map_or(&[][..], |k| k.as_slice());
    let string = |key: &[u8]| -> Result<Result<Option<&Vec<u8>>, Reply>, NeedsClock> {
        Ok(match sm.get(ctx, key)? {
            None => Ok(None),
            Some(e) => match &e.value {
                Value::Str(v) => Ok(Some(v)),
                _ => Err(wrongtype()),
            },
        })
    };
    let hash = |key: &[u8]| -> Result<Result<Option<&Hash>, Reply>, NeedsClock> {
        Ok(match sm.get(ctx, key)? {
            None => Ok(None),
            Some(e) => match &e.value {
                Value::Hash(m) => Ok(Some(m)),
                _ => Err(wrongtype()),
            },
        })
    };
    macro_rules! tryr {
        ($e:expr) => {
            match $e? {
                Ok(v) => v,
                Err(r) => return Ok(r),
            }
        };
    }
    Ok(match upper(name).as_str() {
        "PING" if argc == 1 => Reply::Simple("PONG".into()),
        "PING" | "ECHO" => Reply::Bulk(key.to_vec()),
        "GET" => bulk_or_nil(tryr!(string(key))),
        "MGET" => {
            let mut out = Vec::new();
            for k in &cmd[1..] {
                out.push(match string(k)? {
                    Ok(v) => bulk_or_nil(v),
                    Err(_) => Reply::Nil,
                });
            }
            Reply::Array(out)
        }
        "STRLEN" => Reply::Int(tryr!(string(key)).map_or(0, Vec::len) as i64),
        "GETRANGE" | "SUBSTR" => {
            let (Some(start), Some(end)) = (parse_int(&cmd[2]), parse_int(&cmd[3])) else {
                return Ok(not_int());
            };
            let v = tryr!(string(key)).map_or(&[][..], |v| v.as_slice());
            Reply::Bulk(getrange(v, start, end).to_vec())
        }
        "EXISTS" | "TOUCH" => {
            let mut n = 0;
            for k in &cmd[1..] {
                n += sm.get(ctx, k)?.is_some() as i64;
            }
            Reply::Int(n)
        }
        "TYPE" => Reply::Simple(
            match sm.get(ctx, key)?.map(|e| &e.value) {
                None => "none",
                Some(Value::Str(_)) => "string",
                Some(Value::Hash(_)) => "hash",
            }
            .into(),
        ),
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
            let n = match sm.get(ctx, key)? {
                None => -2,
                Some(e) => match e.expire_at {
                    None => -1,
                    Some(at) => {
                        let left = at.saturating_sub(ctx.now) as i64;
                        match upper(name).as_str() {
                            "TTL" => (left + 500) / 1000,
                            "PTTL" => left,
                            "EXPIRETIME" => (at / 1000) as i64,
                            _ => at as i64,
                        }
                    }
                },
            };
            Reply::Int(n)
        }
        "DBSIZE" => {
            if ctx.probe > ctx.now && sm.expiring_between(ctx.now, ctx.probe) {
                return Err(NeedsClock);
            }
            Reply::Int(sm.len() as i64)
        }
        "KEYS" => {
            let mut out = Vec::new();
            for ((_, k), e) in sm.iter_from(0) {
                if KvStateMachine::live_entry(ctx, e)?.is_some() && glob_match(key, k) {
                    out.push(Reply::Bulk(k.clone()));
                }
            }
            Reply::Array(out)
        }
        "SCAN" if argc == 5 => {
            // SCAN pos count pattern type: pos 0 starts, else continues at
            // hash pos - 1; the next pos is 0 when the shard is done.
            let pos = parse_int(&cmd[1]).unwrap_or(0).max(0) as u64;
            let count = parse_int(&cmd[2]).unwrap_or(10).clamp(1, 1 << 20) as usize;
            let (pattern, ty) = (&cmd[3], upper(&cmd[4]));
            let mut out = Vec::new();
            let mut last_h = None;
            let mut next = 0;
            for (visited, ((h, k), e)) in sm.iter_from(pos.saturating_sub(1)).enumerate() {
                if visited >= count && last_h != Some(*h) {
                    next = h + 1;
                    break;
                }
                last_h = Some(*h);
                let Some(e) = KvStateMachine::live_entry(ctx, e)? else {
                    continue;
                };
                let t = match e.value {
                    Value::Str(_) => "STRING",
                    Value::Hash(_) => "HASH",
                };
                if (pattern.is_empty() || glob_match(pattern, k)) && (ty.is_empty() || ty == t) {
                    out.push(Reply::Bulk(k.clone()));
                }
            }
            Reply::Array(vec![
                Reply::Bulk(next.to_string().into_bytes()),
                Reply::Array(out),
            ])
        }
        "RANDOMKEY" => {
            let seed = parse_int(key).unwrap_or(0) as u64 % (1 << 48);
            let mut found = None;
            for ((_, k), e) in sm.iter_from(seed).chain(sm.iter_from(0)) {
                if KvStateMachine::live_entry(ctx, e)?.is_some() {
                    found = Some(k.clone());
                    break;
                }
            }
            found.map_or(Reply::Nil, Reply::Bulk)
        }
        "HGET" => bulk_or_nil(tryr!(hash(key)).and_then(|m| m.get(&cmd[2]))),
        "HMGET" => {
            let m = tryr!(hash(key));
            Reply::Array(
                cmd[2..]
                    .iter()
                    .map(|f| bulk_or_nil(m.and_then(|m| m.get(f))))
                    .collect(),
            )
        }
        "HGETALL" => Reply::Map(
            tryr!(hash(key))
                .into_iter()
                .flatten()
                .map(|(f, v)| (Reply::Bulk(f.clone()), Reply::Bulk(v.clone())))
                .collect(),
        ),
        "HKEYS" | "HVALS" => {
            let m = tryr!(hash(key));
            let which = upper(name);
            let mut out = Vec::new();
            for (f, v) in m.into_iter().flatten() {
                if which != "HVALS" {
                    out.push(Reply::Bulk(f.clone()));
                }
                if which != "HKEYS" {
                    out.push(Reply::Bulk(v.clone()));
                }
            }
            Reply::Array(out)
        }
        "HLEN" => Reply::Int(tryr!(hash(key)).map_or(0, BTreeMap::len) as i64),
        "HEXISTS" => Reply::Int(tryr!(hash(key)).is_some_and(|m| m.contains_key(&cmd[2])) as i64),
        "HSTRLEN" => Reply::Int(
            tryr!(hash(key))
                .and_then(|m| m.get(&cmd[2]))
                .map_or(0, Vec::len) as i64,
        ),
        "HSCAN" => {
            let Some(cursor) = std::str::from_utf8(&cmd[2])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return Ok(Reply::err("invalid cursor"));
            };
            let (mut pattern, mut count, mut novalues) = (None, 10usize, false);
            let mut i = 3;
            while i < argc {
                match upper(&cmd[i]).as_str() {
                    "MATCH" if i + 1 < argc => {
                        pattern = Some(&cmd[i + 1]);
                        i += 2;
                    }
                    "COUNT" if i + 1 < argc => {
                        match parse_int(&cmd[i + 1]) {
                            Some(n) if n >= 1 => count = n.min(1 << 20) as usize,
                            Some(_) => return Ok(syntax()),
                            None => return Ok(not_int()),
                        }
                        i += 2;
                    }
                    "NOVALUES" => {
                        novalues = true;
                        i += 1;
                    }
                    _ => return Ok(syntax()),
                }
            }
            let m = tryr!(hash(key));
            let len = m.map_or(0, BTreeMap::len);
            let start = (cursor as usize).min(len);
            let end = start.saturating_add(count).min(len);
            let mut out = Vec::new();
            for (f, v) in m.into_iter().flatten().skip(start).take(end - start) {
                if pattern.is_none_or(|p| glob_match(p, f)) {
                    out.push(Reply::Bulk(f.clone()));
                    if !novalues {
                        out.push(Reply::Bulk(v.clone()));
                    }
                }
            }
            let next = if end >= len { 0 } else { end };
            Reply::Array(vec![
                Reply::Bulk(next.to_string().into_bytes()),
                Reply::Array(out),
            ])
        }
        _ => Reply::err(format!(
            "unknown command '{}'",
            String::from_utf8_lossy(name)
                .chars()
                .take(64)
                .collect::<String>()
        )),
    })
}

fn watched_ok(sm: &KvStateMachine, ctx: &Ctx, c: &[Vec<u8>]) -> Result<bool, NeedsClock> {
    for pair in c[1..].chunks(2) {
        let want = pair
            .get(1)
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok());
        if Some(digest(sm, ctx, &pair[0])?) != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// GETRANGE's slice of `v`, with Redis's index rules.
fn getrange(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    if (start < 0 && end < 0 && start > end) || len == 0 {
        return &[];
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0).min(len - 1);
    if s > e {
        return &[];
    }
    &v[s as usize..=e as usize]
}

/// An expiry option of SET / GETEX.
enum Expiry {
    /// Not given: SET clears the expiry, GETEX leaves it.
    None,
    /// KEEPTTL.
    Keep,
    /// PERSIST (GETEX).
    Persist,
    /// At this time (ms).
    At(u64),
}

/// Parses EX/PX/EXAT/PXAT `value` into an absolute time; the error reply
/// names `cmd`.
fn expiry_at(ctx: &Ctx, opt: &str, value: &[u8], cmd: &str) -> Result<u64, Reply> {
    let invalid = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    let n = parse_int(value).ok_or_else(not_int)?;
    if n <= 0 {
        return Err(invalid());
    }
    let n = n as u64;
    let at = match opt {
        "EX" => n.checked_mul(1000).and_then(|ms| ms.checked_add(ctx.now)),
        "PX" => n.checked_add(ctx.now),
        "EXAT" => n.checked_mul(1000),
        _ => Some(n),
    };
    at.filter(|&a| a <= i64::MAX as u64).ok_or_else(invalid)
}

/// Parses SET's or GETEX's options from `args`.
fn parse_expiry_opts(
    ctx: &Ctx,
    args: &[Vec<u8>],
    cmd: &str,
    set: bool,
) -> Result<(Expiry, bool, bool, bool), Reply> {
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut exp = Expiry::None;
    let mut i = 0;
    while i < args.len() {
        let o = upper(&args[i]);
        match o.as_str() {
            "NX" if set && !xx => nx = true,
            "XX" if set && !nx => xx = true,
            "GET" if set => get = true,
            "KEEPTTL" if set && matches!(exp, Expiry::None) => exp = Expiry::Keep,
            "PERSIST" if !set && matches!(exp, Expiry::None) => exp = Expiry::Persist,
            "EX" | "PX" | "EXAT" | "PXAT" if matches!(exp, Expiry::None) && i + 1 < args.len() => {
                exp = Expiry::At(expiry_at(ctx, &o, &args[i + 1], cmd)?);
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok((exp, nx, xx, get))
}

/// Runs a command in the log (writes, and reads at their place).
pub fn exec(sm: &mut KvStateMachine, ctx: &Ctx, cmd: &[Vec<u8>]) -> Reply {
    if is_read(cmd) {
        return read(sm, ctx, cmd).unwrap_or_else(|_| Reply::err("internal: clock"));
    }
    if let Some(r) = check_arity(cmd) {
        return r;
    }
    let name = &cmd[0];
    if name.as_slice() == EXEC_CMD {
        let Some(subs) = split_exec(cmd) else {
            return Reply::err("bad transaction");
        };
        let mut out = Vec::with_capacity(subs.len());
        for c in subs {
            if c[0].as_slice() == WATCHED_CMD {
                if !watched_ok(sm, ctx, c).unwrap_or(false) {
                    return Reply::NilArray;
                }
                continue;
            }
            out.push(exec(sm, ctx, c));
        }
        return Reply::Array(out);
    }
    let argc = cmd.len();
    let key = cmd.get(1).map_or(&[][..], |k| k.as_slice());
    let uname = upper(name);
    // The live string of a key for a write: Ok(None) absent, Err wrong type.
    macro_rules! string_of {
        ($key:expr) => {
            match sm.get_mut(ctx, $key) {
                None => None,
                Some(e) => match &e.value {
                    Value::Str(v) => Some((v.clone(), e.expire_at)),
                    _ => return wrongtype(),
                },
            }
        };
    }
    match uname.as_str() {
        "SET" => {
            let (exp, nx, xx, get) = match parse_expiry_opts(ctx, &cmd[3..], "set", true) {
                Ok(x) => x,
                Err(r) => return r,
            };
            let old = if get {
                string_of!(key)
            } else {
                sm.get_mut(ctx, key).map(|e| (Vec::new(), e.expire_at))
            };
            let exists = old.is_some();
            let reply_old = || {
                if get {
                    bulk_or_nil(old.as_ref().map(|o| &o.0))
                } else {
                    Reply::Nil
                }
            };
            if (nx && exists) || (xx && !exists) {
                return reply_old();
            }
            let at = match exp {
                Expiry::Keep => old.as_ref().and_then(|o| o.1),
                Expiry::At(at) => Some(at),
                _ => None,
            };
            store(sm, ctx, key, cmd[2].clone(), at);
            if get { reply_old() } else { Reply::ok() }
        }
        "SETNX" => {
            if sm.get_mut(ctx, key).is_some() {
                return Reply::Int(0);
            }
            sm.insert(key, Value::Str(cmd[2].clone()), None);
            Reply::Int(1)
        }
        "SETEX" | "PSETEX" => {
            let opt = if uname == "SETEX" { "EX" } else { "PX" };
            match expiry_at(ctx, opt, &cmd[2], &uname.to_ascii_lowercase()) {
                Ok(at) => {
                    store(sm, ctx, key, cmd[3].clone(), Some(at));
                    Reply::ok()
                }
                Err(r) => r,
            }
        }
        "GETSET" => {
            let old = string_of!(key);
            sm.insert(key, Value::Str(cmd[2].clone()), None);
            bulk_or_nil(old.as_ref().map(|o| &o.0))
        }
        "GETDEL" => {
            let old = string_of!(key);
            if old.is_some() {
                sm.remove(key);
            }
            bulk_or_nil(old.as_ref().map(|o| &o.0))
        }
        "GETEX" => {
            let (exp, ..) = match parse_expiry_opts(ctx, &cmd[2..], "getex", false) {
                Ok(x) => x,
                Err(r) => return r,
            };
            let Some((v, _)) = string_of!(key) else {
                return Reply::Nil;
            };
            match exp {
                Expiry::Persist => sm.set_expiry(key, None),
                Expiry::At(at) if at <= ctx.now => {
                    sm.remove(key);
                }
                Expiry::At(at) => sm.set_expiry(key, Some(at)),
                _ => {}
            }
            Reply::Bulk(v)
        }
        "MSET" | "MSETNX" => {
            if argc < 3 || argc.is_multiple_of(2) {
                return arity(name);
            }
            if uname == "MSETNX" && cmd[1..].chunks(2).any(|p| sm.get_mut(ctx, &p[0]).is_some()) {
                return Reply::Int(0);
            }
            for p in cmd[1..].chunks(2) {
                sm.insert(&p[0], Value::Str(p[1].clone()), None);
            }
            if uname == "MSET" {
                Reply::ok()
            } else {
                Reply::Int(1)
            }
        }
        "APPEND" => {
            let cur = match sm.get_mut(ctx, key).map(|e| &e.value) {
                None => 0,
                Some(Value::Str(v)) => v.len() as u64,
                Some(_) => return wrongtype(),
            };
            if cur.saturating_add(cmd[2].len() as u64) > ctx.max_len {
                return too_large(ctx.max_len);
            }
            let Some(v) = str_mut(sm, ctx, key) else {
                return Reply::err("internal error");
            };
            v.extend_from_slice(&cmd[2]);
            Reply::Int(v.len() as i64)
        }
        "SETRANGE" => {
            let Some(offset) = parse_int(&cmd[2]) else {
                return not_int();
            };
            if offset < 0 {
                return Reply::err("offset is out of range");
            }
            let cur = match sm.get_mut(ctx, key).map(|e| &e.value) {
                None => None,
                Some(Value::Str(v)) => Some(v.len()),
                Some(_) => return wrongtype(),
            };
            let value = &cmd[3];
            if value.is_empty() {
                return Reply::Int(cur.unwrap_or(0) as i64);
            }
            let end = (offset as u64).saturating_add(value.len() as u64);
            if end > ctx.max_len {
                return too_large(ctx.max_len);
            }
            let end = end as usize;
            let Some(v) = str_mut(sm, ctx, key) else {
                return Reply::err("internal error");
            };
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(value);
            Reply::Int(v.len() as i64)
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let d = if argc == 2 {
                Some(1)
            } else {
                parse_int(&cmd[2])
            };
            let Some(d) = d else { return not_int() };
            let delta = if uname.starts_with("INCR") {
                Some(d)
            } else {
                d.checked_neg()
            };
            let Some(delta) = delta else {
                return Reply::err("decrement would overflow");
            };
            let (v, at) = string_of!(key).unwrap_or_else(|| (b"0".to_vec(), None));
            let Some(cur) = parse_int(&v) else {
                return not_int();
            };
            let Some(next) = cur.checked_add(delta) else {
                return Reply::err("increment or decrement would overflow");
            };
            sm.insert(key, Value::Str(next.to_string().into_bytes()), at);
            Reply::Int(next)
        }
        "INCRBYFLOAT" => {
            let Some(d) = parse_float(&cmd[2]) else {
                return Reply::err("value is not a valid float");
            };
            let (v, at) = string_of!(key).unwrap_or_else(|| (b"0".to_vec(), None));
            let Some(cur) = parse_float(&v) else {
                return Reply::err("value is not a valid float");
            };
            let next = cur + d;
            if !next.is_finite() {
                return Reply::err("increment would produce NaN or Infinity");
            }
            let s = format_float(next).into_bytes();
            sm.insert(key, Value::Str(s.clone()), at);
            Reply::Bulk(s)
        }
        "DEL" | "UNLINK" => {
            let mut n = 0;
            for k in &cmd[1..] {
                if sm.get_mut(ctx, k).is_some() {
                    sm.remove(k);
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => expire(sm, ctx, cmd, &uname),
        "PERSIST" => match sm.get_mut(ctx, key) {
            Some(e) if e.expire_at.is_some() => {
                sm.set_expiry(key, None);
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        "RENAME" | "RENAMENX" => {
            let nx = uname == "RENAMENX";
            let Some(e) = sm.get_mut(ctx, key).cloned() else {
                return Reply::err("no such key");
            };
            let dst = &cmd[2];
            if dst == key {
                return if nx { Reply::Int(0) } else { Reply::ok() };
            }
            if nx && sm.get_mut(ctx, dst).is_some() {
                return Reply::Int(0);
            }
            sm.remove(key);
            sm.insert(dst, e.value, e.expire_at);
            if nx { Reply::Int(1) } else { Reply::ok() }
        }
        "FLUSHALL" | "FLUSHDB" => {
            if argc > 2 || (argc == 2 && !matches!(upper(&cmd[1]).as_str(), "ASYNC" | "SYNC")) {
                return syntax();
            }
            sm.clear();
            Reply::ok()
        }
        "HSET" | "HMSET" | "HSETNX" => {
            if argc < 4 || !argc.is_multiple_of(2) || (uname == "HSETNX" && argc != 4) {
                return arity(name);
            }
            let m = match hash_mut(sm, ctx, key) {
                Ok(m) => m,
                Err(r) => return r,
            };
            if uname == "HSETNX" && m.contains_key(&cmd[2]) {
                return Reply::Int(0);
            }
            let mut added = 0;
            for p in cmd[2..].chunks(2) {
                added += m.insert(p[0].clone(), p[1].clone()).is_none() as i64;
            }
            match uname.as_str() {
                "HMSET" => Reply::ok(),
                "HSETNX" => Reply::Int(1),
                _ => Reply::Int(added),
            }
        }
        "HDEL" => {
            let Some(e) = sm.get_mut(ctx, key) else {
                return Reply::Int(0);
            };
            let Value::Hash(m) = &mut e.value else {
                return wrongtype();
            };
            let mut n = 0;
            for f in &cmd[2..] {
                n += m.remove(f).is_some() as i64;
            }
            if m.is_empty() {
                sm.remove(key);
            }
            Reply::Int(n)
        }
        "HINCRBY" | "HINCRBYFLOAT" => {
            let float = uname == "HINCRBYFLOAT";
            let (fd, id) = (parse_float(&cmd[3]), parse_int(&cmd[3]));
            if float && fd.is_none() {
                return Reply::err("value is not a valid float");
            }
            if !float && id.is_none() {
                return not_int();
            }
            match sm.get_mut(ctx, key).map(|e| &e.value) {
                Some(Value::Hash(_)) | None => {}
                Some(_) => return wrongtype(),
            }
            let m = match hash_mut(sm, ctx, key) {
                Ok(m) => m,
                Err(r) => return r,
            };
            let cur = m.get(&cmd[2]).map_or(&b"0"[..], |v| v.as_slice());
            let reply = if let Some(d) = fd.filter(|_| float) {
                let Some(c) = parse_float(cur) else {
                    return Reply::err("hash value is not a float");
                };
                let n = c + d;
                if !n.is_finite() {
                    return Reply::err("increment would produce NaN or Infinity");
                }
                Reply::Bulk(format_float(n).into_bytes())
            } else {
                let Some(c) = parse_int(cur) else {
                    return Reply::err("hash value is not an integer");
                };
                let Some(n) = c.checked_add(id.unwrap_or(0)) else {
                    return Reply::err("increment or decrement would overflow");
                };
                Reply::Int(n)
            };
            let v = match &reply {
                Reply::Bulk(b) => b.clone(),
                Reply::Int(n) => n.to_string().into_bytes(),
                _ => Vec::new(),
            };
            m.insert(cmd[2].clone(), v);
            reply
        }
        _ => Reply::err(format!(
            "unknown command '{}'",
            String::from_utf8_lossy(name)
                .chars()
                .take(64)
                .collect::<String>()
        )),
    }
}

/// The hash of `key` for a write, created empty when absent (callers add
/// a field, so no empty hash stays).
fn hash_mut<'a>(
    sm: &'a mut KvStateMachine,
    ctx: &Ctx,
    key: &[u8],
) -> Result<&'a mut BTreeMap<Vec<u8>, Vec<u8>>, Reply> {
    if sm.get_mut(ctx, key).is_none() {
        sm.insert(key, Value::Hash(BTreeMap::new()), None);
    }
    match sm.get_mut(ctx, key).map(|e| &mut e.value) {
        Some(Value::Hash(m)) => Ok(m),
        _ => Err(wrongtype()),
    }
}

/// The string of `key` for a write (the caller checked its type), created
/// empty when absent; its expiry is kept.
fn str_mut<'a>(sm: &'a mut KvStateMachine, ctx: &Ctx, key: &[u8]) -> Option<&'a mut Vec<u8>> {
    if !matches!(sm.get_mut(ctx, key).map(|e| &e.value), Some(Value::Str(_))) {
        sm.insert(key, Value::Str(Vec::new()), None);
    }
    match sm.get_mut(ctx, key).map(|e| &mut e.value) {
        Some(Value::Str(v)) => Some(v),
        _ => None,
    }
}

/// SET's store: a past expiry deletes the key (as Redis does).
fn store(sm: &mut KvStateMachine, ctx: &Ctx, key: &[u8], value: Vec<u8>, at: Option<u64>) {
    if at.is_some_and(|a| a <= ctx.now) {
        sm.remove(key);
    } else {
        sm.insert(key, Value::Str(value), at);
    }
}

fn expire(sm: &mut KvStateMachine, ctx: &Ctx, cmd: &[Vec<u8>], uname: &str) -> Reply {
    let key = &cmd[1];
    let Some(n) = parse_int(&cmd[2]) else {
        return not_int();
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &cmd[3..] {
        match upper(o).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => {
                return Reply::err(format!("Unsupported option {}", String::from_utf8_lossy(o)));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("GT and LT options at the same time are not compatible");
    }
    let invalid = || {
        Reply::err(format!(
            "invalid expire time in '{}' command",
            uname.to_ascii_lowercase()
        ))
    };
    let at: i128 = match uname {
        "EXPIRE" => ctx.now as i128 + n as i128 * 1000,
        "PEXPIRE" => ctx.now as i128 + n as i128,
        "EXPIREAT" => n as i128 * 1000,
        _ => n as i128,
    };
    if at > i64::MAX as i128 {
        return invalid();
    }
    let Some(e) = sm.get_mut(ctx, key) else {
        return Reply::Int(0);
    };
    let cur = e.expire_at;
    let ok = match (nx, xx, gt, lt) {
        (true, ..) => cur.is_none(),
        (_, true, ..) if cur.is_none() => false,
        (_, _, true, _) => cur.is_some_and(|c| at > c as i128),
        (_, _, _, true) => cur.is_none_or(|c| at < c as i128),
        _ => true,
    };
    if !ok {
        return Reply::Int(0);
    }
    if at <= ctx.now as i128 {
        sm.remove(key);
    } else {
        sm.set_expiry(key, Some(at as u64));
    }
    Reply::Int(1)
}
