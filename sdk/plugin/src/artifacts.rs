//! The run's artifacts.

use crate::{Error, Result, host};

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Artifact name: the workspace-relative path, with its prefix replaced
    /// by the `name` given to [`upload`].
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Content digest, `blake3:<hex>`.
    pub digest: String,
}

/// Uploads a workspace file, or every file under a workspace directory, as
/// artifacts of the job. `name` replaces the path prefix in the artifact
/// names (`upload("target/doc", Some("docs"))` gives `docs/…`). Links
/// pointing out of the workspace are refused.
pub fn upload(path: &str, name: Option<&str>) -> Result<Vec<Uploaded>> {
    let uploaded =
        host::artifacts_upload(path, name).map_err(|e| Error::msg(format!("cannot upload `{path}`: {e}")))?;
    Ok(uploaded.into_iter().map(|u| Uploaded { name: u.name, size: u.size, digest: u.digest }).collect())
}
