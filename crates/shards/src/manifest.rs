//! A shard folder's `manifest.json`.

use std::path::Path;

use schemas::{MANIFEST_FILE, Manifest, SCHEMA_VERSION};

use crate::ShardsError;

/// The `manifest.json` of the shard folder `dir`, refused when missing, not
/// a manifest, or of another schema version; each error names the file.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ShardsError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ShardsError::MissingManifest { path });
        }
        Err(source) => return Err(ShardsError::Io { path, source }),
    };
    let manifest: Manifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(source) => return Err(ShardsError::BadManifest { path, source }),
    };
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(ShardsError::SchemaVersion {
            path,
            found: manifest.schema_version.to_string(),
            expected: SCHEMA_VERSION,
        });
    }
    Ok(manifest)
}
