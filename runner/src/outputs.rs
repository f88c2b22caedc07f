//! The `$VIADUCT_OUTPUT` file format, by which a step sets outputs that
//! later steps read as `${{ steps.<id>.outputs.<name> }}`.
//!
//! One output per line, `name=value`; a multi-line value uses a heredoc:
//! ```text
//! version=1.2.3
//! notes<<EOF
//! first line
//! second line
//! EOF
//! ```
//! (the same convention as GitHub Actions' `$GITHUB_OUTPUT`).

use std::{collections::BTreeMap, path::Path};

/// Most bytes of outputs one step may set.
pub const MAX_OUTPUTS_BYTES: usize = 1024 * 1024;

/// A step's outputs file, read the way a job cannot redirect (the runner
/// may be root, the job not): not through a symbolic link (`O_NOFOLLOW`),
/// never blocking on a FIFO (`O_NONBLOCK`), a regular file only, at most
/// [`MAX_OUTPUTS_BYTES`]. `None`: the step wrote none. Blocking: call it
/// off the async workers when the file may be large.
pub fn read(path: &Path) -> Result<Option<String>, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let refuse = |why: &str| format!("$VIADUCT_OUTPUT was refused: {why}");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse("it is a symbolic link (the runner follows none that a job makes)"));
        }
        Err(e) => return Err(refuse(&e.to_string())),
    };
    let meta = file.metadata().map_err(|e| refuse(&e.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > MAX_OUTPUTS_BYTES as u64 {
        return Err(refuse(&format!("it is larger than {} KiB", MAX_OUTPUTS_BYTES / 1024)));
    }
    let mut text = String::new();
    file.take(MAX_OUTPUTS_BYTES as u64 + 1).read_to_string(&mut text).map_err(|e| refuse(&e.to_string()))?;
    Ok(Some(text))
}

/// Parses the file; an error names the offending line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    if text.len() > MAX_OUTPUTS_BYTES {
        return Err(format!("outputs are larger than {MAX_OUTPUTS_BYTES} bytes"));
    }
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) = if let Some((name, delim)) = line.split_once("<<") {
            let mut value = Vec::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == delim => break,
                    Some((_, l)) => value.push(l),
                    None => return Err(format!("line {}: `{delim}` that ends `{name}` never comes", n + 1)),
                }
            }
            (name, value.join("\n"))
        } else if let Some((name, value)) = line.split_once('=') {
            (name, value.to_string())
        } else {
            return Err(format!("line {}: expected `name=value` or `name<<DELIMITER`", n + 1));
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(format!("line {}: `{name}` is not a valid output name", n + 1));
        }
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_read_from_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        assert_eq!(read(&p("none")), Ok(None));
        std::fs::write(p("ok"), "a=1\n").unwrap();
        assert_eq!(read(&p("ok")), Ok(Some("a=1\n".into())));
        std::fs::write(p("secret"), "host file").unwrap();
        std::os::unix::fs::symlink(p("secret"), p("link")).unwrap();
        assert!(read(&p("link")).unwrap_err().contains("symbolic link"));
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read(&p("fifo")).unwrap_err().contains("not a regular file"));
        std::fs::write(p("big"), vec![b'x'; MAX_OUTPUTS_BYTES + 1]).unwrap();
        assert!(read(&p("big")).unwrap_err().contains("larger than"));
    }

    #[test]
    fn parses_lines_and_heredocs() {
        let o = parse("a=1\n\nb=x=y\nnotes<<EOF\none\ntwo\nEOF\n").unwrap();
        assert_eq!(o["a"], "1");
        assert_eq!(o["b"], "x=y");
        assert_eq!(o["notes"], "one\ntwo");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse("just text").unwrap_err().contains("line 1"));
        assert!(parse("x<<END\nnever").unwrap_err().contains("never comes"));
        assert!(parse("bad name=1").unwrap_err().contains("not a valid output name"));
    }
}
