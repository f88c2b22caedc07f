//! Release ids and the release bookkeeping shared by the deploy plugins
//! (`deploy` on the runner's deploy directory, `ssh-deploy` on remote
//! hosts): names, default ids, which release a rollback goes back to and
//! which releases pruning removes. Pure functions over names; the plugins
//! do the file operations.

use std::collections::{BTreeMap, BTreeSet};

use crate::time::Utc;

/// Checks a target or release name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most
/// 128 bytes — a single path component that cannot be `..` or hidden, and
/// needs no quoting in a shell. `what` names the input in the error.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{what}` must be a simple name (letters, digits, `.`, `_`, `-`, starting with a letter or digit; no `/`): `{name}`"
        ))
    }
}

/// The default release id: `<UTC yyyymmddThhmmssZ>-<commit12>`, the first
/// 12 characters of `commit` (letters and digits only); just the time
/// without a commit.
pub fn default_id(at: Utc, commit: &str) -> String {
    let commit: String = commit.chars().take(12).filter(char::is_ascii_alphanumeric).collect();
    if commit.is_empty() { at.compact() } else { format!("{}-{commit}", at.compact()) }
}

/// The release to roll back to from `current`: the one deployed before
/// `current`'s latest deploy that is still on disk. `deploys` are the
/// releases of every deploy, oldest first (a deployment log's `deploy`
/// records; rollbacks are not deploys). Rolling back repeatedly walks
/// further back.
pub fn rollback_target(deploys: &[&str], current: &str, on_disk: &BTreeSet<String>) -> Result<String, String> {
    let at = deploys.iter().rposition(|r| *r == current).ok_or_else(|| {
        format!("the current release `{current}` was not deployed by this plugin (it is not in the log)")
    })?;
    deploys[..at]
        .iter()
        .rev()
        .find(|r| **r != current && on_disk.contains(**r))
        .map(|r| (*r).to_owned())
        .ok_or_else(|| format!("no earlier release than `{current}` is left to roll back to"))
}

/// The releases of `on_disk` that pruning to `keep` removes: all but the
/// newest `keep` (newest by their latest deploy in `deploys`, oldest
/// first; releases missing from it count as oldest, by name), never one in
/// `protect`. In the order they rank, newest first.
pub fn prunable(on_disk: &[String], deploys: &[&str], keep: usize, protect: &[&str]) -> Vec<String> {
    let mut order: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in deploys.iter().enumerate() {
        order.insert(r, i + 1);
    }
    let mut releases: Vec<&String> = on_disk.iter().collect();
    // Newest first.
    releases.sort_by(|a, b| {
        let (oa, ob) = (order.get(a.as_str()).copied().unwrap_or(0), order.get(b.as_str()).copied().unwrap_or(0));
        ob.cmp(&oa).then_with(|| b.cmp(a))
    });
    releases
        .into_iter()
        .enumerate()
        .filter(|(i, name)| *i >= keep && !protect.contains(&name.as_str()))
        .map(|(_, name)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names() {
        for ok in ["web", "api-v2", "a.b_c", "0", "20250101T000000Z-0123456789ab"] {
            check_name("target", ok).unwrap();
        }
        for bad in ["", "..", ".hidden", "a/b", "-x", "a b", "../x", "a'b", "$(x)", &"x".repeat(129)] {
            assert!(check_name("target", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("release", "../x").unwrap_err().starts_with("`release` must be a simple name"));
    }

    #[test]
    fn default_ids() {
        let at = Utc::from_unix(1_735_689_600);
        assert_eq!(default_id(at, "0123456789abcdef"), "20250101T000000Z-0123456789ab");
        assert_eq!(default_id(at, ""), "20250101T000000Z");
        assert_eq!(default_id(at, "ab/../cd"), "20250101T000000Z-abcd");
    }

    #[test]
    fn rollback_walks_back_through_deploys() {
        let deploys = ["a", "b", "c"];
        let disk = set(&["a", "b", "c"]);
        assert_eq!(rollback_target(&deploys, "c", &disk).unwrap(), "b");
        assert_eq!(rollback_target(&deploys, "b", &disk).unwrap(), "a");
        assert!(rollback_target(&deploys, "a", &disk).unwrap_err().contains("no earlier release"));
        assert!(rollback_target(&deploys, "c", &set(&["c"])).is_err(), "a and b are gone");
        assert!(rollback_target(&deploys, "zz", &disk).unwrap_err().contains("not in the log"));
        assert_eq!(rollback_target(&["a", "b", "a"], "a", &disk).unwrap(), "b");
    }

    #[test]
    fn prune_keeps_newest_and_protected() {
        let disk: Vec<String> = ["a", "b", "c", "d", "manual"].iter().map(|s| s.to_string()).collect();
        assert_eq!(prunable(&disk, &["a", "b", "c", "d"], 2, &["a"]), ["b", "manual"]);
        assert_eq!(prunable(&disk, &["a", "b", "c", "d"], 10, &[]), Vec::<String>::new());
        assert_eq!(prunable(&disk, &[], 3, &[]), ["b", "a"], "unknown ones by name, newest name first");
    }
}
