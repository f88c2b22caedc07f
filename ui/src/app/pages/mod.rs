//! The pages, one module each, and pieces several of them show.

pub mod admin;
pub mod audit;
pub mod deployments;
pub mod environments;
pub mod log;
pub mod pipelines;
pub mod repos;
pub mod run;
pub mod runners;
pub mod runs;
pub mod services;
pub mod sign_in;
pub mod stats;
pub mod trigger;

use leptos::prelude::*;
use viaduct_proto::v1::{ListRunsRequest, PageRequest, Run};

use super::{
    api::use_api,
    live::load,
    widgets::{Ago, Elapsed, Empty, StatusIcon, show_loadable},
};
use crate::{run_model, status};

/// For unknown paths.
#[component]
pub fn NotFound() -> impl IntoView {
    view! {
        <section class="page" data-page="not-found">
            <Empty title="Nothing here">
                "This page does not exist. " <a href="/">"See the runs"</a> "."
            </Empty>
        </section>
    }
}

/// One run as a row of a list: a link to the run.
#[component]
pub fn RunRow(
    /// The run.
    run: Run,
) -> impl IntoView {
    let st = run.status();
    let (created, started, finished) = run_model::run_times(&run);
    let href = format!("/runs/{}", run.id);
    let source = run_model::source_summary(&run);
    let source_title = source.clone();
    let pipeline = if run.pipeline.is_empty() { run.pipeline_ref.clone() } else { run.pipeline.clone() };
    view! {
        <a class="run-row" href=href data-run-id=run.id.clone() data-status=status::word(st) data-nav-item="">
            <span class="run-status">
                <StatusIcon status=st />
            </span>
            <span class="run-id">{format!("#{}", run.id)}</span>
            <span class="run-pipeline">{pipeline}</span>
            <span class="run-source" title=source_title>{source}</span>
            <span class="run-time">
                <Ago at=started.or(created) />
            </span>
            <span class="run-duration">
                <Elapsed start=started finish=finished />
            </span>
        </a>
    }
}

/// A key that changes whenever a run's row would look different.
pub fn row_key(run: &Run) -> String {
    let (c, s, f) = run_model::run_times(run);
    format!("{}|{}|{:?}|{:?}|{:?}|{}", run.id, run.status, c, s, f, run.pipeline)
}

/// A fixed list of runs (no live updates): a pipeline's or repository's
/// recent runs.
#[component]
pub fn RecentRuns(
    /// The filters (the page size is set here).
    request: ListRunsRequest,
    /// What to say when there are none.
    #[prop(into)]
    empty: String,
) -> impl IntoView {
    let api = use_api();
    let request = ListRunsRequest { page: Some(PageRequest { page_size: 20, page_token: String::new() }), ..request };
    let state = load(async move { api.check(api.runs().list(request).await).map(|r| r.runs) });
    move || {
        let empty = empty.clone();
        show_loadable(state.get(), move |runs: Vec<Run>| {
            if runs.is_empty() {
                view! { <Empty title=empty>""</Empty> }.into_any()
            } else {
                view! { <div class="run-list">{runs.into_iter().map(|run| view! { <RunRow run /> }).collect_view()}</div> }
                    .into_any()
            }
        })
    }
}
