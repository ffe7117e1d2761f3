//! SHA-256 of a resolved configuration (canonical JSON: sorted keys, no whitespace) and of
//! files (teacher weights). A number in a paper points to exactly one configuration hash.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Canonical JSON of any serialisable config: object keys sorted (serde_json's default map is
/// ordered), compact, floats in Rust's shortest round-trip form.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<String> {
    let v = serde_json::to_value(value).map_err(|e| Error::Msg(format!("canonical form: {e}")))?;
    serde_json::to_string(&v).map_err(|e| Error::Msg(format!("canonical form: {e}")))
}

/// Hex SHA-256 of the canonical JSON of `value`.
pub fn config_hash<T: Serialize>(value: &T) -> Result<String> {
    Ok(sha256_hex(canonical_json(value)?.as_bytes()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// First 12 hex digits: enough to name files, still checked against the full hash inside.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct A {
        b: u32,
        a: f64,
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(canonical_json(&A { b: 1, a: 0.5 }).unwrap(), r#"{"a":0.5,"b":1}"#);
    }

    #[test]
    fn sha256_of_known_string() {
        // printf abc | sha256sum
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
