//! The cache key: a prefix and a digest of the key files.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use viaduct_plugin_sdk::{Error, Result, fs::workspace_path};

/// Characters that make a key file entry a glob pattern.
const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// Files matching `pattern` (relative to `root`), as sorted
/// root-relative paths; directories are left out. `*` does not cross `/`;
/// `**` matches any number of directories.
pub fn glob_files(root: &Path, pattern: &str) -> Result<Vec<String>> {
    let full = root.join(pattern);
    let full = full.to_str().ok_or_else(|| Error::msg(format!("key file pattern `{pattern}` is not UTF-8")))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let paths =
        glob::glob_with(full, options).map_err(|e| Error::msg(format!("invalid key file pattern `{pattern}`: {e}")))?;
    let mut files = BTreeSet::new();
    for entry in paths {
        let path = entry.map_err(|e| {
            Error::msg(format!("cannot read `{}` while matching `{pattern}`: {}", e.path().display(), e.error()))
        })?;
        if path.is_file() {
            files.insert(relative(root, &path));
        }
    }
    Ok(files.into_iter().collect())
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.join("/")
}

/// Key files resolved from the step's entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyFiles {
    /// Every file, sorted, without duplicates.
    pub files: Vec<String>,
    /// Patterns that matched nothing (a warning, not an error).
    pub unmatched: Vec<String>,
}

/// Resolves key file entries: literal paths must be existing files (all
/// missing ones are named in one error), glob patterns may match nothing.
pub fn resolve(root: &Path, entries: &[String]) -> Result<KeyFiles> {
    let mut files = BTreeSet::new();
    let mut unmatched = Vec::new();
    let mut missing = Vec::new();
    for entry in entries {
        let entry = workspace_path("key_files", entry)?;
        if entry.contains(GLOB_CHARS) {
            let matched = glob_files(root, &entry)?;
            if matched.is_empty() {
                unmatched.push(entry);
            }
            files.extend(matched);
        } else {
            let path = root.join(&entry);
            if path.is_file() {
                files.insert(entry);
            } else if path.is_dir() {
                return Err(Error::msg(format!(
                    "key file `{entry}` is a directory (use a pattern such as `{entry}/**/*`)"
                )));
            } else {
                missing.push(entry);
            }
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
        let noun = if missing.len() == 1 { "key file" } else { "key files" };
        return Err(Error::msg(format!("{noun} not found: {}", list.join(", "))));
    }
    Ok(KeyFiles { files: files.into_iter().collect(), unmatched })
}

/// The blake3 digest (hex) of the files' paths and contents, in order.
/// Renaming a file changes the digest as much as editing it does.
pub fn digest(root: &Path, files: &[String]) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    for file in files {
        let path: PathBuf = root.join(file);
        let mut f = std::fs::File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("`{file}`: {e}")))?;
        let len = f.metadata()?.len();
        hasher.update(file.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        io::copy(&mut f, &mut hasher).map_err(|e| io::Error::new(e.kind(), format!("`{file}`: {e}")))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The full key: `<prefix>-<first 16 hex digits of the digest>`.
pub fn full_key(prefix: &str, digest: &str) -> String {
    format!("{prefix}-{}", &digest[..16.min(digest.len())])
}

/// Checks a key or key prefix: printable, no whitespace or commas, at most
/// 256 bytes.
pub fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::msg(format!("`{what}` must not be empty")));
    }
    if key.len() > 256 {
        return Err(Error::msg(format!("`{what}` is longer than 256 bytes")));
    }
    if let Some(c) = key.chars().find(|c| c.is_whitespace() || c.is_control() || *c == ',') {
        return Err(Error::msg(format!("`{what}` must not contain {c:?}: `{key}`")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "viaduct-cache-key-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        root
    }

    #[test]
    fn literal_and_glob_entries() {
        let root = tree(&[("Cargo.lock", "a"), ("crates/x/Cargo.lock", "b"), ("crates/y/z/Cargo.lock", "c")]);
        let k = resolve(&root, &["Cargo.lock".into(), "crates/*/Cargo.lock".into(), "*.nope".into()]).unwrap();
        assert_eq!(k.files, ["Cargo.lock", "crates/x/Cargo.lock"]);
        assert_eq!(k.unmatched, ["*.nope"]);
        let k = resolve(&root, &["**/Cargo.lock".into(), "./Cargo.lock".into()]).unwrap();
        assert_eq!(k.files, ["Cargo.lock", "crates/x/Cargo.lock", "crates/y/z/Cargo.lock"]);

        let e = resolve(&root, &["a.lock".into(), "Cargo.lock".into(), "b/c.lock".into()]).unwrap_err();
        assert_eq!(e.message(), "key files not found: `a.lock`, `b/c.lock`");
        let e = resolve(&root, &["crates".into()]).unwrap_err();
        assert!(e.message().contains("is a directory"), "{e}");
        assert!(resolve(&root, &["../x".into()]).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn digest_depends_on_names_and_contents() {
        let a = tree(&[("Cargo.lock", "x")]);
        let b = tree(&[("Cargo.lock", "y")]);
        let c = tree(&[("other.lock", "x")]);
        let d = tree(&[("Cargo.lock", "x")]);
        let h = |root: &PathBuf, f: &str| digest(root, &[f.to_string()]).unwrap();
        assert_eq!(h(&a, "Cargo.lock"), h(&d, "Cargo.lock"));
        assert_ne!(h(&a, "Cargo.lock"), h(&b, "Cargo.lock"));
        assert_ne!(h(&a, "Cargo.lock"), h(&c, "other.lock"));
        assert_eq!(digest(&a, &[]).unwrap(), blake3::hash(b"").to_hex().to_string());
        let key = full_key("cargo", &h(&a, "Cargo.lock"));
        assert!(key.starts_with("cargo-") && key.len() == "cargo-".len() + 16, "{key}");
        for root in [a, b, c, d] {
            std::fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn keys() {
        assert!(check_key("key", "cargo-v2").is_ok());
        assert!(check_key("key", "").is_err());
        assert!(check_key("key", "a b").unwrap_err().message().contains("' '"));
        assert!(check_key("key", "a,b").is_err());
        assert!(check_key("key", &"k".repeat(300)).is_err());
    }
}
