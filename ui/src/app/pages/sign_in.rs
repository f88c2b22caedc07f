//! `/sign-in`: single sign-on (when the server has it), or an API token
//! handed to the server, which keeps it in an `HttpOnly` cookie — this
//! page never stores it.

use leptos::{ev::SubmitEvent, prelude::*, task::spawn_local};
use leptos_router::{
    NavigateOptions,
    hooks::{use_navigate, use_query_map},
};

use crate::{
    app::{api::use_session, browser},
    run_filter::encode,
};

/// Where to go after signing in: a local path from `?next=`, else `/`.
fn safe_next(next: Option<String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/sign-in") && !n.contains('\\') => n,
        _ => "/".to_string(),
    }
}

/// What a refused sign-in says.
fn refusal(a: &browser::Answer) -> String {
    match a.status {
        0 => "Cannot reach the server.".to_string(),
        401 => "The server refused this token.".to_string(),
        403 => "This token cannot sign in here.".to_string(),
        429 => format!("Too many failed sign-ins: try again in {} s.", a.retry_after.unwrap_or(60)),
        s => format!("The server answered {s}: {}", a.text.trim()),
    }
}

/// The sign-in page.
#[component]
pub fn SignInPage() -> impl IntoView {
    browser::set_title("Sign in · Viaduct");
    let session = use_session();
    let navigate = use_navigate();
    let query = use_query_map();
    let token = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let sso = RwSignal::new(false);
    spawn_local(async move {
        let a = browser::fetch("GET", "/auth/config", None).await;
        sso.set(a.status == 200 && a.text.contains("\"sso\":true"));
    });
    let sso_href = move || format!("/auth/login?next={}", encode(&safe_next(query.get().get("next"))));

    let submit = move |ev: SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() {
            return;
        }
        let value = token.get_untracked().trim().to_string();
        if value.is_empty() {
            error.set(Some("Paste an API token first.".into()));
            return;
        }
        busy.set(true);
        error.set(None);
        let navigate = navigate.clone();
        let next = safe_next(query.get_untracked().get("next"));
        spawn_local(async move {
            let answer = browser::fetch("POST", "/auth/session", Some(&value)).await;
            if answer.status == 200 {
                token.set(String::new());
                session.refresh().await;
                busy.set(false);
                navigate(&next, NavigateOptions { replace: true, ..NavigateOptions::default() });
            } else {
                busy.set(false);
                error.set(Some(refusal(&answer)));
            }
        });
    };

    view! {
        <section class="page sign-in" data-page="sign-in">
            <form class="card sign-in-card" on:submit=submit>
                <h1>"Sign in"</h1>
                {move || session.notice.get().map(|n| view! { <p class="notice">{n}</p> })}
                <Show when=move || sso.get()>
                    // A full page load (not the app's router): the server
                    // sends the browser on to the sign-in provider.
                    <a id="sso" class="button primary" rel="external" href=sso_href>
                        "Sign in with single sign-on"
                    </a>
                    <p class="muted small">"or with an API token:"</p>
                </Show>
                <label for="token">"API token"</label>
                <input
                    id="token"
                    type="password"
                    autocomplete="off"
                    spellcheck="false"
                    placeholder="vdt_…"
                    prop:value=move || token.get()
                    on:input=move |e| token.set(event_target_value(&e))
                />
                <button id="sign-in" class="button primary" type="submit" disabled=move || busy.get()>
                    {move || if busy.get() { "Checking…" } else { "Sign in" }}
                </button>
                {move || error.get().map(|e| view! { <p id="sign-in-error" class="form-error" role="alert">{e}</p> })}
                <p class="muted small">
                    "The server wrote an admin token when it first started ("
                    <code>".viaduct-dev/data/admin-token"</code>
                    " with "
                    <code>"cargo xtask up"</code>
                    "). The server keeps your session in a cookie scripts cannot read; signing out ends it."
                </p>
            </form>
        </section>
    }
}
