//! `/stats`: how runs went over a range — success rate, durations, volume
//! and queue wait per hour, day or week, per pipeline and per runner label
//! — from `Stats.Get` (aggregated on the server), and the fleet's load now
//! from `Runners.Stats`, refreshed every few seconds while the page is
//! open.

use std::time::Duration;

use leptos::prelude::*;
use viaduct_proto::v1::{FleetStats, FleetStatsRequest, GroupStats, Percentiles, StatsReport, StatsRequest};

use crate::{
    app::{
        api::{ApiError, use_api},
        browser,
        live::{Loadable, spawn_scoped},
        widgets::{ChartView, Empty, ErrorBox, show_loadable},
    },
    chart::{self, Frame},
    time_format,
};

/// How often the fleet gauges refresh.
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// The ranges offered: (label, seconds back from now, bucket seconds).
const RANGES: [(&str, i64, u32); 4] = [
    ("24 hours", 86_400, 3_600),
    ("7 days", 7 * 86_400, 86_400),
    ("30 days", 30 * 86_400, 86_400),
    ("26 weeks", 26 * 7 * 86_400, 7 * 86_400),
];

/// A duration in ms for a table, or a dash.
fn ms(p: Option<Percentiles>, pick: fn(&Percentiles) -> u64) -> String {
    match p.filter(|p| p.count > 0) {
        Some(p) => time_format::duration(i64::try_from(pick(&p)).unwrap_or(i64::MAX)),
        None => "—".into(),
    }
}

fn percent(rate: f64, decided: u64) -> String {
    if decided == 0 { "—".into() } else { format!("{:.0}%", rate * 100.0) }
}

/// The stats page.
#[component]
pub fn StatsPage() -> impl IntoView {
    browser::set_title("Stats · Viaduct");
    let api = use_api();
    let fleet: RwSignal<Option<Result<FleetStats, ApiError>>> = RwSignal::new(None);
    let range = RwSignal::new(1usize);
    let report: RwSignal<Loadable<StatsReport>> = RwSignal::new(Loadable::Loading);
    let stats_api = api.clone();
    Effect::new(move |_| {
        let (_, back, bucket_seconds) = RANGES[range.get()];
        let now = browser::now_ms() / 1000;
        let req = StatsRequest {
            from: Some(prost_types::Timestamp { seconds: now - back, nanos: 0 }),
            to: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
            bucket_seconds,
            ..StatsRequest::default()
        };
        let api = stats_api.clone();
        report.set(Loadable::Loading);
        spawn_scoped(async move {
            let r = api.check(api.stats().get(req).await);
            if !report.is_disposed() {
                report.set(r.into());
            }
        });
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
                <div class="segmented" role="group" aria-label="Range">
                    {RANGES
                        .iter()
                        .enumerate()
                        .map(|(i, (label, _, _))| {
                            view! {
                                <button
                                    class=move || if range.get() == i { "seg active" } else { "seg" }
                                    data-range=*label
                                    on:click=move |_| range.set(i)
                                >
                                    {*label}
                                </button>
                            }
                        })
                        .collect_view()}
                </div>
            </div>
            <h2 class="section-title">"Now"</h2>
            {move || match fleet.get() {
                None => view! { <div class="gauges loading">"Loading…"</div> }.into_any(),
                Some(Err(e)) => view! { <ErrorBox error=e /> }.into_any(),
                Some(Ok(s)) => view! { <Gauges stats=s /> }.into_any(),
            }}
            {move || show_loadable(report.get(), |r: StatsReport| view! { <Report report=r /> })}
        </section>
    }
}

/// A report: totals, charts, and the tables per pipeline and label.
#[component]
fn Report(report: StatsReport) -> impl IntoView {
    let total = report.total.unwrap_or_default();
    if total.runs == 0 && total.jobs == 0 {
        return view! {
            <Empty title="No runs in this range">
                "Charts appear once runs have finished — submit one with " <code>"viaduct submit"</code> "."
            </Empty>
        }
        .into_any();
    }
    let (width, buckets) = chart::buckets(&report);
    let per = match report.bucket_seconds {
        s if s >= 604_800 => "week",
        s if s >= 86_400 => "day",
        _ => "hour",
    };
    let from = time_format::timestamp_ms(report.from.as_ref()).map_or_else(String::new, time_format::date);
    let decided = total.succeeded + total.failed;
    let wait = total.queue_wait;
    let note = if report.truncated {
        format!("Runs since {from} per {per} (UTC) — the oldest were not read: the scan stops at 200,000 runs.")
    } else {
        format!("{} runs since {from}, per {per} (UTC).", total.runs)
    };
    let cache = (report.cache_hit_rate > 0.0).then(|| format!("{:.0}%", report.cache_hit_rate * 100.0));
    let f = Frame::STANDARD;
    view! {
        <h2 class="section-title">"Runs"</h2>
        <p class="muted" id="stats-range">{note}</p>
        <div class="stat-tiles" id="stats-totals">
            <div class="tile" data-tile="runs"><span class="tile-value">{total.runs}</span><span class="tile-label">"runs"</span></div>
            <div class="tile" data-tile="success"><span class="tile-value">{percent(total.success_rate, decided)}</span><span class="tile-label">"succeeded"</span></div>
            <div class="tile" data-tile="failed"><span class="tile-value">{total.failed}</span><span class="tile-label">"failed"</span></div>
            <div class="tile" data-tile="duration"><span class="tile-value">{ms(total.run_duration, |p| p.p50_ms)}</span><span class="tile-label">"median duration"</span></div>
            <div class="tile" data-tile="wait"><span class="tile-value">{ms(wait, |p| p.p50_ms)}</span><span class="tile-label">{format!("median queue wait (p99 {})", ms(wait, |p| p.p99_ms))}</span></div>
            {cache.map(|c| view! { <div class="tile" data-tile="cache"><span class="tile-value">{c}</span><span class="tile-label">"cache hits"</span></div> })}
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
        <h2 class="section-title">"Per pipeline"</h2>
        <Groups groups=report.pipelines id="stats-pipelines" runs=true />
        <h2 class="section-title">"Per runner label"</h2>
        <Groups groups=report.labels id="stats-labels" runs=false />
    }
    .into_any()
}

/// One table of groups: runs and durations (pipelines), or jobs and queue
/// wait (labels).
#[component]
fn Groups(groups: Vec<GroupStats>, id: &'static str, runs: bool) -> impl IntoView {
    if groups.is_empty() {
        return view! { <p class="muted">"None in this range."</p> }.into_any();
    }
    let rows = groups
        .into_iter()
        .map(|g| {
            let s = g.summary.unwrap_or_default();
            let cells = if runs {
                vec![
                    s.runs.to_string(),
                    percent(s.success_rate, s.succeeded + s.failed),
                    ms(s.run_duration, |p| p.p50_ms),
                    ms(s.run_duration, |p| p.p90_ms),
                    ms(s.run_duration, |p| p.p99_ms),
                    ms(s.queue_wait, |p| p.p50_ms),
                    ms(s.queue_wait, |p| p.p99_ms),
                ]
            } else {
                vec![s.jobs.to_string(), ms(s.queue_wait, |p| p.p50_ms), ms(s.queue_wait, |p| p.p99_ms)]
            };
            view! {
                <tr data-group=g.name.clone()>
                    <td>{g.name.clone()}</td>
                    {cells.into_iter().map(|c| view! { <td class="num">{c}</td> }).collect_view()}
                </tr>
            }
        })
        .collect_view();
    let head: &[&str] = if runs {
        &["Pipeline", "Runs", "Succeeded", "p50", "p90", "p99", "Wait p50", "Wait p99"]
    } else {
        &["Label", "Jobs", "Wait p50", "Wait p99"]
    };
    view! {
        <div class="table-wrap">
            <table class="table" id=id>
                <thead>
                    <tr>{head.iter().enumerate().map(|(i, h)| view! { <th class=if i == 0 { "" } else { "num" }>{*h}</th> }).collect_view()}</tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
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
