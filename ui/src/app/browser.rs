//! Small wrappers over browser APIs (time, timers, storage, the DOM) that
//! never panic: a missing window or a refused storage reads as "nothing".

use std::time::Duration;

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// `localStorage` key of the colour theme ("light" or "dark"; absent:
/// follow the system).
pub const THEME_KEY: &str = "viaduct.theme";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// A random number in 0–1.
pub fn random() -> f64 {
    js_sys::Math::random()
}

/// Waits `ms` milliseconds (a `setTimeout` promise).
pub async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        if let Some(w) = web_sys::window() {
            let ms = i32::try_from(ms).unwrap_or(i32::MAX);
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        } else {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// [`sleep`] taking a `Duration`.
pub async fn sleep_for(d: Duration) {
    sleep(u32::try_from(d.as_millis()).unwrap_or(u32::MAX)).await;
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// A `localStorage` value.
pub fn load(key: &str) -> Option<String> {
    storage()?.get_item(key).ok().flatten()
}

/// Stores a `localStorage` value (ignored when storage is refused).
pub fn store(key: &str, value: &str) {
    if let Some(s) = storage() {
        let _ = s.set_item(key, value);
    }
}

/// Removes a `localStorage` value.
pub fn forget(key: &str) {
    if let Some(s) = storage() {
        let _ = s.remove_item(key);
    }
}

/// An HTTP answer: status, its `Retry-After` (seconds) and its body.
pub struct Answer {
    /// The HTTP status (0: the request failed).
    pub status: u16,
    /// Seconds to wait, on 429.
    pub retry_after: Option<u32>,
    /// The body as text.
    pub text: String,
}

/// Sends a request to the page's own origin (cookies included, as for
/// every same-origin request) with `x-viaduct-request: 1`, the header the
/// server's sign-in routes ask of same-origin scripts.
pub async fn fetch(method: &str, path: &str, body: Option<&str>) -> Answer {
    let failed = Answer { status: 0, retry_after: None, text: String::new() };
    let Some(window) = web_sys::window() else { return failed };
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_credentials(web_sys::RequestCredentials::SameOrigin);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(b));
    }
    if let Ok(headers) = web_sys::Headers::new() {
        let _ = headers.set("x-viaduct-request", "1");
        init.set_headers(&headers);
    }
    let Ok(resp) = JsFuture::from(window.fetch_with_str_and_init(path, &init)).await else { return failed };
    let Ok(resp) = resp.dyn_into::<web_sys::Response>() else { return failed };
    let retry_after = resp.headers().get("retry-after").ok().flatten().and_then(|v| v.parse().ok());
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    Answer { status: resp.status(), retry_after, text }
}

/// The page's origin, e.g. `http://127.0.0.1:7700` (the gRPC-web base URL).
pub fn origin() -> String {
    web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default()
}

/// The document, if any.
pub fn document() -> Option<web_sys::Document> {
    web_sys::window()?.document()
}

/// The first element matching a CSS selector.
pub fn query(selector: &str) -> Option<web_sys::Element> {
    document()?.query_selector(selector).ok().flatten()
}

/// Every element matching a CSS selector, in document order.
pub fn query_all(selector: &str) -> Vec<web_sys::Element> {
    let Some(list) = document().and_then(|d| d.query_selector_all(selector).ok()) else { return Vec::new() };
    (0..list.length()).filter_map(|i| list.item(i)).filter_map(|n| n.dyn_into::<web_sys::Element>().ok()).collect()
}

/// Focuses (and selects the text of) an element.
pub fn focus(el: &web_sys::Element) {
    if let Some(input) = el.dyn_ref::<web_sys::HtmlInputElement>() {
        let _ = input.focus();
        input.select();
    } else if let Some(h) = el.dyn_ref::<web_sys::HtmlElement>() {
        let _ = h.focus();
    }
}

/// Takes focus away from whatever has it.
pub fn blur_active() {
    if let Some(el) = document().and_then(|d| d.active_element())
        && let Some(h) = el.dyn_ref::<web_sys::HtmlElement>()
    {
        let _ = h.blur();
    }
}

/// True when focus is in a text field (shortcuts stay out of the way).
pub fn focus_in_field() -> bool {
    let Some(el) = document().and_then(|d| d.active_element()) else { return false };
    let tag = el.tag_name().to_ascii_lowercase();
    matches!(tag.as_str(), "input" | "textarea" | "select")
        || el.get_attribute("contenteditable").is_some_and(|v| v != "false")
}

/// Scrolls an element into view only as far as needed.
pub fn reveal(el: &web_sys::Element) {
    let opts = web_sys::ScrollIntoViewOptions::new();
    opts.set_block(web_sys::ScrollLogicalPosition::Nearest);
    el.scroll_into_view_with_scroll_into_view_options(&opts);
}

/// Sets (or removes) the `data-theme` attribute of `<html>`.
pub fn apply_theme(theme: Option<&str>) {
    if let Some(root) = document().and_then(|d| d.document_element()) {
        let _ = match theme {
            Some(t) => root.set_attribute("data-theme", t),
            None => root.remove_attribute("data-theme"),
        };
    }
}

/// True when the system prefers a dark colour scheme.
pub fn system_prefers_dark() -> bool {
    web_sys::window()
        .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
        .is_some_and(|m| m.matches())
}

/// Sets the document title.
pub fn set_title(title: &str) {
    if let Some(d) = document() {
        d.set_title(title);
    }
}
