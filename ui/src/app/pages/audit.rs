//! `/audit`: the audit log for admins — who did what, on what, from where,
//! and how it ended — newest first, a page at a time, by actor.

use leptos::{prelude::*, task::spawn_local};
use viaduct_proto::v1::{AuditEntry, ListAuditRequest};

use crate::{
    app::{
        api::{ApiError, use_api},
        browser,
        widgets::{Ago, Empty, ErrorBox},
    },
    time_format,
};

/// Entries per page.
const PAGE: u32 = 100;

/// The audit page.
#[component]
pub fn AuditPage() -> impl IntoView {
    browser::set_title("Audit · Viaduct");
    let api = use_api();
    let entries = RwSignal::new(Vec::<AuditEntry>::new());
    let error = RwSignal::new(None::<ApiError>);
    let loading = RwSignal::new(false);
    let more = RwSignal::new(false);
    let actor = RwSignal::new(String::new());
    // Loads the page after `before` (0: the newest), replacing or appending.
    let fetch = move |before: u64| {
        if loading.get_untracked() {
            return;
        }
        loading.set(true);
        let api = api.clone();
        let req = ListAuditRequest { limit: PAGE, before_id: before, actor: actor.get_untracked().trim().to_string() };
        spawn_local(async move {
            let r = api.check(api.audit().list(req).await);
            loading.set(false);
            match r {
                Ok(page) => {
                    more.set(page.entries.len() as u32 == PAGE);
                    if before == 0 {
                        entries.set(page.entries);
                    } else {
                        entries.update(|e| e.extend(page.entries));
                    }
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    fetch(0);
    let older = {
        let fetch = fetch.clone();
        move |_| {
            let last = entries.with_untracked(|e| e.last().map_or(0, |e| e.id));
            if last > 1 {
                fetch(last);
            }
        }
    };
    let filter = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        fetch(0);
    };
    view! {
        <section class="page" data-page="audit">
            <div class="page-head">
                <h1>"Audit log"</h1>
                <form class="inline-form" on:submit=filter>
                    <input
                        id="audit-actor"
                        type="search"
                        placeholder="Actor"
                        prop:value=move || actor.get()
                        on:input=move |e| actor.set(event_target_value(&e))
                    />
                    <button class="button" type="submit">"Filter"</button>
                </form>
            </div>
            {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
            <Show
                when=move || !entries.with(Vec::is_empty) || loading.get()
                fallback=|| view! { <Empty title="No entries">"Nothing privileged has happened yet."</Empty> }
            >
                <div class="table-wrap">
                <table class="table audit-table">
                    <thead>
                        <tr>
                            <th>"When"</th>
                            <th>"Who"</th>
                            <th>"What"</th>
                            <th>"On"</th>
                            <th>"From"</th>
                            <th>"Outcome"</th>
                        </tr>
                    </thead>
                    <tbody>
                        <For each=move || entries.get() key=|e| e.id let:e>
                            <tr data-audit-id=e.id.to_string() data-outcome=e.outcome.clone()>
                                <td>
                                    <Ago at=time_format::timestamp_ms(e.time.as_ref()) />
                                </td>
                                <td class="audit-actor">{e.actor.clone()}</td>
                                <td class="audit-action">
                                    <code>{e.action.clone()}</code>
                                </td>
                                <td>{e.target.clone()}</td>
                                <td class="muted">{e.peer.clone()}</td>
                                <td class=if e.outcome == "ok" { "audit-ok" } else { "audit-refused" }>{e.outcome.clone()}</td>
                            </tr>
                        </For>
                    </tbody>
                </table>
                </div>
            </Show>
            <button
                id="audit-older"
                class="button"
                on:click=older
                hidden=move || !more.get()
                disabled=move || loading.get()
            >
                "Older entries"
            </button>
        </section>
    }
}
