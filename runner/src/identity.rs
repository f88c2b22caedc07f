//! Who this runner is to its server: an id and a runner token from
//! `RunnerAgent.Register`, kept in `WORK_DIR/runner.json` (mode 0600) so a
//! restarted runner is the same runner.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use viaduct_proto::v1::RegisterRequest;

/// What a runner asks for when it registers; the server pins it (later
/// connections can ask only for less, and an admin changes it).
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// Shown to admins.
    pub name: String,
    /// Labels jobs select it by.
    pub labels: Vec<String>,
    /// Take only jobs of trusted runs.
    pub protected: bool,
    /// Jobs at once.
    pub slots: u32,
    /// Executors it offers.
    pub executors: Vec<viaduct_proto::v1::Executor>,
    /// Takes one job, then is removed (its identity is not stored).
    pub ephemeral: bool,
}

/// A registered runner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The server it registered with.
    pub server: String,
    /// Its id there.
    pub runner_id: String,
    /// Its secret runner token.
    pub token: String,
}

fn path(work_dir: &Path) -> PathBuf {
    work_dir.join("runner.json")
}

impl Identity {
    /// The stored identity for `server`, if any.
    pub fn load(work_dir: &Path, server: &str) -> Option<Self> {
        let text = std::fs::read_to_string(path(work_dir)).ok()?;
        serde_json::from_str::<Self>(&text).ok().filter(|i| i.server == server)
    }

    /// Registers with `registration_token` at `server`, asking for what
    /// `asked` says (the server pins it), and stores the identity (unless
    /// ephemeral) as the identity for `known_as` (the `--server` value).
    pub async fn register(
        work_dir: &Path,
        (server, known_as): (&str, &str),
        transport: &viaduct_sdk::Transport,
        registration_token: &str,
        asked: &Asked,
    ) -> anyhow::Result<Self> {
        let client = viaduct_sdk::Client::connect_with(server, None, transport).await?;
        let resp = client
            .agent()
            .register(RegisterRequest {
                registration_token: registration_token.trim().to_string(),
                name: asked.name.clone(),
                labels: asked.labels.clone(),
                hostname: crate::hostname(),
                protected: asked.protected,
                slots: asked.slots,
                executors: asked.executors.iter().map(|e| *e as i32).collect(),
                ephemeral: asked.ephemeral,
            })
            .await
            .map_err(viaduct_sdk::Error::from)?
            .into_inner();
        let id = Self { server: known_as.to_string(), runner_id: resp.runner_id, token: resp.runner_token };
        if !asked.ephemeral {
            id.save(work_dir)?;
        }
        tracing::info!(runner = %id.runner_id, "registered with the server");
        Ok(id)
    }

    fn save(&self, work_dir: &Path) -> std::io::Result<()> {
        let p = path(work_dir);
        let tmp = p.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        f.write_all(serde_json::to_string_pretty(self).map_err(std::io::Error::other)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, p)
    }
}
