//! [`NodeHostBuilder`]: how a [`NodeHost`](crate::NodeHost) is put together (transport,
//! file system, log storage, seed), and the exclusive hold of its directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use longship_storage::logdb::{LogDb, MemLogDb, Wal, WalOptions};
use longship_storage::vfs::{FileSystem, OsFs};
use longship_transport::{TcpConfig, TcpTransport, Transport};
use parking_lot::Mutex;

use crate::config::NodeHostConfig;
use crate::error::{Error, Result};
use crate::events::EventListener;
use crate::host::HostState;
use crate::inbound::Handler;
use crate::nodehost::NodeHost;

/// Directories held by NodeHosts of this process (a second NodeHost on the
/// same directory is refused even on file systems without OS locks).
fn held_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static HELD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Builds a [`NodeHost`](crate::NodeHost) with injected parts (transport, file system, log
/// storage), and chooses between worker threads and manual stepping.
pub struct NodeHostBuilder {
    cfg: NodeHostConfig,
    transport: Option<Arc<dyn Transport>>,
    fs: Option<Arc<dyn FileSystem>>,
    logdb: Option<Arc<dyn LogDb>>,
    listener: Option<Arc<dyn EventListener>>,
    manual: bool,
}

impl NodeHostBuilder {
    /// A builder with `cfg` and nothing injected (see [`NodeHost::builder`](crate::NodeHost::builder)).
    pub(crate) fn new(cfg: NodeHostConfig) -> NodeHostBuilder {
        NodeHostBuilder {
            cfg,
            transport: None,
            fs: None,
            logdb: None,
            listener: None,
            manual: false,
        }
    }

    /// The transport to use (default: TCP on `raft_address`).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }

    /// The file system for log storage, snapshots and the lock (default: the OS).
    pub fn file_system(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = Some(fs);
        self
    }

    /// Log storage (default: the write-ahead log in `wal_dir`).
    pub fn log_db(mut self, db: Arc<dyn LogDb>) -> Self {
        self.logdb = Some(db);
        self
    }

    /// In-memory log storage (tests; nothing survives `close`).
    pub fn mem_log_db(self) -> Self {
        self.log_db(Arc::new(MemLogDb::new()))
    }

    /// An event listener.
    pub fn event_listener(mut self, l: Arc<dyn EventListener>) -> Self {
        self.listener = Some(l);
        self
    }

    /// No threads: the caller drives the NodeHost with
    /// [`NodeHost::run_once`](crate::NodeHost::run_once) and [`NodeHost::tick`](crate::NodeHost::tick) (the simulator).
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Creates the NodeHost.
    pub fn build(self) -> Result<NodeHost> {
        let cfg = self.cfg;
        cfg.validate()?;
        let transport: Arc<dyn Transport> = match self.transport {
            Some(t) => t,
            None => Arc::new(
                TcpTransport::new(TcpConfig {
                    address: cfg.raft_address.clone(),
                    listen_address: (!cfg.listen_address.is_empty())
                        .then(|| cfg.listen_address.clone()),
                    deployment_id: cfg.deployment_id,
                    connections_per_host: cfg.connections_per_host,
                    max_frame_bytes: cfg.max_frame_bytes,
                    tls: cfg.mutual_tls.clone(),
                    ..TcpConfig::default()
                })
                .map_err(|e| Error::TransportSetup(e.to_string()))?,
            ),
        };
        if transport.local_address() != cfg.raft_address {
            return Err(Error::invalid_config(
                "raft_address",
                "differs from the transport's address",
            ));
        }
        let os_fs = self.fs.is_none();
        let fs: Arc<dyn FileSystem> = self.fs.unwrap_or_else(|| Arc::new(OsFs::new()));
        fs.create_dir_all(&cfg.node_host_dir)?;
        let lock = DirLock::acquire(&cfg.node_host_dir, os_fs)?;
        crate::owner::claim(
            &*fs,
            &cfg.node_host_dir,
            &cfg.raft_address,
            cfg.deployment_id,
            cfg.reassign_directory,
        )?;
        let logdb: Arc<dyn LogDb> = match self.logdb {
            Some(db) => db,
            None => Arc::new(Wal::open(
                fs.clone(),
                &cfg.wal_dir(),
                WalOptions::default(),
            )?),
        };
        // Request keys, read contexts and client ids must not repeat across
        // restarts, even with a configured seed: mix in the incarnation. Nor
        // across hosts given the same seed: a proposal is completed by its
        // key when its entry is applied, so a peer's entry with the same
        // key would complete an unrelated local proposal with the peer's
        // result. Mix in the host's address too (unique in a deployment).
        let incarnation = next_incarnation(&*fs, &cfg.node_host_dir)?;
        let seed = mix_seed(
            mix_seed(
                cfg.seed.unwrap_or_else(os_seed),
                address_hash(&cfg.raft_address),
            ),
            incarnation,
        );
        let host = Arc::new(HostState::new(
            cfg,
            fs,
            logdb,
            transport.clone(),
            self.listener,
            seed,
        ));
        // What replay discarded or could not trust (the Wal logged it too).
        for d in host.logdb.damage_found() {
            tracing::warn!(damage = %d, "log storage damage found at open");
            if let Some(l) = &host.listener {
                l.storage_damage_found(&d);
            }
        }
        transport.start(Arc::new(Handler(host.clone())))?;
        NodeHost::assemble(host, lock, self.manual)
    }
}

/// Name of the file counting the starts of a NodeHost directory.
const INCARNATION_FILE: &str = "INCARNATION";

/// Reads, increments and durably stores the start counter of `dir`
/// (8 bytes LE + CRC32C; written to a temporary file, fsynced, renamed).
fn next_incarnation(fs: &dyn FileSystem, dir: &Path) -> Result<u64> {
    let path = dir.join(INCARNATION_FILE);
    let mut current = 0u64;
    if fs.exists(&path) {
        let f = fs.open_read(&path)?;
        let mut buf = [0u8; 12];
        let n = f.read_at(0, &mut buf)?;
        let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
        if n != 12 || crc32c::crc32c(&buf[..8]) != crc {
            return Err(Error::Storage(longship_storage::Error::corruption(
                &path,
                0,
                "bad start counter",
            )));
        }
        current = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    }
    let next = current + 1;
    let mut buf = next.to_le_bytes().to_vec();
    buf.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
    let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
    let f = fs.create(&tmp)?;
    f.write_at(0, &buf)?;
    f.sync()?;
    drop(f);
    fs.rename(&tmp, &path)?;
    fs.sync_dir(dir)?;
    Ok(next)
}

/// A seed for this start from the configured seed and the incarnation (SplitMix64 finalizer).
fn mix_seed(seed: u64, incarnation: u64) -> u64 {
    let mut z = seed ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a raft address (its share of this host's seed).
fn address_hash(address: &str) -> u64 {
    address.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// The exclusive hold of a NodeHost directory.
pub(crate) struct DirLock {
    dir: PathBuf,
    _file: Option<std::fs::File>,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path, os: bool) -> Result<DirLock> {
        let canonical = if os {
            dir.canonicalize()?
        } else {
            dir.to_path_buf()
        };
        if !held_dirs().lock().insert(canonical.clone()) {
            return Err(Error::DirLocked(dir.to_path_buf()));
        }
        let file = if os {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("LOCK"));
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    held_dirs().lock().remove(&canonical);
                    return Err(e.into());
                }
            };
            if f.try_lock().is_err() {
                held_dirs().lock().remove(&canonical);
                return Err(Error::DirLocked(dir.to_path_buf()));
            }
            Some(f)
        } else {
            None
        };
        Ok(DirLock {
            dir: canonical,
            _file: file,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        held_dirs().lock().remove(&self.dir);
    }
}

#[cfg(test)]
mod incarnation_tests {
    use super::*;
    use longship_storage::vfs::MemFs;

    #[test]
    fn the_start_counter_grows_and_a_damaged_one_is_refused() {
        let fs = MemFs::new();
        let dir = Path::new("/nh");
        fs.create_dir_all(dir).unwrap();
        assert_eq!(next_incarnation(&fs, dir).unwrap(), 1);
        assert_eq!(next_incarnation(&fs, dir).unwrap(), 2);
        assert_ne!(mix_seed(7, 1), mix_seed(7, 2));
        let f = fs.open(&dir.join(INCARNATION_FILE)).unwrap();
        f.write_at(0, &[0xff]).unwrap();
        assert!(matches!(next_incarnation(&fs, dir), Err(Error::Storage(_))));
    }
}
