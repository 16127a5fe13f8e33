//! Who owns a NodeHost directory: the raft address and deployment id it was
//! first started with. Starting it again as another host (a copied data
//! directory, a wrong `--raft-addr`, another cluster's deployment id) is
//! refused: its replicas' peers know them at the recorded address, and a
//! host under another address would answer for replicas that are not its.
//! (dragonboat refuses such a start too.)
//!
//! The record is a small text file, `OWNER`, written atomically (temporary
//! file, fsync, rename, directory fsync) with a CRC32C line; a damaged
//! record is refused, never guessed.

use std::path::Path;

use longship_storage::vfs::FileSystem;

use crate::error::{Error, Result};

/// Name of the record in the NodeHost directory.
pub(crate) const OWNER_FILE: &str = "OWNER";
const HEADER: &str = "longship nodehost owner v1";

/// The owner a directory records.
#[derive(Debug, PartialEq, Eq)]
struct Owner {
    raft_address: String,
    deployment_id: u64,
}

impl Owner {
    fn encode(&self) -> String {
        let body = format!(
            "{HEADER}\nraft_address={}\ndeployment_id={}\n",
            self.raft_address, self.deployment_id
        );
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc32c={crc:08x}\n")
    }

    /// Parses a record (untrusted: any bytes give a value or `None`).
    fn decode(bytes: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (body, crc_line) = text.rsplit_once("crc32c=")?;
        let digits = crc_line.strip_suffix('\n')?;
        if digits.len() != 8
            || !digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let crc = u32::from_str_radix(digits, 16).ok()?;
        if crc32c::crc32c(body.as_bytes()) != crc {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let raft_address = lines.next()?.strip_prefix("raft_address=")?.to_string();
        let deployment_id = lines.next()?.strip_prefix("deployment_id=")?.parse().ok()?;
        if lines.next().is_some() {
            return None;
        }
        Some(Owner {
            raft_address,
            deployment_id,
        })
    }
}

/// The raft address `dir`'s owner record names (`None`: no record, the
/// directory never held a started NodeHost).
pub(crate) fn recorded_address(fs: &dyn FileSystem, dir: &Path) -> Result<Option<String>> {
    let path = dir.join(OWNER_FILE);
    if !fs.exists(&path) {
        return Ok(None);
    }
    let f = fs.open_read(&path)?;
    let len = f.len()?.min(4096) as usize;
    let mut buf = vec![0u8; len];
    let n = f.read_at(0, &mut buf)?;
    buf.truncate(n);
    match Owner::decode(&buf) {
        Some(o) => Ok(Some(o.raft_address)),
        None => Err(Error::Storage(longship_storage::Error::corruption(
            &path,
            0,
            "damaged NodeHost owner record",
        ))),
    }
}

/// Checks that `dir` belongs to (`raft_address`, `deployment_id`), and
/// records it as theirs on a first start or when `reassign` is set.
pub(crate) fn claim(
    fs: &dyn FileSystem,
    dir: &Path,
    raft_address: &str,
    deployment_id: u64,
    reassign: bool,
) -> Result<()> {
    let path = dir.join(OWNER_FILE);
    let me = Owner {
        raft_address: raft_address.to_string(),
        deployment_id,
    };
    if fs.exists(&path) {
        let f = fs.open_read(&path)?;
        let len = f.len()?.min(4096) as usize;
        let mut buf = vec![0u8; len];
        let n = f.read_at(0, &mut buf)?;
        buf.truncate(n);
        let Some(recorded) = Owner::decode(&buf) else {
            return Err(Error::Storage(longship_storage::Error::corruption(
                &path,
                0,
                "damaged NodeHost owner record",
            )));
        };
        if recorded == me {
            return Ok(());
        }
        if !reassign {
            return Err(Error::invalid_config(
                "raft_address",
                format!(
                    "the NodeHost directory {} belongs to raft address {} in deployment {}, \
                     not {} in deployment {}: start it with its own address and deployment id, \
                     or see NodeHostConfig::reassign_directory to move the host on purpose",
                    dir.display(),
                    recorded.raft_address,
                    recorded.deployment_id,
                    raft_address,
                    deployment_id
                ),
            ));
        }
        tracing::warn!(
            dir = %dir.display(),
            from = %recorded.raft_address,
            to = raft_address,
            "NodeHost directory reassigned to a new raft address or deployment"
        );
    }
    let tmp = dir.join(format!("{OWNER_FILE}.tmp"));
    let f = fs.create(&tmp)?;
    f.write_at(0, me.encode().as_bytes())?;
    f.sync()?;
    drop(f);
    fs.rename(&tmp, &path)?;
    fs.sync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use longship_storage::vfs::MemFs;

    #[test]
    fn a_directory_is_refused_to_another_address_or_deployment() {
        let fs = MemFs::new();
        let dir = Path::new("/nh");
        fs.create_dir_all(dir).unwrap();
        claim(&fs, dir, "a:1", 7, false).unwrap();
        claim(&fs, dir, "a:1", 7, false).unwrap();
        let err = claim(&fs, dir, "b:1", 7, false).unwrap_err().to_string();
        assert!(err.contains("belongs to raft address a:1"), "{err}");
        assert!(claim(&fs, dir, "a:1", 8, false).is_err());
        // On purpose: reassigned, and the new owner is the one recorded.
        claim(&fs, dir, "b:1", 7, true).unwrap();
        claim(&fs, dir, "b:1", 7, false).unwrap();
        assert!(claim(&fs, dir, "a:1", 7, false).is_err());
    }

    #[test]
    fn a_damaged_record_is_refused_and_garbage_never_panics() {
        let enc = Owner {
            raft_address: "host:1".into(),
            deployment_id: 3,
        }
        .encode()
        .into_bytes();
        assert!(Owner::decode(&enc).is_some());
        for cut in 0..enc.len() {
            assert_eq!(Owner::decode(&enc[..cut]), None, "prefix {cut}");
        }
        for i in 0..enc.len() {
            let mut b = enc.clone();
            b[i] ^= 0x01;
            assert_eq!(Owner::decode(&b), None, "byte {i} flipped");
        }
        let fs = MemFs::new();
        let dir = Path::new("/nh");
        fs.create_dir_all(dir).unwrap();
        let f = fs.create(&dir.join(OWNER_FILE)).unwrap();
        f.write_at(0, b"garbage").unwrap();
        assert!(matches!(
            claim(&fs, dir, "host:1", 3, false),
            Err(Error::Storage(_))
        ));
    }
}
