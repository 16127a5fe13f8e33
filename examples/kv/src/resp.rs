//! RESP2: parsing client requests (arrays of bulk strings, or inline
//! commands) and encoding replies. The parser takes untrusted bytes: every
//! length is bounded before anything is allocated and nothing panics.

/// Limits of one request.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Largest bulk string (a key or value).
    pub max_bulk_bytes: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline_bytes: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_bytes: 8 << 20,
            max_args: 1 << 16,
            max_inline_bytes: 64 << 10,
        }
    }
}

/// Why a request could not be parsed. The connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Not RESP.
    Protocol(String),
    /// A length over the limits.
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
    if buf.len() - from > max + 2 {
        return Err(RespError::TooLarge("line too long".into()));
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

/// Parses one command from the front of `buf`. Returns the arguments and
/// how many bytes they used, or `None` if more bytes are needed.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<Option<Parsed>, RespError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        // Inline command: words separated by spaces, ending with \r\n (or \n).
        let end = buf
            .iter()
            .take(limits.max_inline_bytes + 2)
            .position(|&b| b == b'\n');
        let Some(end) = end else {
            if buf.len() > limits.max_inline_bytes {
                return Err(RespError::TooLarge("inline command too long".into()));
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
            return Err(RespError::TooLarge("too many arguments".into()));
        }
        return Ok(Some((args, end + 1)));
    }
    let Some(eol) = find_crlf(buf, 1, 20)? else {
        return Ok(None);
    };
    let n = parse_len(&buf[1..eol], "multibulk")?;
    if n < 0 {
        return Ok(Some((Vec::new(), eol + 2)));
    }
    if n as usize > limits.max_args {
        return Err(RespError::TooLarge("too many arguments".into()));
    }
    let mut pos = eol + 2;
    // Never pre-allocate more than the bytes present can fill.
    let mut args = Vec::with_capacity((n as usize).min(buf.len() / 4 + 1));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(RespError::Protocol(format!(
                "expected '$', got '{}'",
                buf[pos] as char
            )));
        }
        let Some(eol) = find_crlf(buf, pos + 1, 20)? else {
            return Ok(None);
        };
        let len = parse_len(&buf[pos + 1..eol], "bulk")?;
        if len < 0 {
            return Err(RespError::Protocol("invalid bulk length".into()));
        }
        let len = len as usize;
        if len > limits.max_bulk_bytes {
            return Err(RespError::TooLarge(format!(
                "bulk of {len} bytes over the limit"
            )));
        }
        let start = eol + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(RespError::Protocol("bulk not terminated by CRLF".into()));
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Ok(Some((args, pos)))
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

    /// Appends the RESP encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
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
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out);
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
    }
}
