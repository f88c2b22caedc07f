//! `/repos/:name/environments`: a repository's environments — each one's
//! rules in words, variables, what runs there now, the deployments waiting
//! or in progress (Approve / Reject while one waits for approval) and its
//! recent deployments — and the services they registered. Read again every
//! few seconds while the page is open (sooner after a review), with the
//! streams' backoff and connection banner when the server is away.

use std::{collections::HashMap, time::Duration};

use futures_util::future::join_all;
use leptos::{prelude::*, task::spawn_local};
use leptos_router::hooks::use_params_map;
use viaduct_proto::v1::{
    DeployedService, Deployment, Environment, ListDeploymentsRequest, ListEnvironmentsRequest, ListServicesRequest,
    ReviewDeploymentRequest,
};

use super::{
    deployments::{DeploymentBadge, DeploymentFacts, DeploymentTable, ReviewButtons},
    services::ServicesTable,
};
use crate::{
    app::{
        api::{Api, ApiError, use_api},
        browser,
        live::{Connection, Loadable, Reconnecting, retryable, spawn_scoped},
        widgets::{Empty, Loading, show_loadable},
    },
    backoff::Backoff,
    deployments,
};

/// How often the page reads everything again.
const EVERY: Duration = Duration::from_secs(5);
/// Deployments shown in each environment's history.
const HISTORY: u32 = 20;

/// The environments page of a repository (re-created when it changes).
#[component]
pub fn EnvironmentsPage() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.with(|p| p.get("name").unwrap_or_default()));
    move || {
        let repo = name.get();
        view! { <EnvironmentsView repo /> }
    }
}

/// What the page shows, as last read.
#[derive(Clone, Copy)]
struct PageData {
    environments: RwSignal<Loadable<Vec<Environment>>>,
    /// Each environment's recent deployments, by name.
    history: RwSignal<HashMap<String, Loadable<Vec<Deployment>>>>,
    services: RwSignal<Loadable<Vec<DeployedService>>>,
    /// Counts reads: a read that ends after a newer one started is dropped.
    reads: StoredValue<u64>,
}

impl PageData {
    fn new() -> Self {
        PageData {
            environments: RwSignal::new(Loadable::Loading),
            history: RwSignal::new(HashMap::new()),
            services: RwSignal::new(Loadable::Loading),
            reads: StoredValue::new(0),
        }
    }

    /// Reads everything once and shows it; the environments' error when
    /// they could not be read.
    async fn read(self, api: &Api, repo: &str) -> Result<(), ApiError> {
        let Some(this_read) = self.reads.try_update_value(|n| {
            *n += 1;
            *n
        }) else {
            return Ok(());
        };
        let list = ListEnvironmentsRequest { repo: repo.to_string() };
        let environments = api.check(api.environments().list(list).await).map(|r| r.environments);
        let names: Vec<String> =
            environments.as_ref().map(|l| l.iter().map(|e| e.name.clone()).collect()).unwrap_or_default();
        let history = join_all(names.into_iter().map(|environment| {
            let req =
                ListDeploymentsRequest { repo: repo.to_string(), environment: environment.clone(), limit: HISTORY };
            async move {
                let r = api.check(api.deployments().list(req).await).map(|r| r.deployments);
                (environment, Loadable::from(r))
            }
        }))
        .await;
        let list = ListServicesRequest { repo: repo.to_string(), environment: String::new() };
        let services = api.check(api.services().list(list).await).map(|r| r.services);
        if self.environments.is_disposed() || self.reads.try_get_value() != Some(this_read) {
            return Ok(());
        }
        let outcome = environments.as_ref().map(|_| ()).map_err(Clone::clone);
        show(self.environments, environments.into());
        show(self.services, services.into());
        let fresh: HashMap<String, Loadable<Vec<Deployment>>> = history.into_iter().collect();
        if self.history.with_untracked(|h| h != &fresh) {
            self.history.set(fresh);
        }
        outcome
    }

    /// Reads everything again now (after a review).
    fn read_soon(self, api: Api, repo: String) {
        spawn_local(async move {
            let _ = self.read(&api, &repo).await;
        });
    }
}

/// Sets `signal` to `value` when it differs, keeping what is shown when
/// the server is only briefly away (the banner says so meanwhile).
fn show<T: PartialEq + Send + Sync + 'static>(signal: RwSignal<Loadable<T>>, value: Loadable<T>) {
    let keep = matches!(&value, Loadable::Failed(e) if retryable(e))
        && signal.with_untracked(|s| matches!(s, Loadable::Ready(_)));
    if !keep && signal.with_untracked(|s| s != &value) {
        signal.set(value);
    }
}

/// Reads the page's data every few seconds until the page goes away;
/// stops when reading again cannot help (not found, not allowed).
fn poll(data: PageData, api: Api, repo: String) {
    let conn = expect_context::<Connection>();
    spawn_scoped(async move {
        let mut backoff = Backoff::default();
        let mut reconnecting = Reconnecting::new(conn);
        loop {
            match data.read(&api, &repo).await {
                Ok(()) => {
                    reconnecting.back();
                    backoff.reset();
                    browser::sleep_for(EVERY).await;
                }
                Err(e) if retryable(&e) => {
                    reconnecting.lost();
                    browser::sleep(backoff.next_delay(browser::random())).await;
                }
                Err(_) => return,
            }
            if data.environments.is_disposed() {
                return;
            }
        }
    });
}

/// One repository's environments and services.
#[component]
fn EnvironmentsView(repo: String) -> impl IntoView {
    browser::set_title(&format!("Environments · {repo} · Viaduct"));
    let api = use_api();
    let data = PageData::new();
    poll(data, api.clone(), repo.clone());
    let refresh = {
        let repo = repo.clone();
        Callback::new(move |()| data.read_soon(api.clone(), repo.clone()))
    };
    // The list is drawn again only when environments come or go.
    let names = Memo::new(move |_| {
        data.environments.with(|s| match s {
            Loadable::Loading => Loadable::Loading,
            Loadable::Ready(l) => Loadable::Ready(l.iter().map(|e| e.name.clone()).collect::<Vec<_>>()),
            Loadable::Failed(e) => Loadable::Failed(e.clone()),
        })
    });
    let empty_repo = repo.clone();
    view! {
        <section class="page" data-page="environments">
            <div class="page-head">
                <a class="back" href=format!("/repos/{repo}")>{format!("← {repo}")}</a>
                <h1>"Environments"</h1>
                <span class="muted small" title="Read again every few seconds">"live"</span>
            </div>
            {move || {
                let repo = empty_repo.clone();
                show_loadable(names.get(), move |names: Vec<String>| {
                    if names.is_empty() {
                        view! {
                            <Empty title="No environments">
                                "Create one with " <code>{format!("viaduct environments put {repo} production")}</code>
                                ", then deploy to it from a job with " <code>"environment: production"</code> "."
                            </Empty>
                        }
                            .into_any()
                    } else {
                        view! {
                            <div class="environments">
                                {names.into_iter().map(|name| view! { <EnvironmentCard name data refresh /> }).collect_view()}
                            </div>
                        }
                            .into_any()
                    }
                })
            }}
            <h2 class="section-title">"Services"</h2>
            <ServicesTable repo=repo.clone() services=data.services />
        </section>
    }
}

/// One environment: what it is, its rules and variables, what runs there
/// now, what waits or deploys, and its history.
#[component]
fn EnvironmentCard(name: String, data: PageData, refresh: Callback<()>) -> impl IntoView {
    let env = {
        let name = name.clone();
        Memo::new(move |_| {
            data.environments.with(|s| s.ready().and_then(|l| l.iter().find(|e| e.name == name).cloned()))
        })
    };
    let history = {
        let name = name.clone();
        Memo::new(move |_| data.history.with(|h| h.get(&name).cloned()))
    };
    let about = move || {
        env.with(|e| {
            let e = e.as_ref()?;
            let url = (!e.url.is_empty()).then(|| e.url.clone());
            Some(view! {
                {url.map(|u| {
                    if deployments::is_web_link(&u) {
                        let href = u.clone();
                        view! { <a class="env-url" href=href rel="external noopener noreferrer" target="_blank">{u}</a> }.into_any()
                    } else {
                        view! { <code class="env-url">{u}</code> }.into_any()
                    }
                })}
                {(!e.description.is_empty()).then(|| view! { <p class="muted env-description">{e.description.clone()}</p> })}
            })
        })
    };
    let rules = move || env.with(|e| deployments::rules_in_words(e.as_ref().and_then(|e| e.rules.as_ref())));
    let variables = move || env.with(|e| e.as_ref().map(|e| deployments::sorted(&e.variables)).unwrap_or_default());
    let current = Memo::new(move |_| env.with(|e| e.as_ref().and_then(|e| e.current.clone()).filter(|d| d.id != 0)));
    let open = move || env.with(|e| e.as_ref().map(|e| e.open.clone()).unwrap_or_default());
    view! {
        <article class="card environment" id=deployments::environment_anchor(&name) data-environment=name.clone()>
            <div class="env-head">
                <h2>{name.clone()}</h2>
                {about}
            </div>
            <div class="two-col">
                <div>
                    <h3>"Rules"</h3>
                    <ul class="env-rules">{move || rules().into_iter().map(|r| view! { <li>{r}</li> }).collect_view()}</ul>
                    <h3>"Variables"</h3>
                    {move || {
                        let vars = variables();
                        if vars.is_empty() {
                            view! { <p class="muted">"None."</p> }.into_any()
                        } else {
                            view! {
                                <dl class="kv env-variables">
                                    {vars.into_iter().map(|(k, v)| view! { <dt><code>{k}</code></dt><dd><code>{v}</code></dd> }).collect_view()}
                                </dl>
                            }
                                .into_any()
                        }
                    }}
                </div>
                <div>
                    <h3>"Deployed now"</h3>
                    {move || match current.get() {
                        Some(d) => {
                            let id = d.id.to_string();
                            view! {
                                <div class="current-deployment" data-current-deployment=id>
                                    <DeploymentFacts deployment=d />
                                </div>
                            }
                            .into_any()
                        }
                        None => view! { <p class="muted">"Nothing yet."</p> }.into_any(),
                    }}
                    <h3>"Waiting or deploying"</h3>
                    <Show when=move || env.with(|e| e.as_ref().is_some_and(|e| e.open.is_empty()))>
                        <p class="muted">"Nothing."</p>
                    </Show>
                    <ul class="open-deployments">
                        <For each=open key=deployments::row_key let:d>
                            <OpenDeployment deployment=d refresh />
                        </For>
                    </ul>
                </div>
            </div>
            <h3>"Recent deployments"</h3>
            {move || match history.get() {
                None => view! { <Loading /> }.into_any(),
                Some(h) => show_loadable(h, |list: Vec<Deployment>| {
                    if list.is_empty() {
                        view! { <p class="muted">"None yet."</p> }.into_any()
                    } else {
                        view! { <div class="deployment-history"><DeploymentTable deployments=list /></div> }.into_any()
                    }
                }),
            }}
        </article>
    }
}

/// A deployment that waits or deploys: its state and why, what and who,
/// and Approve / Reject while it waits for approval.
#[component]
fn OpenDeployment(deployment: Deployment, refresh: Callback<()>) -> impl IntoView {
    let d = deployment;
    let st = d.state();
    let review = deployments::can_review(st).then(|| {
        let target = ReviewDeploymentRequest { id: d.id, ..ReviewDeploymentRequest::default() };
        view! { <ReviewButtons target on_done=refresh /> }
    });
    view! {
        <li class="open-deployment" data-deployment-id=d.id.to_string() data-state=deployments::word(st)>
            <div class="open-head">
                <DeploymentBadge state=st />
                <strong>{format!("Deployment {}", d.id)}</strong>
                <span class="muted">{deployments::kind(&d).to_string()}</span>
            </div>
            {(!d.message.is_empty()).then(|| view! { <p class="small deployment-message">{d.message.clone()}</p> })}
            <DeploymentFacts deployment=d.clone() />
            {review}
        </li>
    }
}
