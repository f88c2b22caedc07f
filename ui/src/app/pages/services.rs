//! The services a repository's deployments registered, on its
//! environments page: health (as the server's probes see it), since when,
//! version, endpoints, probe target; a service's probe history on demand
//! (`Services.Get`, refreshed while it is shown).

use std::time::Duration;

use leptos::prelude::*;
use viaduct_proto::v1::{DeployedService, GetServiceRequest, ProbeResult};

use crate::{
    app::{
        api::use_api,
        browser,
        live::{Loadable, spawn_scoped},
        widgets::{Ago, Empty, StatusBadge, show_loadable},
    },
    deployments, run_model, time_format,
};

/// How often a shown probe history is read again.
const HISTORY_EVERY: Duration = Duration::from_secs(5);

/// A service's health as a badge.
#[component]
fn HealthBadge(
    /// The health.
    health: viaduct_proto::v1::Health,
) -> impl IntoView {
    view! { <StatusBadge status=deployments::health_look(health) label=Some(deployments::health_label(health)) /> }
}

/// A URL as a link when it is a web address, else as text.
fn url_view(url: String) -> AnyView {
    if deployments::is_web_link(&url) {
        let href = url.clone();
        view! { <a href=href rel="external noopener noreferrer" target="_blank">{url}</a> }.into_any()
    } else {
        view! { <code>{url}</code> }.into_any()
    }
}

/// Which service's history is shown: (environment, name).
type Selected = Option<(String, String)>;

/// The services table, and the probe history of the one selected.
#[component]
pub fn ServicesTable(
    /// The repository.
    repo: String,
    /// Its services, as last read.
    #[prop(into)]
    services: Signal<Loadable<Vec<DeployedService>>>,
) -> impl IntoView {
    let selected = RwSignal::new(None::<(String, String)>);
    view! {
        {move || {
            show_loadable(services.get(), move |list: Vec<DeployedService>| {
                if list.is_empty() {
                    view! {
                        <Empty title="No services">
                            "A deployment registers services with " <code>"environment: { services: … }"</code>
                            " in its job; the server then probes their health."
                        </Empty>
                    }
                        .into_any()
                } else {
                    view! {
                        <div class="table-wrap">
                            <table class="table services">
                                <thead>
                                    <tr>
                                        <th>"Environment"</th>
                                        <th>"Service"</th>
                                        <th>"Health"</th>
                                        <th>"Since"</th>
                                        <th>"Version"</th>
                                        <th>"Endpoints"</th>
                                        <th>"Probe"</th>
                                        <th></th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list.into_iter().map(|s| view! { <ServiceRow service=s selected /> }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }
                        .into_any()
                }
            })
        }}
        {move || {
            selected.get().map(|(environment, name)| {
                view! { <ProbeHistory repo=repo.clone() environment name on_close=move || selected.set(None) /> }
            })
        }}
    }
}

/// One service.
#[component]
fn ServiceRow(service: DeployedService, selected: RwSignal<Selected>) -> impl IntoView {
    let s = service;
    let health = s.health();
    let since = time_format::timestamp_ms(s.health_since.as_ref());
    let key = (s.environment.clone(), s.name.clone());
    let is_selected = {
        let key = key.clone();
        move || selected.with(|sel| sel.as_ref() == Some(&key))
    };
    let toggle = move |_| {
        selected.update(|sel| *sel = if sel.as_ref() == Some(&key) { None } else { Some(key.clone()) });
    };
    let version = match (s.version.is_empty(), s.commit.is_empty()) {
        (false, _) => s.version.clone(),
        (true, false) => run_model::short_commit(&s.commit).to_string(),
        (true, true) => "—".to_string(),
    };
    let probe = s.probe.map(|p| p.target).unwrap_or_default();
    view! {
        <tr data-service=format!("{}/{}", s.environment, s.name) data-health=deployments::health_word(health)>
            <td>{s.environment.clone()}</td>
            <td><strong>{s.name.clone()}</strong></td>
            <td><HealthBadge health /></td>
            <td><Ago at=since /></td>
            <td><code title=s.commit.clone()>{version}</code></td>
            <td>
                <span class="endpoints">{s.endpoints.into_iter().map(url_view).collect_view()}</span>
            </td>
            <td>{if probe.is_empty() { view! { <span class="muted">"—"</span> }.into_any() } else { view! { <code>{probe}</code> }.into_any() }}</td>
            <td>
                <button class="button small" data-service-history="" aria-pressed=move || is_selected().to_string() on:click=toggle>
                    "Probes"
                </button>
            </td>
        </tr>
    }
}

/// A service's recent probes, newest first, read again every few seconds
/// while shown.
#[component]
fn ProbeHistory(
    repo: String,
    environment: String,
    name: String,
    on_close: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let api = use_api();
    let state: RwSignal<Loadable<DeployedService>> = RwSignal::new(Loadable::Loading);
    let req = GetServiceRequest { repo, environment: environment.clone(), name: name.clone() };
    spawn_scoped(async move {
        loop {
            let r = api.check(api.services().get(req.clone()).await);
            if state.is_disposed() {
                return;
            }
            state.set(r.into());
            browser::sleep_for(HISTORY_EVERY).await;
        }
    });
    view! {
        <div class="panel probe-history" data-probe-history=format!("{environment}/{name}")>
            <div class="panel-head">
                <h3>{format!("Probes of {name} in {environment}")}</h3>
                <span class="panel-actions">
                    <button class="button small subtle" on:click=move |_| on_close()>"Close"</button>
                </span>
            </div>
            {move || {
                show_loadable(state.get(), |s: DeployedService| {
                    if s.history.is_empty() {
                        view! { <p class="muted">"Not probed yet."</p> }.into_any()
                    } else {
                        view! { <ProbeTable history=s.history /> }.into_any()
                    }
                })
            }}
        </div>
    }
}

/// Probe results as a table.
#[component]
fn ProbeTable(history: Vec<ProbeResult>) -> impl IntoView {
    view! {
        <div class="table-wrap">
            <table class="table probes">
                <thead>
                    <tr>
                        <th>"Time"</th>
                        <th>"Health"</th>
                        <th class="num">"Status"</th>
                        <th class="num">"Latency"</th>
                        <th>"Error"</th>
                    </tr>
                </thead>
                <tbody>
                    {history
                        .into_iter()
                        .map(|p| {
                            let at = time_format::timestamp_ms(p.time.as_ref());
                            let status = (p.status > 0).then(|| p.status.to_string());
                            let latency = time_format::duration(i64::from(p.latency_ms));
                            view! {
                                <tr data-health=deployments::health_word(p.health())>
                                    <td><Ago at /></td>
                                    <td><HealthBadge health=p.health() /></td>
                                    <td class="num">{status.unwrap_or_else(|| "—".into())}</td>
                                    <td class="num">{latency}</td>
                                    <td class="small">{p.error.clone()}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
}
