//! `/`: every run, newest first, live through `Runs.Watch`, with filters in
//! the URL query and paging.

use leptos::{prelude::*, task::spawn_local};
use leptos_router::{
    NavigateOptions,
    hooks::{use_navigate, use_query_map},
};
use viaduct_proto::{
    StatusWord,
    v1::{ListRunsRequest, PageRequest, Status},
};

use super::{RunRow, row_key};
use crate::{
    app::{
        api::{Api, use_api},
        browser,
        live::{Loadable, sync_with_watch},
        widgets::{Empty, show_loadable},
    },
    run_filter::RunFilter,
    run_model::RunList,
};

/// Runs per page.
const PAGE_SIZE: u32 = 50;

/// The choices of the status filter: label, query value.
const STATUS_CHOICES: &[(&str, &str)] = &[
    ("Any status", ""),
    ("Active", "pending,queued,running"),
    ("Queued", "queued"),
    ("Running", "running"),
    ("Succeeded", "success"),
    ("Failed", "failure"),
    ("Timed out", "timed_out"),
    ("Runner lost", "runner_lost"),
    ("Cancelled", "cancelled"),
    ("Skipped", "skipped"),
];

fn list_request(filter: &RunFilter, page_token: String) -> ListRunsRequest {
    ListRunsRequest {
        statuses: filter.statuses.iter().map(|s| *s as i32).collect(),
        pipeline: filter.pipeline.clone(),
        repo: filter.repo.clone(),
        branch: filter.branch.clone(),
        page: Some(PageRequest { page_size: PAGE_SIZE, page_token }),
    }
}

/// The runs page.
#[component]
pub fn RunsPage() -> impl IntoView {
    browser::set_title("Runs · Viaduct");
    let query = use_query_map();
    let filter = Memo::new(move |_| {
        query.with(|q| {
            RunFilter::from_pairs(
                ["status", "pipeline", "repo", "branch"].into_iter().filter_map(|k| q.get_str(k).map(|v| (k, v))),
            )
        })
    });
    view! {
        <section class="page" data-page="runs">
            <div class="page-head">
                <h1>"Runs"</h1>
            </div>
            <Filters filter=filter />
            {move || {
                let f = filter.get();
                view! { <LiveRuns filter=f /> }
            }}
        </section>
    }
}

/// The filter bar; changes go to the URL.
#[component]
fn Filters(filter: Memo<RunFilter>) -> impl IntoView {
    let navigate = use_navigate();
    let set = move |change: &dyn Fn(&mut RunFilter)| {
        let mut f = filter.get_untracked();
        change(&mut f);
        let q = f.to_query();
        let to = if q.is_empty() { "/".to_string() } else { format!("/?{q}") };
        navigate(&to, NavigateOptions { replace: true, scroll: false, ..NavigateOptions::default() });
    };
    let set_status = set.clone();
    let set_pipeline = set.clone();
    let set_repo = set.clone();
    let set_branch = set.clone();
    let clear = set.clone();
    let status_value = move || {
        let words: Vec<&str> = filter.get().statuses.iter().map(|s| s.word()).collect();
        words.join(",")
    };
    let text = move |f: fn(&RunFilter) -> String| move || f(&filter.get());
    view! {
        <form class="filters" on:submit=|e| e.prevent_default()>
            <label class="field">
                <span>"Status"</span>
                <select
                    prop:value=status_value
                    on:change=move |e| {
                        let v = event_target_value(&e);
                        set_status(&|f: &mut RunFilter| {
                            f.statuses = v.split(',').filter_map(Status::from_word).collect();
                        });
                    }
                >
                    {STATUS_CHOICES
                        .iter()
                        .map(|(label, value)| {
                            view! {
                                <option value=*value selected=move || status_value() == *value>
                                    {*label}
                                </option>
                            }
                        })
                        .collect_view()}
                    // A combination from the URL that no choice names.
                    {move || {
                        let v = status_value();
                        (!STATUS_CHOICES.iter().any(|(_, c)| *c == v))
                            .then(|| view! { <option value=v.clone() selected=true>{v.replace(',', ", ")}</option> })
                    }}
                </select>
            </label>
            <label class="field">
                <span>"Pipeline"</span>
                <input
                    type="search"
                    data-search=""
                    placeholder="any"
                    prop:value=text(|f| f.pipeline.clone())
                    on:change=move |e| {
                        let v = event_target_value(&e).trim().to_string();
                        set_pipeline(&|f: &mut RunFilter| f.pipeline = v.clone());
                    }
                />
            </label>
            <label class="field">
                <span>"Repo"</span>
                <input
                    type="search"
                    placeholder="any"
                    prop:value=text(|f| f.repo.clone())
                    on:change=move |e| {
                        let v = event_target_value(&e).trim().to_string();
                        set_repo(&|f: &mut RunFilter| f.repo = v.clone());
                    }
                />
            </label>
            <label class="field">
                <span>"Branch"</span>
                <input
                    type="search"
                    placeholder="any"
                    prop:value=text(|f| f.branch.clone())
                    on:change=move |e| {
                        let v = event_target_value(&e).trim().to_string();
                        set_branch(&|f: &mut RunFilter| f.branch = v.clone());
                    }
                />
            </label>
            <Show when=move || !filter.get().is_empty()>
                {
                    let clear = clear.clone();
                    view! {
                        <button type="button" class="button subtle" on:click=move |_| clear(&|f: &mut RunFilter| *f = RunFilter::default())>
                            "Clear filters"
                        </button>
                    }
                }
            </Show>
        </form>
    }
}

/// The live list for one set of filters.
#[component]
fn LiveRuns(filter: RunFilter) -> impl IntoView {
    let api = use_api();
    let state: RwSignal<Loadable<RunList>> = RwSignal::new(Loadable::Loading);
    let load_filter = filter.clone();
    let apply_filter = filter.clone();
    sync_with_watch(
        api.clone(),
        String::new(),
        state,
        move |api: Api| {
            let req = list_request(&load_filter, String::new());
            Box::pin(async move {
                let r = api.check(api.runs().list(req).await)?;
                Ok(RunList { runs: r.runs, next_page: r.next_page_token })
            })
        },
        move |list: &mut RunList, ev| list.apply(ev, &apply_filter),
    );
    let loading_more = RwSignal::new(false);
    let more_error = RwSignal::new(None::<String>);
    let more_filter = filter.clone();
    let load_more = move |_| {
        let Some(token) = state.with_untracked(|s| s.ready().map(|l| l.next_page.clone())) else { return };
        if token.is_empty() || loading_more.get_untracked() {
            return;
        }
        loading_more.set(true);
        let api = api.clone();
        let req = list_request(&more_filter, token);
        spawn_local(async move {
            let r = api.check(api.runs().list(req).await);
            loading_more.set(false);
            match r {
                Ok(r) => {
                    more_error.set(None);
                    state.update(|s| {
                        if let Loadable::Ready(list) = s {
                            list.extend(r.runs, r.next_page_token);
                        }
                    });
                }
                Err(e) => more_error.set(Some(e.to_string())),
            }
        });
    };
    let filtered = !filter.is_empty();
    let runs = move || state.with(|s| s.ready().map(|l| l.runs.clone()).unwrap_or_default());
    let has_more = move || state.with(|s| s.ready().is_some_and(|l| !l.next_page.is_empty()));
    // Loading / failed / empty / some: re-render the frame only when this
    // changes; the rows update by themselves.
    let phase = Memo::new(move |_| {
        state.with(|s| match s {
            Loadable::Ready(l) => Loadable::Ready(l.runs.is_empty()),
            Loadable::Loading => Loadable::Loading,
            Loadable::Failed(e) => Loadable::Failed(e.clone()),
        })
    });
    view! {
        {move || {
            show_loadable(phase.get(), move |empty| {
                if empty && filtered {
                    view! {
                        <Empty title="No runs match these filters">
                            "New runs that match appear here as they start. " <a href="/">"Show all runs"</a>
                        </Empty>
                    }
                        .into_any()
                } else if empty {
                    view! {
                        <div class="empty">
                            <p class="empty-title">"No runs yet — submit one with " <code>"viaduct submit"</code></p>
                            <p class="muted">
                                "Or start a stored pipeline from " <a href="/pipelines">"Pipelines"</a>
                                ", or push to a repository. New runs appear here as they start."
                            </p>
                        </div>
                    }
                        .into_any()
                } else {
                    view! {
                        <div class="run-list" role="list">
                            <div class="run-row head" aria-hidden="true">
                                <span></span>
                                <span>"Run"</span>
                                <span>"Pipeline"</span>
                                <span>"Source"</span>
                                <span>"Started"</span>
                                <span>"Duration"</span>
                            </div>
                            <For each=runs key=row_key let:run>
                                <RunRow run />
                            </For>
                        </div>
                    }
                        .into_any()
                }
            })
        }}
        <Show when=has_more>
            <div class="more">
                <button class="button" on:click=load_more.clone() disabled=move || loading_more.get()>
                    {move || if loading_more.get() { "Loading…" } else { "Load older runs" }}
                </button>
                {move || more_error.get().map(|e| view! { <p class="form-error">{e}</p> })}
            </div>
        </Show>
    }
}
