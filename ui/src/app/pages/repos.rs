//! `/repos` and `/repos/:name`: repositories (hosted and mirrors); one
//! repository's details, recent runs, a form to run its pipeline at a
//! ref, and a link to its environments.

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use viaduct_proto::v1::{GetRepoRequest, ListReposRequest, ListRunsRequest, Repo};

use super::{
    RecentRuns,
    trigger::{Target, TriggerForm},
};
use crate::{
    app::{
        api::use_api,
        browser,
        live::load,
        widgets::{Ago, Empty, show_loadable},
    },
    deployments, time_format,
};

/// The list of repositories.
#[component]
pub fn ReposPage() -> impl IntoView {
    browser::set_title("Repositories · Viaduct");
    let api = use_api();
    let state = load(async move { api.check(api.repos().list(ListReposRequest {}).await).map(|r| r.repos) });
    view! {
        <section class="page" data-page="repos">
            <div class="page-head">
                <h1>"Repositories"</h1>
            </div>
            {move || {
                show_loadable(state.get(), |repos: Vec<Repo>| {
                    if repos.is_empty() {
                        view! {
                            <Empty title="No repositories">
                                "Add one with " <code>"viaduct repos create NAME"</code> " (hosted: push to it) or "
                                <code>"viaduct repos create NAME --mirror URL"</code> "."
                            </Empty>
                        }
                            .into_any()
                    } else {
                        view! {
                            <div class="item-list">
                                {repos
                                    .into_iter()
                                    .map(|r| {
                                        let href = format!("/repos/{}", r.name);
                                        let synced = time_format::timestamp_ms(r.last_sync.as_ref());
                                        let error = (!r.last_error.is_empty()).then(|| r.last_error.clone());
                                        view! {
                                            <a class="item" href=href data-repo=r.name.clone() data-nav-item="">
                                                <span class="item-title">{r.name.clone()}</span>
                                                <span class="pill">{r.kind.clone()}</span>
                                                <span class="muted">{r.default_branch.clone()}</span>
                                                <span class="muted small">"synced " <Ago at=synced /></span>
                                                {error.map(|e| view! { <span class="form-error small" title=e.clone()>"fetch failed"</span> })}
                                            </a>
                                        }
                                    })
                                    .collect_view()}
                            </div>
                        }
                            .into_any()
                    }
                })
            }}
        </section>
    }
}

/// One repository.
#[component]
pub fn RepoPage() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.with(|p| p.get("name").unwrap_or_default()));
    move || {
        let name = name.get();
        view! { <RepoView name /> }
    }
}

#[component]
fn RepoView(name: String) -> impl IntoView {
    browser::set_title(&format!("{name} · Repositories · Viaduct"));
    let api = use_api();
    let req = GetRepoRequest { name: name.clone() };
    let state = load(async move { api.check(api.repos().get(req).await) });
    view! {
        <section class="page" data-page="repo">
            <div class="page-head">
                <a class="back" href="/repos">"← Repositories"</a>
                <h1>{name.clone()}</h1>
                <div class="actions">
                    <a class="button" id="repo-environments" href=deployments::environments_href(&name)>"Environments"</a>
                </div>
            </div>
            {move || {
                show_loadable(state.get(), |r: Repo| {
                    let synced = time_format::timestamp_ms(r.last_sync.as_ref());
                    let recent = ListRunsRequest { repo: r.name.clone(), ..ListRunsRequest::default() };
                    let runs_href = format!("/?repo={}", crate::run_filter::encode(&r.name));
                    let target = Target::Repo { name: r.name.clone(), default_branch: r.default_branch.clone() };
                    view! {
                        <dl class="facts">
                            <div><dt>"Kind"</dt><dd>{r.kind.clone()}</dd></div>
                            <div><dt>"Default branch"</dt><dd>{r.default_branch.clone()}</dd></div>
                            {(!r.url.is_empty()).then(|| view! { <div><dt>"Remote"</dt><dd><code>{r.url.clone()}</code></dd></div> })}
                            {(!r.clone_url.is_empty()).then(|| view! { <div><dt>"Push to"</dt><dd><code>{r.clone_url.clone()}</code></dd></div> })}
                            {(!r.webhook_url.is_empty()).then(|| view! { <div><dt>"Webhook"</dt><dd><code>{r.webhook_url.clone()}</code></dd></div> })}
                            {(r.poll_interval_seconds > 0).then(|| view! { <div><dt>"Polls every"</dt><dd>{format!("{} s", r.poll_interval_seconds)}</dd></div> })}
                            <div><dt>"Last sync"</dt><dd><Ago at=synced /></dd></div>
                        </dl>
                        {(!r.last_error.is_empty()).then(|| view! { <div class="error-box"><strong>"The last fetch failed"</strong><pre>{r.last_error.clone()}</pre></div> })}
                        <div class="two-col">
                            <div>
                                <h2 class="section-title">
                                    "Recent runs " <a class="small" href=runs_href>"all →"</a>
                                </h2>
                                <RecentRuns request=recent empty="No runs of this repository yet." />
                            </div>
                            <div>
                                <TriggerForm target />
                            </div>
                        </div>
                    }
                })
            }}
        </section>
    }
}
