//! Secrets, encrypted at rest.
//!
//! Each value is sealed with XChaCha20-Poly1305 under a 256-bit key kept in
//! `DATA_DIR/secret-key` (mode 0600, created on first start), with a fresh
//! random nonce, and stored as `nonce ‖ ciphertext` in the `secrets` tree —
//! so a copy of the database alone reveals no secret. The secret's name is
//! the associated data: a sealed value cannot be moved under another name.
//! Values leave the server only in the assignment of a job that lists them
//! and whose run the secret's scope admits (see [`crate::trust`]).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};

use viaduct_proto::v1::SecretScope;

use crate::{
    error::{Error, Result},
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{SCHEMA_VERSION, SecretRecord},
    },
};

const NONCE: usize = 24;

/// Seals and opens secret values.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    master: [u8; 32],
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Checks a secret name: an environment variable name.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid secret name `{name}`: use letters, digits and `_`, not starting with a digit"
        )))
    }
}

impl SecretBox {
    /// The box of `data_dir`, creating its key on first use.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_file(&data_dir.join("secret-key"))
    }

    /// The key in `path` (made there on first use, 0600). Replicas of one
    /// database share one key file (`--secret-key-file`).
    pub fn open_file(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let io = |e: std::io::Error| Error::Internal(format!("secret key {}: {e}", path.display()));
        let key: [u8; 32] = match std::fs::read(&path) {
            Ok(k) => k.try_into().map_err(|_| Error::Internal(format!("{} is not a 32-byte key", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = random::<32>()?;
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                    Ok(mut f) => {
                        f.write_all(&k).and_then(|()| f.sync_all()).map_err(io)?;
                        k
                    }
                    // Another replica sharing the file made it first.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        let k = std::fs::read(&path).map_err(io)?;
                        k.try_into().map_err(|_| Error::Internal(format!("{} is not a 32-byte key", path.display())))?
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| Error::Internal("bad secret key".into()))?;
        Ok(Self { cipher, master: key })
    }

    /// A key for another purpose (e.g. signing download links), derived
    /// from the secret key with blake3's key derivation: independent of
    /// the sealing key and of keys for other `context`s.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.master)
    }

    fn seal(&self, name: &str, value: &str) -> Result<Vec<u8>> {
        let nonce = random::<NONCE>()?;
        let ct = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: value.as_bytes(), aad: name.as_bytes() })
            .map_err(|_| Error::Internal("cannot seal a secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        Ok(out)
    }

    fn unseal(&self, name: &str, sealed: &[u8]) -> Result<String> {
        let corrupt = || Error::Corrupt { tree: "secrets", detail: format!("secret `{name}` cannot be decrypted") };
        if sealed.len() < NONCE {
            return Err(corrupt());
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        let nonce = XNonce::try_from(nonce).map_err(|_| corrupt())?;
        let plain = self.cipher.decrypt(&nonce, Payload { msg: ct, aad: name.as_bytes() }).map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }

    /// Stores (replaces) a secret with its scope. Returns its created and
    /// updated times.
    pub async fn set(&self, store: &Store, name: &str, value: &str, scope: SecretScope) -> Result<(i64, i64)> {
        check_name(name)?;
        if value.len() > 64 * 1024 {
            return Err(Error::TooLarge("a secret may be at most 64 KiB".into()));
        }
        if value.len() < MIN_SECRET_LEN {
            return Err(Error::invalid(format!(
                "secret `{name}` is {} bytes: at least {MIN_SECRET_LEN} are needed, or it could not be masked in logs \
                 without hiding ordinary words",
                value.len()
            )));
        }
        crate::trust::check_scope(&scope)?;
        let now = now_ms();
        let created = read(store, name)?.map_or(now, |r| r.created_ms);
        let rec = SecretRecord {
            schema: SCHEMA_VERSION,
            created_ms: created,
            updated_ms: now,
            sealed: self.seal(name, value)?,
            scope: Some(scope),
        };
        let mut ws = WriteSet::default();
        ws.put(T::Secrets, name.as_bytes(), &rec);
        store.commit_durable(&ws).await?;
        Ok((created, now))
    }

    /// The value and scope of secret `name`, if it exists.
    pub fn get(&self, store: &Store, name: &str) -> Result<Option<(String, SecretScope)>> {
        match read(store, name)? {
            Some(r) => Ok(Some((self.unseal(name, &r.sealed)?, r.scope.unwrap_or_default()))),
            None => Ok(None),
        }
    }

    /// The scope of secret `name`, if it exists (its value stays sealed).
    pub fn scope(store: &Store, name: &str) -> Result<Option<SecretScope>> {
        Ok(read(store, name)?.map(|r| r.scope.unwrap_or_default()))
    }

    /// Every secret (without its value).
    pub fn list(store: &Store) -> Result<Vec<(String, SecretRecord)>> {
        let mut out = Vec::new();
        for kv in store.tree(T::Secrets).iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let mut rec = parse(&name, &v)?;
            rec.sealed.clear();
            out.push((name, rec));
        }
        Ok(out)
    }

    /// Deletes a secret.
    pub async fn delete(store: &Store, name: &str) -> Result<()> {
        if read(store, name)?.is_none() {
            return Err(Error::not_found(format!("secret `{name}` not found")));
        }
        let mut ws = WriteSet::default();
        ws.delete(T::Secrets, name.as_bytes());
        store.commit_durable(&ws).await
    }
}

/// Shortest value accepted: shorter ones could not be masked in logs
/// without hiding ordinary words (the runner masks from this length up).
pub const MIN_SECRET_LEN: usize = 4;

fn read(store: &Store, name: &str) -> Result<Option<SecretRecord>> {
    match store.tree(T::Secrets).get(name)? {
        Some(v) => parse(name, &v).map(Some),
        None => Ok(None),
    }
}

/// A stored secret, in either layout (see [`SecretRecord`]).
fn parse(name: &str, v: &[u8]) -> Result<SecretRecord> {
    if v.first() == Some(&0) {
        // Before scopes: created (8) ‖ updated (8) ‖ sealed, no scope.
        let t = |r: std::ops::Range<usize>| v.get(r).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes);
        let (Some(created_ms), Some(updated_ms)) = (t(0..8), t(8..16)) else {
            return Err(Error::Corrupt { tree: "secrets", detail: format!("secret `{name}` is truncated") });
        };
        return Ok(SecretRecord {
            schema: SCHEMA_VERSION,
            created_ms,
            updated_ms,
            sealed: v[16..].to_vec(),
            scope: None,
        });
    }
    decode(T::Secrets, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::open(dir.path()).unwrap();
        let sealed = b.seal("TOKEN", "hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.unseal("TOKEN", &sealed).unwrap(), "hunter2");
        assert!(b.unseal("OTHER", &sealed).is_err());
        // The key persists.
        let again = SecretBox::open(dir.path()).unwrap();
        assert_eq!(again.unseal("TOKEN", &sealed).unwrap(), "hunter2");
        let mode = std::fs::metadata(dir.path().join("secret-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(check_name("9X").is_err() && check_name("A_1").is_ok());
    }
}
