//! Calls the server makes to other services (forges, notification
//! webhooks): where they may go ([`check_destination`]), and what an
//! answer means ([`classify`]: taken, try again — and when — or refused for
//! good).

use std::time::Duration;

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::Value;

/// The longest wait a forge may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The wait when a forge says "rate limited" without saying how long
/// (GitHub's advice for its secondary rate limits: at least a minute).
pub const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// What to do after sending one status.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Accepted; the forge's answer.
    Accepted(Value),
    /// Send it again: after `wait` if the forge said how long (a rate
    /// limit), else after the usual backoff.
    Retry {
        /// How long the forge asked to wait.
        wait: Option<Duration>,
        /// What went wrong.
        why: String,
    },
    /// The request itself is wrong (the forge will never take it).
    Refused(String),
}

/// Reads an HTTP answer; `now_s` is the current Unix time (for GitHub's
/// `X-RateLimit-Reset`).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now_s: u64) -> Reply {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status.is_success() {
        return Reply::Accepted(json);
    }
    let message =
        json["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let message: String = message.chars().filter(|c| !c.is_control()).take(200).collect();
    let why = format!("HTTP {}: {message}", status.as_u16());
    let header =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let retry_after = header("retry-after").map(Duration::from_secs);
    let exhausted = header("x-ratelimit-remaining") == Some(0);
    let reset = header("x-ratelimit-reset").map(|at| Duration::from_secs(at.saturating_sub(now_s).max(1)));
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (retry_after.is_some() || exhausted || message.to_ascii_lowercase().contains("rate limit")));
    if rate_limited {
        // GitHub: `retry-after` first, then the primary limit's reset, else a minute.
        let wait = retry_after.or(if exhausted { reset } else { None }).unwrap_or(RATE_LIMIT_WAIT).min(MAX_WAIT);
        return Reply::Retry { wait: Some(wait), why: format!("rate limited, waiting {}s ({why})", wait.as_secs()) };
    }
    if status.is_redirection() {
        // Redirects are not followed (a token goes only where it was told):
        // a moved repository is for an administrator to see and fix.
        let to = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("?");
        let to: String = to.chars().filter(|c| !c.is_control()).take(200).collect();
        return Reply::Retry {
            wait: None,
            why: format!("HTTP {}: moved to {to} (redirects are not followed)", status.as_u16()),
        };
    }
    match status.as_u16() {
        // The server's trouble, or the token's or the repository's name —
        // which an administrator can fix: tried again until they expire.
        500..=599 | 408 | 401 | 403 | 404 => Reply::Retry { wait: retry_after.map(|w| w.min(MAX_WAIT)), why },
        _ => Reply::Refused(why),
    }
}

/// `https://`, or `http://` to a loopback address; no credentials or
/// fragment in it (a token or signing key goes with the call: over a
/// network only encrypted, and only where its owner said). The reason does
/// not repeat the URL, which may be a secret's value.
pub fn check_destination(url: &str) -> Result<(), &'static str> {
    let Ok(parsed) = url::Url::parse(url) else { return Err("not a URL") };
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err("no credentials or fragment in it");
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err("no host"),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => {
            Err("use https:// (http:// only to this machine: what is sent would cross the network in clear text)")
        }
        _ => Err("use https://"),
    }
}

/// The most of an answer's body read (a hostile or broken destination
/// cannot fill the server's memory).
pub const MAX_ANSWER: usize = 256 * 1024;

/// An answer's body, at most [`MAX_ANSWER`] bytes of it.
pub async fn body_of(mut answer: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        let room = MAX_ANSWER.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER {
            break;
        }
    }
    body
}

/// The backoff after `failures` failed attempts in a row: 1 s, doubling, at
/// most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_say_how_long() {
        let none = HeaderMap::new();
        let r = classify(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "7")]), b"{}", 0);
        assert!(matches!(r, Reply::Retry { wait: Some(w), .. } if w == Duration::from_secs(7)));
        // GitHub's primary limit: remaining 0, reset at a time.
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1030")]);
        let r = classify(StatusCode::FORBIDDEN, &h, br#"{"message":"API rate limit exceeded"}"#, 1000);
        assert!(matches!(r, Reply::Retry { wait: Some(w), .. } if w == Duration::from_secs(30)));
        // Its secondary limit without a header: a minute.
        let r = classify(StatusCode::FORBIDDEN, &none, br#"{"message":"You have exceeded a secondary rate limit"}"#, 0);
        assert!(matches!(r, Reply::Retry { wait: Some(w), .. } if w == RATE_LIMIT_WAIT));
        let r = classify(StatusCode::TOO_MANY_REQUESTS, &headers(&[("retry-after", "999999")]), b"", 0);
        assert!(matches!(r, Reply::Retry { wait: Some(w), .. } if w == MAX_WAIT));
    }

    #[test]
    fn server_errors_retry_and_bad_requests_do_not() {
        let none = HeaderMap::new();
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, &none, b"", 0), Reply::Retry { wait: None, .. }));
        assert!(matches!(classify(StatusCode::UNAUTHORIZED, &none, b"", 0), Reply::Retry { .. }));
        let moved = headers(&[("location", "https://api.github.com/repositories/42/statuses/x")]);
        assert!(
            matches!(classify(StatusCode::MOVED_PERMANENTLY, &moved, b"", 0), Reply::Retry { why, .. } if why.contains("moved to https://api.github.com/repositories/42"))
        );
        let r = classify(StatusCode::UNPROCESSABLE_ENTITY, &none, br#"{"message":"No commit found for SHA: x"}"#, 0);
        assert_eq!(r, Reply::Refused("HTTP 422: No commit found for SHA: x".into()));
        assert!(matches!(classify(StatusCode::CREATED, &none, br#"{"id":1}"#, 0), Reply::Accepted(v) if v["id"] == 1));
        assert_eq!(
            (backoff(1), backoff(3), backoff(30)),
            (Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(256))
        );
    }
}
