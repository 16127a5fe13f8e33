//! The kv's RESP request parser (`longship_kv::resp`), fed mutated
//! pipelines of commands: it takes bytes straight from clients.

use longship_fuzz::{DEFAULT_INPUTS, inputs, run};
use longship_kv::resp::{RequestParser, RespLimits, parse_command};
use longship_raft::Rng;

/// Valid requests: multibulk commands, inline commands, pipelines of both.
fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        &b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
        b"PING\r\n",
        b"SET k v\r\n",
        b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\nGET n\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"*2\r\n$0\r\n\r\n$-1\r\n",
        b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$10\r\n0123456789\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    out.push(b"*2\r\n$3\r\nGET\r\n$70000\r\n".to_vec());
    out
}

/// Small limits, so that mutated lengths cross them.
fn limits() -> RespLimits {
    RespLimits {
        max_bulk_bytes: 4096,
        max_args: 64,
        max_inline_bytes: 1024,
    }
}

/// Parses every command of `buf` at once; the commands and whether it
/// ended in an error.
fn whole(buf: &[u8]) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut p = RequestParser::new(limits());
    let mut at = 0;
    let mut cmds = Vec::new();
    // Every command consumes at least one byte: bounded by the input.
    for _ in 0..=buf.len() {
        match p.next(&buf[at..]) {
            Ok(Some((args, used))) => {
                assert!(used > 0 && used <= buf.len() - at, "bad length {used}");
                at += used;
                cmds.push(args);
            }
            Ok(None) => return (cmds, false),
            Err(_) => return (cmds, true),
        }
    }
    panic!("the parser made no progress");
}

/// The same bytes arriving in pieces of random sizes (as from a socket)
/// must give the same commands and the same outcome.
fn in_pieces(buf: &[u8], seed: u64) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut rng = Rng::new(seed);
    let mut p = RequestParser::new(limits());
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut cmds = Vec::new();
    loop {
        match p.next(&pending) {
            Ok(Some((args, used))) => {
                pending.drain(..used);
                cmds.push(args);
            }
            Ok(None) if fed == buf.len() => return (cmds, false),
            Ok(None) => {
                let n = (1 + rng.below(16) as usize).min(buf.len() - fed);
                pending.extend_from_slice(&buf[fed..fed + n]);
                fed += n;
            }
            Err(_) => return (cmds, true),
        }
    }
}

#[test]
fn resp_requests() {
    run("resp", 7, &seeds(), inputs(DEFAULT_INPUTS * 4), |b| {
        let (cmds, failed) = whole(b);
        for c in &cmds {
            assert!(c.len() <= 64, "over max_args");
            assert!(c.iter().all(|a| a.len() <= 4096), "over max_bulk_bytes");
        }
        let seed = b
            .iter()
            .fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(x as u64));
        let (again, failed_again) = in_pieces(b, seed);
        // A command cut short at the end of a piece may fail differently
        // only if the whole input fails; the commands before agree.
        assert_eq!(
            again[..again.len().min(cmds.len())],
            cmds[..again.len().min(cmds.len())],
            "pieces changed the commands"
        );
        if !failed && !failed_again {
            assert_eq!(again, cmds, "pieces changed the commands");
        }
        let first = parse_command(b, &limits());
        if let (Ok(Some((args, _))), Some(c)) = (&first, cmds.first()) {
            assert_eq!(args, c, "one-shot parse differs");
        }
        !cmds.is_empty()
    });
}
