//! The table of supported commands, as `COMMAND` reports them (cluster
//! clients such as redis-py read it to find the keys of a command).

use crate::resp::Reply;

/// One command: Redis's `COMMAND` fields.
#[derive(Clone, Copy, Debug)]
pub struct CommandInfo {
    /// Lower-case name.
    pub name: &'static str,
    /// Arity: the argument count with the name when positive, the least
    /// count when negative (Redis's convention).
    pub arity: i64,
    /// Flags (`write`, `readonly`, `fast`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key (0: none).
    pub first_key: i64,
    /// Position of the last key (-1: the last argument).
    pub last_key: i64,
    /// Step between keys.
    pub step: i64,
}

const fn c(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
) -> CommandInfo {
    CommandInfo {
        name,
        arity,
        flags,
        first_key,
        last_key,
        step,
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WR: &[&str] = &["write"];
const WRF: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const S: &[&str] = &["loading", "stale"];
const SF: &[&str] = &["loading", "stale", "fast"];

/// Every supported command, by name.
pub const COMMANDS: &[CommandInfo] = &[
    c("append", 3, W, 1, 1, 1),
    c("auth", -2, SF, 0, 0, 0),
    c("client", -2, S, 0, 0, 0),
    c("cluster", -2, S, 0, 0, 0),
    c("command", -1, S, 0, 0, 0),
    c("config", -2, S, 0, 0, 0),
    c("dbsize", 1, RF, 0, 0, 0),
    c("decr", 2, WF, 1, 1, 1),
    c("decrby", 3, WF, 1, 1, 1),
    c("del", -2, WR, 1, -1, 1),
    c("discard", 1, SF, 0, 0, 0),
    c("echo", 2, F, 0, 0, 0),
    c("exec", 1, S, 0, 0, 0),
    c("exists", -2, RF, 1, -1, 1),
    c("expire", -3, WRF, 1, 1, 1),
    c("expireat", -3, WRF, 1, 1, 1),
    c("expiretime", 2, RF, 1, 1, 1),
    c("flushall", -1, WR, 0, 0, 0),
    c("flushdb", -1, WR, 0, 0, 0),
    c("get", 2, RF, 1, 1, 1),
    c("getdel", 2, WRF, 1, 1, 1),
    c("getex", -2, WRF, 1, 1, 1),
    c("getrange", 4, R, 1, 1, 1),
    c("getset", 3, WF, 1, 1, 1),
    c("hdel", -3, WRF, 1, 1, 1),
    c("hello", -1, SF, 0, 0, 0),
    c("hexists", 3, RF, 1, 1, 1),
    c("hget", 3, RF, 1, 1, 1),
    c("hgetall", 2, R, 1, 1, 1),
    c("hincrby", 4, WF, 1, 1, 1),
    c("hincrbyfloat", 4, WF, 1, 1, 1),
    c("hkeys", 2, R, 1, 1, 1),
    c("hlen", 2, RF, 1, 1, 1),
    c("hmget", -3, RF, 1, 1, 1),
    c("hmset", -4, WF, 1, 1, 1),
    c("hscan", -3, R, 1, 1, 1),
    c("hset", -4, WF, 1, 1, 1),
    c("hsetnx", 4, WF, 1, 1, 1),
    c("hstrlen", 3, RF, 1, 1, 1),
    c("hvals", 2, R, 1, 1, 1),
    c("incr", 2, WF, 1, 1, 1),
    c("incrby", 3, WF, 1, 1, 1),
    c("incrbyfloat", 3, WF, 1, 1, 1),
    c("info", -1, S, 0, 0, 0),
    c("keys", 2, R, 0, 0, 0),
    c("mget", -2, RF, 1, -1, 1),
    c("mset", -3, W, 1, -1, 2),
    c("msetnx", -3, W, 1, -1, 2),
    c("multi", 1, SF, 0, 0, 0),
    c("persist", 2, WRF, 1, 1, 1),
    c("pexpire", -3, WRF, 1, 1, 1),
    c("pexpireat", -3, WRF, 1, 1, 1),
    c("pexpiretime", 2, RF, 1, 1, 1),
    c("ping", -1, F, 0, 0, 0),
    c("psetex", 4, W, 1, 1, 1),
    c("pttl", 2, RF, 1, 1, 1),
    c("quit", -1, SF, 0, 0, 0),
    c("randomkey", 1, R, 0, 0, 0),
    c("readonly", 1, SF, 0, 0, 0),
    c("readwrite", 1, SF, 0, 0, 0),
    c("rename", 3, WR, 1, 2, 1),
    c("renamenx", 3, WRF, 1, 2, 1),
    c("scan", -2, R, 0, 0, 0),
    c("select", 2, SF, 0, 0, 0),
    c("set", -3, W, 1, 1, 1),
    c("setex", 4, W, 1, 1, 1),
    c("setnx", 3, WF, 1, 1, 1),
    c("setrange", 4, W, 1, 1, 1),
    c("strlen", 2, RF, 1, 1, 1),
    c("substr", 4, R, 1, 1, 1),
    c("touch", -2, RF, 1, -1, 1),
    c("ttl", 2, RF, 1, 1, 1),
    c("type", 2, RF, 1, 1, 1),
    c("unlink", -2, WRF, 1, -1, 1),
    c("unwatch", 1, SF, 0, 0, 0),
    c("watch", -2, SF, 1, -1, 1),
];

/// The entry of a command (case-insensitive).
pub fn lookup(name: &[u8]) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

impl CommandInfo {
    /// The `COMMAND INFO` reply of the command (Redis 7's ten fields).
    pub fn reply(&self) -> Reply {
        Reply::Array(vec![
            Reply::Bulk(self.name.as_bytes().to_vec()),
            Reply::Int(self.arity),
            Reply::Array(
                self.flags
                    .iter()
                    .map(|f| Reply::Simple((*f).to_string()))
                    .collect(),
            ),
            Reply::Int(self.first_key),
            Reply::Int(self.last_key),
            Reply::Int(self.step),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }

    /// The keys of a call (`args` with the name first).
    pub fn keys<'a>(&self, args: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
        if self.first_key <= 0 || self.step <= 0 {
            return Vec::new();
        }
        let n = args.len() as i64;
        let last = if self.last_key < 0 {
            n + self.last_key
        } else {
            self.last_key.min(n - 1)
        };
        let mut out = Vec::new();
        let mut i = self.first_key;
        while i <= last && i < n {
            out.push(args[i as usize].as_slice());
            i += self.step;
        }
        out
    }

    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }
}

/// Answers `COMMAND [COUNT | INFO name... | DOCS [name...] | GETKEYS cmd args... | LIST]`.
pub fn command_command(args: &[Vec<u8>]) -> Reply {
    if args.len() == 1 {
        return Reply::Array(COMMANDS.iter().map(CommandInfo::reply).collect());
    }
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match sub.as_str() {
        "COUNT" if args.len() == 2 => Reply::Int(COMMANDS.len() as i64),
        "LIST" if args.len() == 2 => Reply::Array(
            COMMANDS
                .iter()
                .map(|c| Reply::Bulk(c.name.as_bytes().to_vec()))
                .collect(),
        ),
        "INFO" => {
            if args.len() == 2 {
                return Reply::Array(COMMANDS.iter().map(CommandInfo::reply).collect());
            }
            Reply::Array(
                args[2..]
                    .iter()
                    .map(|n| lookup(n).map_or(Reply::NilArray, CommandInfo::reply))
                    .collect(),
            )
        }
        // Documentation is not served: an empty map (clients fall back).
        "DOCS" => Reply::Map(Vec::new()),
        "GETKEYS" if args.len() >= 3 => match lookup(&args[2]) {
            None => Reply::err("Invalid command specified"),
            Some(c) if !c.arity_ok(args.len() - 2) => {
                Reply::err("Invalid number of arguments specified for command")
            }
            Some(c) => {
                let keys = c.keys(&args[2..]);
                if keys.is_empty() {
                    Reply::err("The command has no key arguments")
                } else {
                    Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.to_vec())).collect())
                }
            }
        },
        _ => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[1])
                .chars()
                .take(64)
                .collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_keys_follow_the_positions() {
        assert!(COMMANDS.windows(2).all(|w| w[0].name < w[1].name));
        let args = |s: &str| -> Vec<Vec<u8>> { s.split(' ').map(|a| a.into()).collect() };
        let mset = lookup(b"MSET").unwrap();
        let a = args("mset a 1 b 2");
        assert_eq!(mset.keys(&a), vec![b"a".as_slice(), b"b"]);
        let del = lookup(b"del").unwrap();
        assert_eq!(del.keys(&args("del x y z")).len(), 3);
        assert!(lookup(b"get").unwrap().arity_ok(2));
        assert!(!lookup(b"get").unwrap().arity_ok(3));
        assert!(lookup(b"set").unwrap().arity_ok(5));
        assert!(lookup(b"nosuch").is_none());
    }
}
