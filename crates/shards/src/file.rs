//! Hashes and durable writes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ShardsError;
use crate::error::io_err;

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of a file, streamed: the hash a manifest records per shard.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Errs unless the sha256 of the file at `path` is `expected` (the
/// manifest's): [`ShardsError::MissingShard`] when it is not there,
/// [`ShardsError::ShaMismatch`] when it differs.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), ShardsError> {
    let found = sha256_file(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ShardsError::MissingShard {
            path: path.to_path_buf(),
        },
        _ => ShardsError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    if found != expected {
        return Err(ShardsError::ShaMismatch {
            path: path.to_path_buf(),
            manifest: expected.to_string(),
            file: found,
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` so that readers see either the old file or the
/// whole new one: a temporary file in the same folder named after the whole
/// file name (`x.json.tmp`, `x.md.tmp`: two outputs never share one), fsync,
/// rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShardsError> {
    write_atomic_through(path, &temporary_path(path), bytes)
}

/// [`write_atomic`] through the temporary file `tmp` (in `path`'s folder),
/// for tools whose leftovers carry another suffix. A failed write removes
/// `tmp`.
pub fn write_atomic_through(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), ShardsError> {
    let written = File::create(tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(source) = written {
        let _ = fs::remove_file(tmp);
        return Err(ShardsError::Io {
            path: tmp.to_path_buf(),
            source,
        });
    }
    fs::rename(tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable; not all filesystems allow opening a
        // directory, and losing this only weakens durability, not atomicity.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `path` with `.tmp` appended to its whole file name, bytes kept as they
/// are (a lossy conversion could give two names the same temporary file).
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_keep_the_whole_file_name() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(
            temporary_path(Path::new("d/x.json")),
            Path::new("d/x.json.tmp")
        );
        assert_ne!(
            temporary_path(Path::new("d/x.json")),
            temporary_path(Path::new("d/x.md"))
        );
        // Names that are not UTF-8 must not collapse into one temporary file.
        let a = Path::new(std::ffi::OsStr::from_bytes(b"x.\xff"));
        let b = Path::new(std::ffi::OsStr::from_bytes(b"x.\xfe"));
        assert_ne!(temporary_path(a), temporary_path(b));
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temporary_path(&path).exists());
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"two"));
    }
}
