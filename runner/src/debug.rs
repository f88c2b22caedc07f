//! Debug shells the server assigns (`DebugAssignment`): the job's
//! environment prepared as for the job (its image for a container job),
//! the snapshot restored into its fresh workspace, a shell on a terminal in
//! it, and the terminal relayed over `RunnerAgent.DebugSession` until the
//! shell exits, the server closes it, or its time limit passes. Then the
//! environment is torn down like a job's.
//!
//! A shell never gets a secret: the assignment's environment has none (the
//! server leaves them out, and snapshots never hold one).

use std::{collections::BTreeMap, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tracing::Instrument;
use viaduct_proto::v1::{
    DebugAssignment, DebugFromRunner, DebugReady, JobRef, ShellEnded, debug_from_runner::Msg as Out,
    debug_to_runner::Msg as In,
};

use crate::{
    executor::{JobEnv, JobSetup, ShellControl, ShellSpec},
    job::Services,
};

/// Runs one debug session to its end.
pub async fn run(d: DebugAssignment, services: Services) {
    let span = tracing::info_span!("debug_shell", session = %d.session_id, job = %d.job.as_ref().map(|j| j.job_id.as_str()).unwrap_or(""));
    serve(d, services).instrument(span).await;
}

async fn serve(d: DebugAssignment, services: Services) {
    let id = d.session_id.clone();
    let (tx, rx) = mpsc::channel::<DebugFromRunner>(64);
    let _ = tx.send(DebugFromRunner { msg: Some(Out::SessionId(id.clone())) }).await;
    let mut inbound = match services.files.client().agent().debug_session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::warn!(session = %id, error = %viaduct_sdk::status_line(&e), "cannot open the debug session");
            return;
        }
    };
    if d.live {
        let (job_id, attempt) = d.job.as_ref().map(|j| (j.job_id.clone(), j.attempt)).unwrap_or_default();
        let Some(mut env) = services.held.take(&job_id, attempt) else {
            let why = format!(
                "this runner no longer holds job {job_id}'s workspace (its time passed, the runner restarted, or a \
                 shell has it)"
            );
            return ended(tx, inbound, None, &why).await;
        };
        let (code, why) = match serve_shell(&d, &services, env.as_mut(), &tx, &mut inbound).await {
            Ok(end) => end,
            Err(e) => (None, e),
        };
        services.held.give_back(&job_id, attempt, env).await;
        tracing::info!(session = %id, exit_code = code, message = %why, "live debug shell ended");
        return ended(tx, inbound, code, &why).await;
    }
    let setup = JobSetup {
        // The session's own directory and cgroup.
        job: JobRef { job_id: id.clone(), attempt: 0, grant: String::new() },
        image: d.image.clone(),
        services: Vec::new(),
        network: d.network.clone(),
        cpus: d.cpus,
        memory_bytes: d.memory_bytes,
        registry_auth: d.registry_auth.clone(),
        env: d.env.clone().into_iter().collect(),
    };
    let mut env = match services.backend.setup(&setup).await {
        Ok(e) => e,
        Err(e) => return ended(tx, inbound, None, &format!("could not prepare the job's environment: {e}")).await,
    };
    let (code, why) = match prepare_and_serve(&d, &services, env.as_mut(), &tx, &mut inbound).await {
        Ok(end) => end,
        Err(e) => (None, e),
    };
    env.teardown().await;
    tracing::info!(session = %id, exit_code = code, message = %why, "debug shell ended");
    ended(tx, inbound, code, &why).await;
}

/// Tells the server how the session ended, and lets the call finish (the
/// server ends its side once it has the message).
async fn ended(
    tx: mpsc::Sender<DebugFromRunner>,
    mut inbound: tonic::Streaming<viaduct_proto::v1::DebugToRunner>,
    exit_code: Option<i32>,
    message: &str,
) {
    let msg = Out::Ended(ShellEnded { exit_code, message: message.to_string() });
    let _ = tx.send(DebugFromRunner { msg: Some(msg) }).await;
    drop(tx);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while let Some(Ok(_)) = inbound.next().await {} }).await;
}

/// Restores the snapshot, starts the shell and relays it; how it ended.
async fn prepare_and_serve(
    d: &DebugAssignment,
    services: &Services,
    env: &mut dyn JobEnv,
    tx: &mpsc::Sender<DebugFromRunner>,
    inbound: &mut tonic::Streaming<viaduct_proto::v1::DebugToRunner>,
) -> Result<(Option<i32>, String), String> {
    let workspace = env.workspace();
    let req = viaduct_proto::v1::RestoreSnapshotRequest { job: None, debug_session: d.session_id.clone() };
    services
        .files
        .restore_snapshot(req, &workspace, None)
        .await
        .map_err(|e| format!("could not restore the snapshot: {e}"))?;
    env.adopt_workspace().await;
    serve_shell(d, services, env, tx, inbound).await
}

/// Starts the shell in `env` and relays it; how it ended.
async fn serve_shell(
    d: &DebugAssignment,
    services: &Services,
    env: &mut dyn JobEnv,
    tx: &mpsc::Sender<DebugFromRunner>,
    inbound: &mut tonic::Streaming<viaduct_proto::v1::DebugToRunner>,
) -> Result<(Option<i32>, String), String> {
    let size = d.size.unwrap_or_default();
    let clamp = |v: u32, default: u16| if v == 0 { default } else { u16::try_from(v.min(1000)).unwrap_or(default) };
    let mut shell_env: BTreeMap<String, String> = services.env.for_job(d.image.is_some());
    shell_env.extend(d.env.clone());
    // What would run code of the job's choosing in the user's session
    // before the user types anything.
    for name in ["BASH_ENV", "ENV", "PROMPT_COMMAND", "LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"] {
        shell_env.remove(name);
    }
    // A slot user has no name to show: say where the shell is instead.
    shell_env.entry("PS1".into()).or_insert_with(|| "debug:\\W\\$ ".into());
    let spec =
        ShellSpec { env: shell_env, term: d.term.clone(), cols: clamp(size.cols, 80), rows: clamp(size.rows, 24) };
    let mut shell = env.shell(&spec).await.map_err(|e| format!("could not start a shell: {e}"))?;
    let _ = tx.send(DebugFromRunner { msg: Some(Out::Ready(DebugReady {})) }).await;
    let limit = tokio::time::sleep(Duration::from_millis(d.timeout_ms.max(1)));
    tokio::pin!(limit);
    let mut closing: Option<String> = None;
    loop {
        tokio::select! {
            out = shell.output.recv() => match out {
                Some(data) => {
                    if tx.send(DebugFromRunner { msg: Some(Out::Data(data)) }).await.is_err() {
                        let _ = shell.control.send(ShellControl::Close).await;
                        closing.get_or_insert_with(|| "the server went away".into());
                    }
                }
                None => break,
            },
            msg = inbound.next(), if closing.is_none() => {
                let control = match msg {
                    Some(Ok(m)) => match m.msg {
                        Some(In::Data(d)) => ShellControl::Input(d),
                        Some(In::Resize(s)) => ShellControl::Resize { cols: clamp(s.cols, 80), rows: clamp(s.rows, 24) },
                        Some(In::Signal(s)) => ShellControl::Signal(s),
                        Some(In::Close(why)) => {
                            closing = Some(why);
                            ShellControl::Close
                        }
                        None => continue,
                    },
                    Some(Err(_)) | None => {
                        closing = Some("the server went away".into());
                        ShellControl::Close
                    }
                };
                let _ = shell.control.send(control).await;
            },
            () = &mut limit, if closing.is_none() => {
                closing = Some("time limit reached".into());
                let _ = shell.control.send(ShellControl::Close).await;
            }
        }
    }
    let exit = shell.ended.await.map_err(|_| "the shell's end was lost".to_string())?;
    let message = closing.unwrap_or(exit.message);
    Ok((exit.exit_code, message))
}
