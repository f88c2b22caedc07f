//! `/pipelines` and `/pipelines/:name`: stored pipelines; one pipeline's
//! YAML, jobs, recent runs, and the form that starts it.

use leptos::{prelude::*, task::spawn_local};
use leptos_router::hooks::use_params_map;
use viaduct_proto::v1::{GetPipelineRequest, ListPipelinesRequest, ListRunsRequest, PageRequest, Pipeline};

use super::{
    RecentRuns,
    trigger::{Target, TriggerForm},
};
use crate::{
    app::{
        api::use_api,
        browser,
        live::{Loadable, load, spawn_scoped},
        widgets::{Ago, Empty, show_loadable},
    },
    pipeline_inputs, time_format,
};

fn updated(p: &Pipeline) -> Option<i64> {
    let t = p.times.as_ref();
    time_format::timestamp_ms(
        t.and_then(|t| t.finished_at.as_ref().or(t.started_at.as_ref()).or(t.created_at.as_ref())),
    )
}

/// The list of stored pipelines.
#[component]
pub fn PipelinesPage() -> impl IntoView {
    browser::set_title("Pipelines · Viaduct");
    let api = use_api();
    let state: RwSignal<Loadable<(Vec<Pipeline>, String)>> = RwSignal::new(Loadable::Loading);
    let load = {
        let api = api.clone();
        move |token: String| {
            let api = api.clone();
            async move {
                let req =
                    ListPipelinesRequest { page: Some(PageRequest { page_size: 100, page_token: token.clone() }) };
                match api.check(api.pipelines().list(req).await) {
                    Ok(r) => state.update(|s| match s {
                        Loadable::Ready((list, next)) if !token.is_empty() => {
                            list.extend(r.pipelines);
                            *next = r.next_page_token;
                        }
                        s => *s = Loadable::Ready((r.pipelines, r.next_page_token)),
                    }),
                    Err(e) => state.set(Loadable::Failed(e)),
                }
            }
        }
    };
    spawn_scoped(load(String::new()));
    let more = move |_| {
        if let Some(token) = state.with_untracked(|s| s.ready().map(|(_, t)| t.clone())).filter(|t| !t.is_empty()) {
            spawn_local(load(token));
        }
    };
    view! {
        <section class="page" data-page="pipelines">
            <div class="page-head">
                <h1>"Pipelines"</h1>
            </div>
            {move || {
                show_loadable(state.get(), |(list, _): (Vec<Pipeline>, String)| {
                    if list.is_empty() {
                        view! {
                            <Empty title="No stored pipelines">
                                "Store one with " <code>"viaduct pipelines create NAME FILE"</code>
                                " to start it from here. Repositories run their own "
                                <code>".viaduct/pipeline.yml"</code> "."
                            </Empty>
                        }
                            .into_any()
                    } else {
                        view! {
                            <div class="item-list">
                                {list
                                    .into_iter()
                                    .map(|p| {
                                        let href = format!("/pipelines/{}", p.name);
                                        let jobs = p.jobs.len();
                                        let when = updated(&p);
                                        view! {
                                            <a class="item" href=href data-pipeline=p.name.clone() data-nav-item="">
                                                <span class="item-title">{p.name.clone()}</span>
                                                <span class="muted">{format!("{jobs} job{}", if jobs == 1 { "" } else { "s" })}</span>
                                                <span class="muted small">"updated " <Ago at=when /></span>
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
            <Show when=move || state.with(|s| s.ready().is_some_and(|(_, t)| !t.is_empty()))>
                <div class="more"><button class="button" on:click=more.clone()>"More pipelines"</button></div>
            </Show>
        </section>
    }
}

/// One stored pipeline.
#[component]
pub fn PipelinePage() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.with(|p| p.get("name").unwrap_or_default()));
    move || {
        let name = name.get();
        view! { <PipelineView name /> }
    }
}

#[component]
fn PipelineView(name: String) -> impl IntoView {
    browser::set_title(&format!("{name} · Pipelines · Viaduct"));
    let api = use_api();
    let req = GetPipelineRequest { name: name.clone() };
    let state = load(async move { api.check(api.pipelines().get(req).await) });
    view! {
        <section class="page" data-page="pipeline">
            <div class="page-head">
                <a class="back" href="/pipelines">"← Pipelines"</a>
                <h1>{name.clone()}</h1>
            </div>
            {move || {
                show_loadable(state.get(), |p: Pipeline| {
                    let info = pipeline_inputs::inspect(&p.yaml);
                    let run_name = info
                        .as_ref()
                        .map(|i| i.name.clone())
                        .filter(|n| !n.contains("${{"))
                        .unwrap_or_else(|| p.name.clone());
                    let manual = info.as_ref().is_none_or(|i| i.manual);
                    let inputs = info.map(|i| i.inputs).unwrap_or_default();
                    let target = Target::Pipeline { name: p.name.clone(), inputs };
                    let when = updated(&p);
                    let recent = ListRunsRequest { pipeline: run_name.clone(), ..ListRunsRequest::default() };
                    let runs_href = format!("/?pipeline={}", crate::run_filter::encode(&run_name));
                    view! {
                        <p class="muted">
                            {format!("{} job{}: {}", p.jobs.len(), if p.jobs.len() == 1 { "" } else { "s" }, p.jobs.join(", "))}
                            " · updated " <Ago at=when />
                        </p>
                        <div class="two-col">
                            <div>
                                {if manual {
                                    view! { <TriggerForm target /> }.into_any()
                                } else {
                                    view! {
                                        <div class="card muted">
                                            "This pipeline's " <code>"on:"</code>
                                            " has no " <code>"manual"</code> " trigger, so it cannot be started by hand."
                                        </div>
                                    }
                                        .into_any()
                                }}
                                <h2 class="section-title">
                                    "Recent runs " <a class="small" href=runs_href>"all →"</a>
                                </h2>
                                <RecentRuns request=recent empty=format!("No runs named “{run_name}” yet.") />
                            </div>
                            <div>
                                <h2 class="section-title">"Definition"</h2>
                                <pre class="yaml"><code>{p.yaml.clone()}</code></pre>
                            </div>
                        </div>
                    }
                })
            }}
        </section>
    }
}
