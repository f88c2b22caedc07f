//! `/sign-in`: paste an API token; it is checked with a cheap call before
//! it is kept (in `localStorage`).

use leptos::{ev::SubmitEvent, prelude::*, task::spawn_local};
use leptos_router::{
    NavigateOptions,
    hooks::{use_navigate, use_query_map},
};
use tonic::Code;
use viaduct_proto::v1::{FleetStatsRequest, ListRunsRequest, PageRequest};

use crate::app::{
    api::{Api, ApiError, use_session},
    browser,
};

/// Where to go after signing in: a local path from `?next=`, else `/`.
fn safe_next(next: Option<String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/sign-in") && !n.contains('\\') => n,
        _ => "/".to_string(),
    }
}

/// Checks a token: `Runners.Stats` (cheap); a token that may not read the
/// fleet but may list runs is fine too.
async fn check_token(token: &str) -> Result<(), String> {
    let Some(api) = Api::with_token(token) else {
        return Err("That token has characters a token never has. Paste it again.".into());
    };
    let refused = |e: ApiError| match e.code {
        Code::Unauthenticated => "The server refused this token.".to_string(),
        Code::PermissionDenied => "This token may not use the API.".to_string(),
        _ => format!("Cannot check the token: {e}"),
    };
    match api.runners().stats(FleetStatsRequest {}).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::PermissionDenied => {
            let req = ListRunsRequest {
                page: Some(PageRequest { page_size: 1, page_token: String::new() }),
                ..Default::default()
            };
            api.runs().list(req).await.map(|_| ()).map_err(|s| refused(ApiError::from_status(&s)))
        }
        Err(s) => Err(refused(ApiError::from_status(&s))),
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
            let result = check_token(&value).await;
            busy.set(false);
            match result {
                Ok(()) => {
                    session.sign_in(value);
                    navigate(&next, NavigateOptions { replace: true, ..NavigateOptions::default() });
                }
                Err(msg) => error.set(Some(msg)),
            }
        });
    };

    view! {
        <section class="page sign-in" data-page="sign-in">
            <form class="card sign-in-card" on:submit=submit>
                <h1>"Sign in"</h1>
                {move || session.notice.get().map(|n| view! { <p class="notice">{n}</p> })}
                <label for="token">"API token"</label>
                <input
                    id="token"
                    type="password"
                    autocomplete="off"
                    spellcheck="false"
                    placeholder="vda_…"
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
                    "). It is kept in this browser only; signing out forgets it."
                </p>
            </form>
        </section>
    }
}
