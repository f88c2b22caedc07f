//! Workspace snapshots to and from the server (`SaveSnapshot`,
//! `RestoreSnapshot`): the pack streamed while [`crate::snapshot::take`]
//! writes it, the manifest after it; a restore fed to
//! [`crate::snapshot::restore`] as it arrives.

use std::{collections::HashSet, path::Path};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use viaduct_proto::v1::{
    JobRef, RestoreSnapshotRequest, SaveSnapshotRequest, SnapshotHeader, SnapshotManifest, save_snapshot_request::Part,
    snapshot_entry::Kind,
};

use super::{CHUNK, ChannelWriter, Files, status};
use crate::snapshot::{Known, Refused, TakeStats};

/// Most bytes of a manifest the runner accepts (the server's limit).
const MAX_MANIFEST: usize = 64 << 20;

/// A snapshot saved.
#[derive(Debug)]
pub struct SnapshotSaved {
    /// What the next snapshot of the job starts from.
    pub known: Known,
    /// What taking it cost.
    pub stats: TakeStats,
}

impl Files {
    /// Asks whether an earlier run's snapshot after `step` (which has
    /// `reuse:`) under `key` may start this attempt; the run it came from.
    pub async fn find_reuse(&self, job: &JobRef, step: u32, key: &str) -> Result<Option<String>, String> {
        let req =
            viaduct_proto::v1::FindReuseRequest { job: Some(job.clone()), step_index: step, key: key.to_string() };
        let found = self.client.agent().find_reuse(req).await.map_err(|s| status("looking for a snapshot", &s))?;
        let found = found.into_inner();
        Ok(found.found.then_some(found.run_id))
    }

    /// Takes a snapshot of `workspace` after `step` of `job` (incremental
    /// over `known`, refused when it would hold one of `secrets`) and
    /// saves it with `state` (the steps' outcomes and outputs, plugin
    /// states) as its manifest's job state. Entries at `source` paths (the
    /// checkout's) are marked as such; `reuse_key`: the step's (`reuse:`).
    pub async fn save_snapshot(
        &self,
        (job, step, reuse_key): (&JobRef, u32, &str),
        workspace: &Path,
        (known, secrets): (Known, Vec<String>),
        state: SnapshotManifest,
        source: &HashSet<Vec<u8>>,
    ) -> Result<SnapshotSaved, Refused> {
        let (tx, rx) = mpsc::channel::<SaveSnapshotRequest>(8);
        let header = SnapshotHeader { job: Some(job.clone()), step_index: step, reuse_key: reuse_key.to_string() };
        let header = Part::Header(header);
        let _ = tx.send(SaveSnapshotRequest { part: Some(header) }).await;
        let client = self.client.clone();
        let upload = tokio::spawn(async move { client.agent().save_snapshot(ReceiverStream::new(rx)).await });
        // The pack goes out as it is written.
        let (pack_tx, mut pack_rx) = mpsc::channel::<Vec<u8>>(8);
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(data) = pack_rx.recv().await {
                    if tx.send(SaveSnapshotRequest { part: Some(Part::Pack(data)) }).await.is_err() {
                        return;
                    }
                }
            })
        };
        let ws = workspace.to_path_buf();
        // Dropped unfinished (the step's stop): the upload ends, and with it
        // the pack's channel, which stops the walk.
        let _stop = AbortOnDrop([upload.abort_handle(), forward.abort_handle()]);
        let taken = tokio::task::spawn_blocking(move || {
            let mut out = ChannelWriter::new(pack_tx);
            let taken = crate::snapshot::take(&ws, &known, &secrets, &mut out)?;
            std::io::Write::flush(&mut out).map_err(|e| Refused::Error(format!("cannot send the pack: {e}")))?;
            Ok(taken)
        })
        .await
        .map_err(|e| Refused::Error(format!("the snapshot task failed: {e}")))
        .and_then(|r| r);
        let _ = forward.await;
        let mut taken = match taken {
            Ok(t) => t,
            Err(e) => {
                // Nothing of it may be recorded: drop the upload unfinished.
                upload.abort();
                return Err(e);
            }
        };
        let mut manifest = state;
        manifest.packs = std::mem::take(&mut taken.manifest.packs);
        manifest.entries = std::mem::take(&mut taken.manifest.entries);
        for e in &mut manifest.entries {
            e.source = source.contains(&e.path);
        }
        manifest.total_size = taken.manifest.total_size;
        manifest.step_index = step;
        let encoded = manifest.encode_to_vec();
        for chunk in encoded.chunks(CHUNK) {
            let _ = tx.send(SaveSnapshotRequest { part: Some(Part::Manifest(chunk.to_vec())) }).await;
        }
        drop(tx);
        let saved = upload
            .await
            .map_err(|e| Refused::Error(format!("the upload task failed: {e}")))?
            .map_err(|s| Refused::Error(status("saving the snapshot", &s)))?
            .into_inner();
        let mut known = taken.known;
        if !saved.pack_digest.is_empty() {
            known.pack_stored(&saved.pack_digest);
        }
        Ok(SnapshotSaved { known, stats: taken.stats })
    }

    /// Restores the snapshot `req` names (a resumed attempt's, or a debug
    /// session's) into the empty `workspace`; returns its manifest. With
    /// `overlay` (the paths a fresh checkout just put in the workspace: a
    /// reused snapshot), the snapshot's own checkout's files and anything
    /// at those paths are left out — the new checkout's stay — and the
    /// manifest returned holds only what was restored.
    pub async fn restore_snapshot(
        &self,
        req: RestoreSnapshotRequest,
        workspace: &Path,
        overlay: Option<&HashSet<Vec<u8>>>,
    ) -> Result<SnapshotManifest, String> {
        let mut stream = self
            .client
            .agent()
            .restore_snapshot(req)
            .await
            .map_err(|s| status("fetching the snapshot", &s))?
            .into_inner();
        let mut encoded = Vec::new();
        let mut first_pack = None;
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|s| status("fetching the snapshot", &s))?;
            if msg.manifest.is_empty() {
                first_pack = Some((msg.pack, msg.data));
                break;
            }
            if encoded.len() + msg.manifest.len() > MAX_MANIFEST {
                return Err(format!("the snapshot's manifest is over {MAX_MANIFEST} bytes"));
            }
            encoded.extend_from_slice(&msg.manifest);
        }
        let mut manifest = SnapshotManifest::decode(encoded.as_slice())
            .map_err(|e| format!("the snapshot's manifest does not decode: {e}"))?;
        if let Some(fresh) = overlay {
            overlaid(&mut manifest, fresh);
        }
        // A snapshot the disk cannot hold is refused before a byte is written.
        let size: u64 = manifest.entries.iter().map(|e| e.size).sum();
        if let Some(free) = crate::space::free(workspace).filter(|free| size > *free) {
            return Err(format!("the snapshot holds {size} bytes of files, and the work dir has {free} bytes free"));
        }
        // Packs the kept entries use: the others are read past.
        let used: HashSet<u32> = manifest.entries.iter().filter(|e| e.length > 0).map(|e| e.pack).collect();
        let (tx, mut rx) = mpsc::channel::<Result<(u32, Vec<u8>), String>>(8);
        let feed = tokio::spawn(async move {
            if let Some(first) = first_pack.filter(|(p, _)| used.contains(p))
                && tx.send(Ok(first)).await.is_err()
            {
                return;
            }
            while let Some(msg) = stream.next().await {
                let item = msg.map(|m| (m.pack, m.data)).map_err(|s| status("fetching the snapshot", &s));
                if item.as_ref().is_ok_and(|(p, _)| !used.contains(p)) {
                    continue;
                }
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        let (ws, m) = (workspace.to_path_buf(), manifest.clone());
        let restored =
            tokio::task::spawn_blocking(move || crate::snapshot::restore(&ws, &m, || rx.blocking_recv().transpose()))
                .await
                .map_err(|e| format!("the restore task failed: {e}"))?;
        feed.abort();
        let stats = restored?;
        tracing::info!(?stats, "snapshot restored");
        Ok(manifest)
    }
}

/// What of a snapshot goes over a fresh checkout whose entries are
/// `fresh`: not the files and links its own checkout had (the new one has
/// its versions, or deleted them), nor anything at a path the new checkout
/// holds; directories only when not its checkout's, or something kept is
/// beneath them.
fn overlaid(manifest: &mut SnapshotManifest, fresh: &HashSet<Vec<u8>>) {
    let directory = Kind::Directory as i32;
    manifest.entries.retain(|e| e.kind == directory || !(e.source || fresh.contains(&e.path)));
    let mut needed: HashSet<Vec<u8>> = HashSet::new();
    for e in manifest.entries.iter().filter(|e| e.kind != directory) {
        let mut path = e.path.as_slice();
        while let Some(cut) = path.iter().rposition(|b| *b == b'/') {
            path = &path[..cut];
            if !needed.insert(path.to_vec()) {
                break;
            }
        }
    }
    manifest.entries.retain(|e| e.kind != directory || !e.source || needed.contains(&e.path));
}

/// Aborts tasks when dropped.
struct AbortOnDrop<const N: usize>([tokio::task::AbortHandle; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
