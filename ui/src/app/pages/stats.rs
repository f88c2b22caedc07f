//! `/stats`: success rate, durations and volume over time from the latest
//! runs (one `Runs.List` page of [`SAMPLE`]), and the fleet's load now from
//! `Runners.Stats`, refreshed every few seconds while the page is open.

use std::time::Duration;

use leptos::prelude::*;
use viaduct_proto::v1::{FleetStats, FleetStatsRequest, ListRunsRequest, PageRequest, Run};

use crate::{
    app::{
        api::{ApiError, use_api},
        browser,
        live::{Loadable, load, spawn_scoped},
        widgets::{ChartView, Empty, ErrorBox, show_loadable},
    },
    chart::{self, Frame, RunPoint},
    run_model, time_format,
};

/// Runs the charts are drawn from.
const SAMPLE: u32 = 500;
/// How often the fleet gauges refresh.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

fn point(run: &Run) -> Option<RunPoint> {
    let (created, started, finished) = run_model::run_times(run);
    let created = created.or(started)?;
    let duration = match (started, finished) {
        (Some(s), Some(f)) => Some(f.saturating_sub(s).max(0)),
        _ => None,
    };
    Some(RunPoint { created, status: run.status(), duration })
}

/// The stats page.
#[component]
pub fn StatsPage() -> impl IntoView {
    browser::set_title("Stats · Viaduct");
    let api = use_api();
    let fleet: RwSignal<Option<Result<FleetStats, ApiError>>> = RwSignal::new(None);
    let runs_api = api.clone();
    let req = ListRunsRequest {
        page: Some(PageRequest { page_size: SAMPLE, page_token: String::new() }),
        ..Default::default()
    };
    let runs: RwSignal<Loadable<Vec<RunPoint>>> = load(async move {
        runs_api.check(runs_api.runs().list(req).await).map(|r| r.runs.iter().filter_map(point).collect())
    });
    // A gauge: polled on this page only.
    spawn_scoped(async move {
        loop {
            let r = api.check(api.runners().stats(FleetStatsRequest {}).await);
            if fleet.is_disposed() {
                return;
            }
            fleet.set(Some(r));
            browser::sleep_for(GAUGE_EVERY).await;
        }
    });
    view! {
        <section class="page" data-page="stats">
            <div class="page-head">
                <h1>"Stats"</h1>
            </div>
            <h2 class="section-title">"Now"</h2>
            {move || match fleet.get() {
                None => view! { <div class="gauges loading">"Loading…"</div> }.into_any(),
                Some(Err(e)) => view! { <ErrorBox error=e /> }.into_any(),
                Some(Ok(s)) => view! { <Gauges stats=s /> }.into_any(),
            }}
            {move || {
                show_loadable(runs.get(), |points: Vec<RunPoint>| {
                    if points.is_empty() {
                        return view! {
                            <Empty title="No runs yet">
                                "Charts appear once runs have finished — submit one with " <code>"viaduct submit"</code> "."
                            </Empty>
                        }
                            .into_any();
                    }
                    let now = browser::now_ms();
                    let (width, buckets) = chart::bucketize(&points, now);
                    let (total, ok, failed) = chart::totals(&points);
                    let decided = ok + failed;
                    let rate = if decided > 0 { format!("{:.0}%", ok as f64 * 100.0 / decided as f64) } else { "—".into() };
                    let mut durations: Vec<i64> = points.iter().filter_map(|p| p.duration).collect();
                    durations.sort_unstable();
                    let median = durations.get(durations.len() / 2).map_or_else(|| "—".to_string(), |d| time_format::duration(*d));
                    let per = match width {
                        w if w >= 7 * 86_400_000 => "week",
                        w if w >= 86_400_000 => "day",
                        w if w >= 6 * 3_600_000 => "6 hours",
                        _ => "hour",
                    };
                    let oldest = points.iter().map(|p| p.created).min().unwrap_or(now);
                    let f = Frame::STANDARD;
                    view! {
                        <h2 class="section-title">"Recent runs"</h2>
                        <p class="muted">
                            {format!("The latest {total} runs, since {}, per {per} (UTC).", time_format::date(oldest))}
                        </p>
                        <div class="stat-tiles">
                            <div class="tile"><span class="tile-value">{total}</span><span class="tile-label">"runs"</span></div>
                            <div class="tile"><span class="tile-value">{rate}</span><span class="tile-label">"succeeded"</span></div>
                            <div class="tile"><span class="tile-value">{failed}</span><span class="tile-label">"failed"</span></div>
                            <div class="tile"><span class="tile-value">{median}</span><span class="tile-label">"median duration"</span></div>
                        </div>
                        <div class="charts">
                            <section class="card">
                                <h3>"Success rate"</h3>
                                <ChartView chart=chart::success_chart(f, &buckets, width) label="Success rate over time" />
                            </section>
                            <section class="card">
                                <h3>"Duration"</h3>
                                <ChartView chart=chart::duration_chart(f, &buckets, width) label="Run duration over time" />
                            </section>
                            <section class="card">
                                <h3>"Runs"</h3>
                                <ChartView chart=chart::volume_chart(f, &buckets, width) label="Runs over time" />
                                <p class="legend">
                                    <span class="legend-item"><span class="swatch series-success"></span>"succeeded"</span>
                                    <span class="legend-item"><span class="swatch series-failure"></span>"failed"</span>
                                    <span class="legend-item"><span class="swatch series-other"></span>"other"</span>
                                </p>
                            </section>
                        </div>
                    }
                        .into_any()
                })
            }}
        </section>
    }
}

/// Queue depth, running jobs, runners and slots.
#[component]
fn Gauges(stats: FleetStats) -> impl IntoView {
    let used = if stats.slots > 0 { (stats.running as f64 / stats.slots as f64).min(1.0) } else { 0.0 };
    let pct = format!("{:.0}%", used * 100.0);
    view! {
        <div class="stat-tiles gauges">
            <div class="tile" data-gauge="queued">
                <span class="tile-value">{stats.queued}</span>
                <span class="tile-label">"jobs queued"</span>
            </div>
            <div class="tile" data-gauge="running">
                <span class="tile-value">{stats.running}</span>
                <span class="tile-label">"jobs running"</span>
            </div>
            <div class="tile" data-gauge="runners">
                <span class="tile-value">{stats.runners_connected}</span>
                <span class="tile-label">"runners connected"</span>
            </div>
            <div class="tile" data-gauge="slots">
                <span class="tile-value">{format!("{} / {}", stats.running.min(stats.slots), stats.slots)}</span>
                <span class="tile-label">"slots busy"</span>
                <span class="meter" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow=format!("{:.0}", used * 100.0)>
                    <span class="meter-fill" style=format!("width:{pct}")></span>
                </span>
            </div>
        </div>
    }
}
