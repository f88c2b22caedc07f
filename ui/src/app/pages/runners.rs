//! `/runners`: the fleet — labels, slots, executors, connection, current
//! jobs, last heartbeat — with drain / undrain, pushed live by
//! `Runners.Watch` (a runner connecting, draining, pausing for want of
//! disk, taking a job shows as it happens).

use leptos::{prelude::*, task::spawn_local};
use viaduct_proto::v1::{DrainRunnerRequest, Runner};

use crate::{
    app::{
        api::{Api, use_api},
        browser,
        live::{Loadable, watch_runners},
        widgets::{Ago, Empty, show_loadable},
    },
    run_model, time_format,
};

/// The runners page.
#[component]
pub fn RunnersPage() -> impl IntoView {
    browser::set_title("Runners · Viaduct");
    let api = use_api();
    let state: RwSignal<Loadable<Vec<Runner>>> = RwSignal::new(Loadable::Loading);
    watch_runners(api.clone(), state);
    view! {
        <section class="page" data-page="runners">
            <div class="page-head">
                <h1>"Runners"</h1>
                <span class="muted small" title="Changes show as they happen">"live"</span>
            </div>
            {move || {
                let api = api.clone();
                show_loadable(state.get(), move |runners: Vec<Runner>| {
                    if runners.is_empty() {
                        view! {
                            <Empty title="No runners registered">
                                "Start one with " <code>"viaduct-runner --server URL --token TOKEN"</code>
                                " (the registration token is in the server's data directory, or "
                                <code>"viaduct runners token"</code> ")."
                            </Empty>
                        }
                            .into_any()
                    } else {
                        let api = api.clone();
                        view! {
                            <div class="table-wrap">
                                <table class="table runners">
                                    <thead>
                                        <tr>
                                            <th>"Runner"</th>
                                            <th>"State"</th>
                                            <th>"Labels"</th>
                                            <th class="num">"Slots"</th>
                                            <th>"Executors"</th>
                                            <th>"Jobs"</th>
                                            <th>"Last heartbeat"</th>
                                            <th></th>
                                        </tr>
                                    </thead>
                                    <tbody>
                                        {runners
                                            .into_iter()
                                            .map(|r| view! { <RunnerRow runner=r api=api.clone() state /> })
                                            .collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        }
                            .into_any()
                    }
                })
            }}
        </section>
    }
}

/// One runner.
#[component]
fn RunnerRow(runner: Runner, api: Api, state: RwSignal<Loadable<Vec<Runner>>>) -> impl IntoView {
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let id = runner.id.clone();
    let drain = !runner.draining;
    let toggle = move |_| {
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        let api = api.clone();
        let id = id.clone();
        spawn_local(async move {
            let r = api.check(api.runners().drain(DrainRunnerRequest { id, drain }).await);
            busy.set(false);
            match r {
                Ok(updated) => state.update(|s| {
                    if let Loadable::Ready(list) = s
                        && let Some(r) = list.iter_mut().find(|r| r.id == updated.id)
                    {
                        *r = updated;
                    }
                }),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    let (state_label, state_class) = match (runner.state_word(), runner.draining) {
        ("online", _) => ("Connected", "pill ok"),
        ("draining", _) => ("Draining", "pill warn"),
        ("paused", _) => ("Paused", "pill warn"),
        (_, true) => ("Offline · draining", "pill off"),
        (_, false) => ("Offline", "pill off"),
    };
    let paused = runner.paused.clone();
    let last_seen = time_format::timestamp_ms(runner.last_seen.as_ref());
    let used = runner.jobs.len();
    let title = [runner.hostname.clone(), runner.version.clone()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" · ");
    let name = if runner.name.is_empty() { runner.id.clone() } else { runner.name.clone() };
    view! {
        <tr data-runner-id=runner.id.clone() data-nav-item="">
            <td data-label="Runner">
                <strong>{name}</strong>
                <div class="muted small">{runner.id.clone()} {(!title.is_empty()).then(|| format!(" · {title}"))}</div>
            </td>
            <td data-label="State"><span class=state_class title=paused>{state_label}</span></td>
            <td data-label="Labels">
                <span class="chips">{runner.labels.iter().map(|l| view! { <span class="chip">{l.clone()}</span> }).collect_view()}</span>
                <span class="chips toolchains" title=runner.toolchains.join(", ")>
                    {newest_versions(&runner.toolchains).into_iter().map(|t| view! { <span class="chip toolchain">{t}</span> }).collect_view()}
                </span>
            </td>
            <td data-label="Slots" class="num">{format!("{used} / {}", runner.slots)}</td>
            <td data-label="Executors">{viaduct_proto::executor_words(&runner.executors).join(", ")}</td>
            <td data-label="Jobs">
                {if runner.jobs.is_empty() {
                    view! { <span class="muted">"idle"</span> }.into_any()
                } else {
                    view! {
                        <span class="job-links">
                            {runner
                                .jobs
                                .iter()
                                .map(|j| {
                                    let href = format!("/runs/{}/jobs/{j}", run_model::run_of_job(j));
                                    view! { <a href=href>{j.clone()}</a> " " }
                                })
                                .collect_view()}
                        </span>
                    }
                        .into_any()
                }}
            </td>
            <td data-label="Last heartbeat"><Ago at=last_seen /></td>
            <td>
                <button class="button small" data-drain=runner.id.clone() on:click=toggle disabled=move || busy.get()>
                    {if drain { "Drain" } else { "Undrain" }}
                </button>
                {move || error.get().map(|e| view! { <p class="form-error small">{e}</p> })}
            </td>
        </tr>
    }
}

/// A runner's toolchains as `name version`, each at its most precise
/// version (`rust:1.95.0` of `rust`, `rust:1`, `rust:1.95`, `rust:1.95.0`).
fn newest_versions(toolchains: &[String]) -> Vec<String> {
    let mut best: Vec<(&str, &str)> = Vec::new();
    for label in toolchains {
        let (name, version) = label.split_once(':').unwrap_or((label.as_str(), ""));
        match best.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) if version.len() > v.len() => *v = version,
            Some(_) => {}
            None => best.push((name, version)),
        }
    }
    best.into_iter().map(|(n, v)| if v.is_empty() { n.to_string() } else { format!("{n} {v}") }).collect()
}
