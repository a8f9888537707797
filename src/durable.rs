//! Durable small writes and streamed file digests, shared by the state dir
//! (`store`) and the publish tree (`fleet::tree`): both promise that a crash
//! leaves either the old file or the new one, and neither reads a database
//! file whole into memory to hash it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Creates (or truncates) `path` with `bytes`, fsynced.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes a rename or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file's size and sha256, read in chunks.
pub(crate) fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let (mut buf, mut size, mut hash) = (vec![0u8; 256 * 1024], 0u64, Sha256::new());
    loop {
        match f.read(&mut buf)? {
            0 => return Ok((size, hex::encode(hash.finalize()))),
            n => {
                size += n as u64;
                hash.update(&buf[..n]);
            }
        }
    }
}
