//! The optional metrics endpoint ([`NodeHostConfig::metrics_address`]):
//! `GET /metrics` answers the NodeHost's Prometheus text.
//!
//! One std thread serves one connection at a time (a scrape is a few
//! kilobytes, scraped every few seconds): a request head over
//! [`MAX_REQUEST_BYTES`] is refused, a client that does not send or read
//! within [`IO_TIMEOUT`] is dropped, so a stuck client holds the endpoint
//! for seconds at most and costs nothing else. No tokio: the runtime stays
//! inside the TCP transport (DESIGN §2).
//!
//! [`NodeHostConfig::metrics_address`]: crate::NodeHostConfig::metrics_address

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// Bound on a request head (request line and headers).
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// Read and write timeout of one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A running endpoint; [`MetricsServer::stop`] ends its thread.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `address` and answers `GET /metrics` with `text()`.
    pub(crate) fn start(
        address: &str,
        text: impl Fn() -> String + Send + 'static,
    ) -> Result<MetricsServer> {
        let listener = TcpListener::bind(address).map_err(|e| {
            Error::invalid_config(
                "metrics_address",
                format!("cannot listen on {address}: {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ls-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(s) => {
                            if let Err(e) = serve(s, &text) {
                                tracing::debug!(error = %e, "metrics request failed");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "metrics accept failed"),
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when configured as 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and frees the port.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, IO_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers one request.
fn serve(mut s: TcpStream, text: &dyn Fn() -> String) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_BYTES {
            return respond(&mut s, "431 Request Header Fields Too Large", "");
        }
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => respond(&mut s, "200 OK", &text()),
        (Some(b"GET"), _) => respond(&mut s, "404 Not Found", "only /metrics is served\n"),
        _ => respond(&mut s, "405 Method Not Allowed", "only GET is served\n"),
    }
}

fn respond(s: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()
}
