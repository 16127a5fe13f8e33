//! RESP2: parsing client requests (arrays of bulk strings, or inline
//! commands) and encoding replies. The parser takes untrusted bytes: every
//! length is bounded before anything is allocated and nothing panics.

/// Limits of one request.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Largest bulk string (a key or value): Redis's `proto-max-bulk-len`.
    pub max_bulk_bytes: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline_bytes: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_bytes: 512 << 20,
            max_args: 1 << 20,
            max_inline_bytes: 64 << 10,
        }
    }
}

/// Why a request could not be parsed. The connection is closed after it
/// (as Redis does on a protocol error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP.
    Protocol(String),
    /// A length over the limits (the message names the limit).
    TooLarge(String),
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Protocol(m) => write!(f, "Protocol error: {m}"),
            RespError::TooLarge(m) => write!(f, "Protocol error: {m}"),
        }
    }
}

fn find_crlf(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, RespError> {
    let end = buf.len().min(from.saturating_add(max + 2));
    for i in from..end.saturating_sub(1) {
        if buf[i] == b'\r' && buf[i + 1] == b'\n' {
            return Ok(Some(i));
        }
    }
    if buf.len().saturating_sub(from) > max + 2 {
        return Err(RespError::Protocol("length line too long".into()));
    }
    Ok(None)
}

fn parse_len(line: &[u8], what: &str) -> Result<i64, RespError> {
    let s = std::str::from_utf8(line)
        .map_err(|_| RespError::Protocol(format!("invalid {what} length")))?;
    s.parse::<i64>()
        .map_err(|_| RespError::Protocol(format!("invalid {what} length")))
}

/// The arguments of one command and the bytes they used.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// A multibulk command parsed in part: what the next call resumes from.
#[derive(Debug, Default)]
struct Partial {
    /// Arguments announced by the `*n` header.
    want: usize,
    /// Arguments parsed so far.
    args: Vec<Vec<u8>>,
    /// Offset (from the command's first byte) of the next argument.
    pos: usize,
}

/// A resumable request parser: fed the bytes of a connection from the
/// first byte of the next command on, it keeps what it parsed of an
/// incomplete multibulk command, so a command that arrives in many reads
/// costs time linear in its size. Give it the same buffer start until it
/// returns a command (the bytes of earlier commands may be dropped from
/// the front between calls, as long as the incomplete one stays first).
#[derive(Debug)]
pub struct RequestParser {
    limits: RespLimits,
    partial: Option<Partial>,
}

impl RequestParser {
    /// A parser with these limits.
    pub fn new(limits: RespLimits) -> RequestParser {
        RequestParser {
            limits,
            partial: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RespLimits {
        &self.limits
    }

    /// Parses one command from the front of `buf`. Returns the arguments and
    /// how many bytes they used, or `None` if more bytes are needed.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<Parsed>, RespError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let limits = self.limits;
        if self.partial.is_none() {
            if buf[0] != b'*' {
                return parse_inline(buf, &limits);
            }
            let Some(eol) = find_crlf(buf, 1, 20)? else {
                return Ok(None);
            };
            let n = parse_len(&buf[1..eol], "multibulk")?;
            if n <= 0 {
                return Ok(Some((Vec::new(), eol + 2)));
            }
            if n as u64 > limits.max_args as u64 {
                return Err(RespError::TooLarge(format!(
                    "invalid multibulk length: {n} arguments, over the limit of {}",
                    limits.max_args
                )));
            }
            let want = n as usize;
            self.partial = Some(Partial {
                want,
                // Never pre-allocate more than the bytes present can fill.
                args: Vec::with_capacity(want.min(buf.len() / 4 + 1)),
                pos: eol + 2,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return Ok(None);
        };
        while p.args.len() < p.want {
            let pos = p.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            if buf[pos] != b'$' {
                self.partial = None;
                return Err(RespError::Protocol(format!(
                    "expected '$', got '{}'",
                    buf[pos] as char
                )));
            }
            let eol = match find_crlf(buf, pos + 1, 20) {
                Ok(Some(eol)) => eol,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.partial = None;
                    return Err(e);
                }
            };
            let len = match parse_len(&buf[pos + 1..eol], "bulk") {
                Ok(l) if l >= 0 => l as u64,
                _ => {
                    self.partial = None;
                    return Err(RespError::Protocol("invalid bulk length".into()));
                }
            };
            if len > limits.max_bulk_bytes as u64 {
                self.partial = None;
                return Err(RespError::TooLarge(format!(
                    "invalid bulk length: {len} bytes, over proto-max-bulk-len ({} bytes)",
                    limits.max_bulk_bytes
                )));
            }
            let len = len as usize;
            let start = eol + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                self.partial = None;
                return Err(RespError::Protocol("bulk not terminated by CRLF".into()));
            }
            p.args.push(buf[start..start + len].to_vec());
            p.pos = start + len + 2;
        }
        let used = p.pos;
        let args = std::mem::take(&mut p.args);
        self.partial = None;
        Ok(Some((args, used)))
    }
}

fn parse_inline(buf: &[u8], limits: &RespLimits) -> Result<Option<Parsed>, RespError> {
    // Inline command: words separated by spaces, ending with \r\n (or \n).
    let end = buf
        .iter()
        .take(limits.max_inline_bytes + 2)
        .position(|&b| b == b'\n');
    let Some(end) = end else {
        if buf.len() > limits.max_inline_bytes {
            return Err(RespError::TooLarge(format!(
                "too big inline request (over {} bytes)",
                limits.max_inline_bytes
            )));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_vec())
        .collect();
    if args.len() > limits.max_args {
        return Err(RespError::TooLarge(format!(
            "too many arguments (over {})",
            limits.max_args
        )));
    }
    Ok(Some((args, end + 1)))
}

/// Parses one command from the front of `buf` (a fresh [`RequestParser`]).
/// Returns the arguments and how many bytes they used, or `None` if more
/// bytes are needed.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<Option<Parsed>, RespError> {
    RequestParser::new(*limits).next(buf)
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n\r\n...`
    Bulk(Vec<u8>),
    /// `$-1`
    Nil,
    /// `*-1` (a nil array)
    NilArray,
    /// A map: a flat array of keys and values in RESP2, `%n` in RESP3.
    Map(Vec<(Reply, Reply)>),
    /// `*n ...`
    Array(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// `-ERR msg`.
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Error(format!("ERR {}", msg.into()))
    }

    /// Appends the RESP2 encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_proto(out, false)
    }

    /// Appends the RESP2 or (`resp3`) RESP3 encoding to `out`: RESP3 has
    /// one null (`_`) and maps (`%`); everything else is the same.
    pub fn encode_proto(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Reply::Nil | Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Map(pairs) if resp3 => {
                out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
                for (k, v) in pairs {
                    k.encode_proto(out, resp3);
                    v.encode_proto(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
                for (k, v) in pairs {
                    k.encode_proto(out, resp3);
                    v.encode_proto(out, resp3);
                }
            }
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s.replace(['\r', '\n'], " ").as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode_proto(out, resp3);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multibulk_and_inline_and_waits_for_more() {
        let l = RespLimits::default();
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n";
        let (args, used) = parse_command(req, &l).unwrap().unwrap();
        assert_eq!(args, vec![b"SET".to_vec(), b"k".to_vec(), b"vv".to_vec()]);
        assert_eq!(used, req.len());
        for cut in 0..req.len() {
            assert_eq!(
                parse_command(&req[..cut], &l).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        let (args, used) = parse_command(b"PING\r\nrest", &l).unwrap().unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        assert_eq!(used, 6);
    }

    #[test]
    fn oversize_and_garbage_are_refused_without_allocating() {
        let l = RespLimits {
            max_bulk_bytes: 10,
            max_args: 4,
            max_inline_bytes: 16,
        };
        assert!(matches!(
            parse_command(b"*999999999999\r\n", &l),
            Err(RespError::TooLarge(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n$999999999\r\n", &l),
            Err(RespError::TooLarge(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n:5\r\n", &l),
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*x\r\n", &l),
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n$1\r\nabc\r\n", &l),
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(&[b'a'; 40], &l),
            Err(RespError::TooLarge(_))
        ));
        assert!(parse_command(&[b'*'; 40], &l).is_err());
    }

    #[test]
    fn the_parser_resumes_an_incomplete_command_and_names_limits() {
        let l = RespLimits::default();
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n*1\r\n$4\r\nPING\r\n";
        let first = req.len() - b"*1\r\n$4\r\nPING\r\n".len();
        for cut in 0..req.len() {
            let mut p = RequestParser::new(l);
            // Feed growing prefixes: the same answers as a fresh parse.
            for end in 0..=cut {
                let r = p.next(&req[..end]).unwrap();
                if end < first {
                    assert_eq!(r, None, "cut {cut} end {end}");
                } else {
                    assert_eq!(r.map(|x| x.1), Some(first));
                    break;
                }
            }
        }
        let mut p = RequestParser::new(l);
        let (args, used) = p.next(req).unwrap().unwrap();
        assert_eq!(args.len(), 3);
        let (args, _) = p.next(&req[used..]).unwrap().unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        let small = RespLimits {
            max_bulk_bytes: 5,
            max_args: 2,
            max_inline_bytes: 8,
        };
        let e = parse_command(b"*1\r\n$6\r\n", &small).unwrap_err();
        assert!(
            e.to_string().contains("proto-max-bulk-len (5 bytes)"),
            "{e}"
        );
        let e = parse_command(b"*3\r\n", &small).unwrap_err();
        assert!(e.to_string().contains("limit of 2"), "{e}");
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = Vec::new();
        Reply::Array(vec![
            Reply::Bulk(b"a".to_vec()),
            Reply::Nil,
            Reply::Int(-3),
            Reply::ok(),
            Reply::err("x\r\ny"),
        ])
        .encode(&mut out);
        assert_eq!(out, b"*5\r\n$1\r\na\r\n$-1\r\n:-3\r\n+OK\r\n-ERR x  y\r\n");
        let map = Reply::Array(vec![
            Reply::Map(vec![(Reply::Bulk(b"k".to_vec()), Reply::Int(1))]),
            Reply::Nil,
            Reply::NilArray,
        ]);
        let mut out = Vec::new();
        map.encode_proto(&mut out, false);
        assert_eq!(out, b"*3\r\n*2\r\n$1\r\nk\r\n:1\r\n$-1\r\n*-1\r\n");
        let mut out = Vec::new();
        map.encode_proto(&mut out, true);
        assert_eq!(out, b"*3\r\n%1\r\n$1\r\nk\r\n:1\r\n_\r\n_\r\n");
    }
}
