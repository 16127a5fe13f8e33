//! Helpers shared by longship's tests. Not published.
//!
//! Tests that start servers on loopback (in process or as child processes)
//! need a port nobody uses. The usual trick, binding port 0 and releasing
//! it, picks from the kernel's ephemeral range (32768–60999 on Linux),
//! which is also where every outgoing connection takes its local port: with
//! several tests running at once, one of their client sockets could take
//! the port between the pick and the server's bind, or while a server is
//! down for a restart (kill -9, then start again at the same address). The
//! ports here are picked at random below that range, where the kernel never
//! assigns a port by itself; they collide only if two tests pick the same
//! one (a chance of about one in ten thousand per pair of picks).

use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lowest port picked.
const FIRST: u16 = 20_000;
/// One past the highest port picked (the start of Linux's default
/// ephemeral range).
const END: u16 = 32_768;

/// A free port on `127.0.0.1` (see the crate docs).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A port below the ephemeral range that nothing listens on at `ip` right
/// now (any loopback address, e.g. `127.0.0.2`).
///
/// # Panics
/// If a thousand random picks are all taken.
pub fn free_port_on(ip: &str) -> u16 {
    // Different in every process (RandomState's keys) and every call.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let keys = std::collections::hash_map::RandomState::new();
    for _ in 0..1000 {
        let mut h = keys.build_hasher();
        h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = FIRST + (h.finish() % u64::from(END - FIRST)) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {FIRST}..{END} after 1000 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_vary() {
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for &p in &ports {
            assert!((FIRST..END).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
        }
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert!(distinct.len() > 10, "picks do not vary: {ports:?}");
    }

    #[test]
    fn a_taken_port_is_never_picked() {
        // Hold 500 ports, then pick 2,000: without the bind check about 80
        // picks would be held ports.
        let held: Vec<TcpListener> = (0..500)
            .map(|_| TcpListener::bind(("127.0.0.1", free_port())).unwrap())
            .collect();
        let taken: std::collections::BTreeSet<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert!((0..2000).all(|_| !taken.contains(&free_port())));
    }
}
