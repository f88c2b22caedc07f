//! The form that starts a run by hand (`Runs.Trigger`): of a stored
//! pipeline — with a field per declared input — or of a repository at a
//! ref. Free `key = value` rows cover inputs the form does not know.
//! On success it goes to the new run.

use std::collections::BTreeMap;

use leptos::{ev::SubmitEvent, prelude::*, task::spawn_local};
use leptos_router::{NavigateOptions, hooks::use_navigate};
use viaduct_proto::v1::TriggerRequest;

use crate::{
    app::api::use_api,
    pipeline_inputs::{self, InputField},
};

/// What the form starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A stored pipeline, with the inputs it declares.
    Pipeline {
        /// Its name.
        name: String,
        /// Declared inputs.
        inputs: Vec<InputField>,
    },
    /// A repository's `.viaduct/pipeline.yml` at a ref.
    Repo {
        /// Its name.
        name: String,
        /// Pre-filled ref.
        default_branch: String,
    },
}

/// The trigger form.
#[component]
pub fn TriggerForm(
    /// What it starts.
    target: Target,
) -> impl IntoView {
    let api = use_api();
    let navigate = use_navigate();
    let declared: Vec<InputField> = match &target {
        Target::Pipeline { inputs, .. } => inputs.clone(),
        Target::Repo { .. } => Vec::new(),
    };
    let values: RwSignal<BTreeMap<String, String>> = RwSignal::new(BTreeMap::new());
    let rows: RwSignal<Vec<(u32, String, String)>> =
        RwSignal::new(if declared.is_empty() { vec![(0, String::new(), String::new())] } else { Vec::new() });
    let next_row = RwSignal::new(1u32);
    let git_ref = RwSignal::new(match &target {
        Target::Repo { default_branch, .. } => default_branch.clone(),
        Target::Pipeline { .. } => String::new(),
    });
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let is_repo = matches!(target, Target::Repo { .. });
    let submit_declared = declared.clone();
    let submit = move |e: SubmitEvent| {
        e.prevent_default();
        if busy.get_untracked() {
            return;
        }
        let free: Vec<(String, String)> = rows.get_untracked().into_iter().map(|(_, k, v)| (k, v)).collect();
        let inputs = match pipeline_inputs::collect(&submit_declared, &values.get_untracked(), &free) {
            Ok(i) => i,
            Err(msg) => {
                error.set(Some(msg));
                return;
            }
        };
        let req = match &target {
            Target::Pipeline { name, .. } => TriggerRequest {
                pipeline: name.clone(),
                inputs: inputs.into_iter().collect(),
                ..TriggerRequest::default()
            },
            Target::Repo { name, .. } => TriggerRequest {
                repo: name.clone(),
                r#ref: git_ref.get_untracked().trim().to_string(),
                inputs: inputs.into_iter().collect(),
                ..TriggerRequest::default()
            },
        };
        busy.set(true);
        error.set(None);
        let api = api.clone();
        let navigate = navigate.clone();
        spawn_local(async move {
            let r = api.check(api.runs().trigger(req).await);
            busy.set(false);
            match r {
                Ok(resp) => navigate(&format!("/runs/{}", resp.run_id), NavigateOptions::default()),
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    };
    let add_row = move |_| {
        let id = next_row.get_untracked();
        next_row.set(id + 1);
        rows.update(|r| r.push((id, String::new(), String::new())));
    };
    view! {
        <form class="card trigger" on:submit=submit>
            <h2>"Start a run"</h2>
            {is_repo.then(|| view! {
                <label class="field wide">
                    <span>"Branch, tag or ref"</span>
                    <input
                        name="ref"
                        placeholder="the default branch"
                        prop:value=move || git_ref.get()
                        on:input=move |e| git_ref.set(event_target_value(&e))
                    />
                </label>
            })}
            {declared
                .into_iter()
                .map(|f| {
                    let name = f.name.clone();
                    let key = f.name.clone();
                    let label = if f.required && f.default.is_none() { format!("{} *", f.name) } else { f.name.clone() };
                    view! {
                        <label class="field wide">
                            <span>{label}</span>
                            <input
                                name=format!("input-{name}")
                                data-input=name.clone()
                                placeholder=f.default.clone().map(|d| format!("default: {d}")).unwrap_or_default()
                                on:input=move |e| {
                                    let v = event_target_value(&e);
                                    values.update(|m| {
                                        m.insert(key.clone(), v);
                                    });
                                }
                            />
                            {f.description.map(|d| view! { <small class="muted">{d}</small> })}
                        </label>
                    }
                })
                .collect_view()}
            <div class="kv-rows">
                <For each=move || rows.get() key=|(id, _, _)| *id let:row>
                    {
                        let id = row.0;
                        let set = move |i: usize, v: String| {
                            rows.update(|r| {
                                if let Some(x) = r.iter_mut().find(|x| x.0 == id) {
                                    if i == 0 { x.1 = v } else { x.2 = v }
                                }
                            })
                        };
                        view! {
                            <div class="kv-row">
                                <input class="kv-key" placeholder="input" aria-label="Input name" on:input=move |e| set(0, event_target_value(&e)) />
                                <span class="muted">"="</span>
                                <input class="kv-value" placeholder="value" aria-label="Input value" on:input=move |e| set(1, event_target_value(&e)) />
                                <button type="button" class="icon-button" aria-label="Remove" on:click=move |_| rows.update(|r| r.retain(|x| x.0 != id))>"×"</button>
                            </div>
                        }
                    }
                </For>
                <button type="button" class="button small subtle" on:click=add_row>"+ Add input"</button>
            </div>
            {move || error.get().map(|e| view! { <p class="form-error" role="alert">{e}</p> })}
            <button id="trigger" class="button primary" type="submit" disabled=move || busy.get()>
                {move || if busy.get() { "Starting…" } else { "Run" }}
            </button>
        </form>
    }
}
