//! `/admin`: the server for its operators (admins) — version, store size
//! per tree, disk, queue and runners, the last retention pass and what a
//! pass would remove now — from `Admin.Status`, with a retention preview
//! (`Admin.Prune` as a dry run).

use leptos::{prelude::*, task::spawn_local};
use viaduct_proto::v1::{AdminStatus, AdminStatusRequest, PruneReport, PruneRequest};

use super::run::human_size;
use crate::{
    app::{
        api::{ApiError, use_api},
        browser,
        live::{Loadable, load},
        widgets::{Ago, ErrorBox, show_loadable},
    },
    time_format,
};

/// The admin page.
#[component]
pub fn AdminPage() -> impl IntoView {
    browser::set_title("Admin · Viaduct");
    let api = use_api();
    let status_api = api.clone();
    let status: RwSignal<Loadable<AdminStatus>> =
        load(async move { status_api.check(status_api.admin().status(AdminStatusRequest {}).await) });
    let preview = RwSignal::new(None::<Result<PruneReport, ApiError>>);
    let previewing = RwSignal::new(false);
    let run_preview = move |_| {
        if previewing.get_untracked() {
            return;
        }
        previewing.set(true);
        let api = api.clone();
        spawn_local(async move {
            let r = api.check(api.admin().prune(PruneRequest { dry_run: true }).await);
            previewing.set(false);
            if !preview.is_disposed() {
                preview.set(Some(r));
            }
        });
    };
    view! {
        <section class="page" data-page="admin">
            <div class="page-head">
                <h1>"Admin"</h1>
            </div>
            {move || show_loadable(status.get(), |s: AdminStatus| view! { <Status s=s /> })}
            <h2 class="section-title">"Retention"</h2>
            <p class="muted">
                "What a retention pass would remove now, by the server's rules and each repository's and pipeline's: nothing is removed."
            </p>
            <button id="retention-preview" class="button" on:click=run_preview disabled=move || previewing.get()>
                "Preview a pass"
            </button>
            {move || match preview.get() {
                None => ().into_any(),
                Some(Err(e)) => view! { <ErrorBox error=e /> }.into_any(),
                Some(Ok(r)) => view! { <Prune report=r /> }.into_any(),
            }}
        </section>
    }
}

/// The server's state.
#[component]
fn Status(s: AdminStatus) -> impl IntoView {
    let started = time_format::timestamp_ms(s.started_at.as_ref());
    let disk = if s.refusing_new_work {
        format!(
            "{} free — under the floor of {}: new work is refused",
            human_size(s.disk_free_bytes),
            human_size(s.min_free_disk_bytes)
        )
    } else {
        format!("{} free (floor {})", human_size(s.disk_free_bytes), human_size(s.min_free_disk_bytes))
    };
    let total: u64 = s.trees.iter().map(|t| t.bytes).sum();
    let files = if s.store_file_bytes > 0 {
        format!("{} in files, {} live", human_size(s.store_file_bytes), human_size(total))
    } else {
        format!("{} live", human_size(total))
    };
    let last = s.last_prune.map(|p| {
        format!(
            "{} runs removed of {} examined, {} freed, in {}",
            p.runs_removed,
            p.runs_examined,
            human_size(p.bytes_removed),
            time_format::duration(i64::try_from(p.took_ms).unwrap_or(i64::MAX))
        )
    });
    view! {
        <dl class="kv" id="admin-status">
            <dt>"Version"</dt><dd data-field="version">{s.version.clone()}</dd>
            <dt>"Up since"</dt><dd><Ago at=started /></dd>
            <dt>"Store"</dt><dd data-field="store">{format!("{} · {files}", s.store)}</dd>
            <dt>"Disk"</dt><dd data-field="disk" class=if s.refusing_new_work { "danger" } else { "" }>{disk}</dd>
            <dt>"Jobs"</dt><dd>{format!("{} queued, {} running", s.queued_jobs, s.running_jobs)}</dd>
            <dt>"Runners"</dt><dd>{format!("{} connected, {} slots taking jobs", s.runners_connected, s.runner_slots)}</dd>
            <dt>"Retention"</dt>
            <dd data-field="retention">
                {format!("{} runs would go in a pass now", s.retention_backlog)}
                {last.map(|l| format!(" · last pass: {l}"))}
            </dd>
        </dl>
        <h2 class="section-title">"Store"</h2>
        <div class="table-wrap">
            <table class="table" id="admin-trees">
                <thead><tr><th>"Tree"</th><th class="num">"Records"</th><th class="num">"Size"</th></tr></thead>
                <tbody>
                    {s.trees
                        .into_iter()
                        .map(|t| view! {
                            <tr data-tree=t.name.clone()>
                                <td>{t.name.clone()}</td>
                                <td class="num">{t.records}</td>
                                <td class="num">{human_size(t.bytes)}</td>
                            </tr>
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}

/// What a pass would remove.
#[component]
fn Prune(report: PruneReport) -> impl IntoView {
    let kept = [
        ("unfinished", report.kept_unfinished),
        ("among the last of their pipeline", report.kept_last),
        ("last success of their branch", report.kept_last_success),
        ("recent", report.kept_recent),
        ("kept forever", report.kept_forever),
    ];
    view! {
        <div id="retention-report">
            <p>
                {format!(
                    "{} of {} runs would be removed ({} records, {}), and {} event batches.",
                    report.runs_removed,
                    report.runs_examined,
                    report.records_removed,
                    human_size(report.bytes_removed),
                    report.event_batches_removed
                )}
            </p>
            <p class="muted">
                "Kept: "
                {kept.iter().map(|(why, n)| format!("{n} {why}")).collect::<Vec<_>>().join(", ")}
            </p>
        </div>
    }
}
