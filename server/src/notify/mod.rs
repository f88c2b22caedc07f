//! Notifications of ended runs and jobs (`notify:` in a pipeline): signed
//! webhooks, Slack and Matrix incoming webhooks, and email over SMTP.
//!
//! The engine writes each one into the `notify_outbox` tree in the
//! transition that ended its run or job (`engine::notifications`); the
//! [`Notifier`] sends them, one pass at a time: it reads what waits (at
//! most [`BATCH`], oldest first), waits until that is durable, and sends
//! each channel's (a URL's secret, or an email's recipients) in order, one
//! at a time, channels side by side. A notification sent is deleted; one
//! that failed waits with its channel (what a rate limit asked for, else 1 s
//! doubling up to 5 minutes) and keeps the ones behind it waiting; one the
//! destination refuses for good (4xx), whose secret is gone, or still
//! failing after [`EXPIRY_MS`] is dropped with a line in the log. `/metrics`
//! counts sent, retried and dropped ones.
//!
//! Webhooks carry the JSON of [`message::payload`] (documented by
//! `docs/notification.schema.json`), `X-Viaduct-Event`, `X-Viaduct-Delivery`
//! (the same id when sent again after a crash) and, when the rule names a key,
//! `X-Viaduct-Signature-256: sha256=<hex HMAC-SHA256 of the body>`. URLs are
//! read from secrets at sending time and must be `https://` (or `http://` to
//! this machine); redirects are not followed.

pub mod message;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::watch;

use crate::{
    error::Result,
    outbound::{self, Reply},
    repos::Repos,
    secrets::SecretBox,
    store::{Store, T, WriteSet, decode, now_ms, records::NotificationRecord},
};

/// The most notifications read in one pass.
pub const BATCH: usize = 200;
/// The most waiting notifications a pass looks at.
const SCAN: usize = 50 * BATCH;
/// Channels sent to at once.
const CHANNELS_AT_ONCE: usize = 8;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A notification still failing this long after it was written is dropped.
pub const EXPIRY_MS: i64 = 24 * 3600 * 1000;

/// Email over SMTP.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `smtp://host[:port]` (STARTTLS when offered; plain only to this
    /// machine), `smtp://host:port?tls=required`, or `smtps://host[:port]`.
    pub url: String,
    /// The `From:` address.
    pub from: String,
    /// User and password, if the server wants them.
    pub credentials: Option<(String, String)>,
    /// The only domains mail goes to (a pipeline names the addresses: the
    /// administrator says where its mail may go).
    pub allowed_domains: Vec<String>,
}

/// The mail server's URL as it is used: `smtps://`, or `smtp://` with
/// STARTTLS required — plain SMTP only to this machine.
fn smtp_url(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?;
    // `smtp:` is not a scheme the URL standard knows: its host comes as
    // text, an address included.
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => anyhow::bail!("--smtp-url names no host"),
    };
    let tls = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    match (parsed.scheme(), tls.as_deref(), loopback) {
        ("smtps", _, _) | ("smtp", Some("required"), _) | ("smtp", _, true) => Ok(url.to_string()),
        ("smtp", None, false) => {
            let sep = if parsed.query().is_some() { '&' } else { '?' };
            Ok(format!("{url}{sep}tls=required"))
        }
        ("smtp", Some(other), false) => anyhow::bail!(
            "--smtp-url: tls={other} would let mail and the password cross the network in clear text: use tls=required or smtps://"
        ),
        (other, ..) => anyhow::bail!("--smtp-url: `{other}://` is not smtp:// or smtps://"),
    }
}

/// Counts for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Notifications sent.
    pub sent: AtomicU64,
    /// Attempts that failed and will be tried again.
    pub retried: AtomicU64,
    /// Notifications given up on.
    pub dropped: AtomicU64,
}

/// A channel's wait after a failure.
#[derive(Default)]
struct Turn {
    not_before: Option<Instant>,
    failures: u32,
}

/// See the module docs.
pub struct Notifier {
    store: Arc<Store>,
    secrets: Arc<SecretBox>,
    repos: Arc<Repos>,
    http: reqwest::Client,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, lettre::message::Mailbox)>,
    allowed_domains: Vec<String>,
    turns: Mutex<HashMap<String, Turn>>,
    /// Counts for `/metrics`.
    pub counters: Counters,
}

/// A channel's notifications read in a pass: (key, record), oldest first.
type Waiting = Vec<(Vec<u8>, NotificationRecord)>;

/// How sending one went.
enum Sent {
    Done,
    Retry(Option<Duration>, String),
    Dropped(String),
}

impl Notifier {
    /// The sender; `repos` gives the URL of the web UI, `smtp` the mail
    /// server (none: email notifications are dropped, with a line in the log).
    pub fn new(
        store: Arc<Store>,
        secrets: Arc<SecretBox>,
        repos: Arc<Repos>,
        smtp: Option<SmtpConfig>,
    ) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("viaduct/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let allowed = smtp.as_ref().map(|c| c.allowed_domains.clone()).unwrap_or_default();
        let smtp = smtp.map(|c| -> anyhow::Result<_> {
            let mut transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp_url(&c.url)?)
                .map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?
                .timeout(Some(TIMEOUT));
            if let Some((user, password)) = c.credentials {
                transport =
                    transport.credentials(lettre::transport::smtp::authentication::Credentials::new(user, password));
            }
            let from = c.from.parse().map_err(|e| anyhow::anyhow!("--smtp-from `{}`: {e}", c.from))?;
            Ok((transport.build(), from))
        });
        Ok(Arc::new(Self {
            store,
            secrets,
            repos,
            http,
            smtp: smtp.transpose()?,
            allowed_domains: allowed.into_iter().map(|d| d.trim().to_ascii_lowercase()).collect(),
            turns: Mutex::default(),
            counters: Counters::default(),
        }))
    }

    /// Sends notifications whenever the engine writes some (`signal`
    /// changes), and at least every second.
    pub fn spawn(self: &Arc<Self>, mut signal: watch::Receiver<u64>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let more = match this.pass().await {
                    Ok(more) => more,
                    Err(e) => {
                        tracing::warn!(error = %e, "notifications: pass failed");
                        false
                    }
                };
                if more {
                    continue;
                }
                tokio::select! {
                    changed = signal.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// One pass; whether it sent or dropped something (so there may be more).
    async fn pass(&self) -> Result<bool> {
        // Those of channels that wait are passed over, so a dead webhook
        // does not hold up the others.
        let now = Instant::now();
        let waiting: Vec<String> = {
            let turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.iter().filter(|(_, t)| t.not_before.is_some_and(|t| t > now)).map(|(c, _)| c.clone()).collect()
        };
        let mut channels: Vec<(String, Waiting)> = Vec::new();
        let mut read = 0;
        let mut broken = WriteSet::default();
        // Bounded: behind a long backlog of waiting channels, a pass looks
        // this far and no further.
        for kv in self.store.tree(T::NotifyOutbox).iter().take(SCAN) {
            let (key, value) = kv?;
            let rec = match decode::<NotificationRecord>(T::NotifyOutbox, &value) {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::warn!(error = %e, "a waiting notification cannot be read: dropped");
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    broken.delete(T::NotifyOutbox, key);
                    continue;
                }
            };
            let channel = channel_of(&rec);
            if waiting.contains(&channel) {
                continue;
            }
            match channels.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, list)) => list.push((key, rec)),
                None => channels.push((channel, vec![(key, rec)])),
            }
            read += 1;
            if read == BATCH {
                break;
            }
        }
        if !broken.is_empty() {
            self.store.commit(&broken)?;
        }
        if channels.is_empty() {
            return Ok(false);
        }
        // Sent only once durable: nobody is told of an end a crash undoes.
        self.store.wait_durable(self.store.ticket_soon()).await;
        let done: Vec<usize> = futures_util::stream::iter(channels)
            .map(|(channel, list)| async move { self.send_channel(&channel, list).await })
            .buffer_unordered(CHANNELS_AT_ONCE)
            .collect()
            .await;
        Ok(done.iter().any(|n| *n > 0))
    }

    /// Sends one channel's notifications in order, until one fails; how
    /// many were sent or dropped.
    async fn send_channel(&self, channel: &str, list: Waiting) -> usize {
        let mut finished = 0;
        for (key, rec) in list {
            let delivery = hex::encode(&key);
            let sent = self.send(&rec, &delivery).await;
            let outcome = match sent {
                Sent::Retry(_, why)
                    if now_ms() - rec.finished_ms.max(rec.started_ms) > EXPIRY_MS && rec.finished_ms > 0 =>
                {
                    Sent::Dropped(format!("still failing after a day: {why}"))
                }
                other => other,
            };
            match outcome {
                Sent::Done => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(channel, event = %rec.event, run = %rec.run_id, "notification sent");
                }
                Sent::Dropped(why) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(channel, run = %rec.run_id, error = %why, "notification dropped");
                }
                Sent::Retry(wait, why) => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
                    let turn = turns.entry(channel.to_string()).or_default();
                    turn.failures = turn.failures.saturating_add(1);
                    let wait = wait.unwrap_or_else(|| outbound::backoff(turn.failures));
                    turn.not_before = Some(Instant::now() + wait);
                    tracing::info!(channel, run = %rec.run_id, error = %why, wait_ms = wait.as_millis() as u64, "notification not sent: will try again");
                    break;
                }
            }
            self.turns.lock().unwrap_or_else(|p| p.into_inner()).remove(channel);
            let mut ws = WriteSet::default();
            ws.delete(T::NotifyOutbox, &key);
            // A deletion lost in a crash sends it again, with the same
            // delivery id; flushed soon so that window stays short.
            if let Err(e) = self.store.commit(&ws) {
                tracing::warn!(error = %e, "cannot delete a sent notification");
                break;
            }
            self.store.ticket_soon();
            finished += 1;
        }
        finished
    }

    /// Sends one notification.
    async fn send(&self, n: &NotificationRecord, delivery: &str) -> Sent {
        let rule = n.rule.clone().unwrap_or_default();
        let base = self.repos.public_url().to_string();
        if rule.kind == "email" {
            return self.email(n, &rule.to, &base).await;
        }
        let url = match self.secret(&rule.url_secret) {
            Ok(url) => url.trim().to_string(),
            Err(why) => return Sent::Dropped(why),
        };
        if let Err(why) = outbound::check_destination(&url) {
            // Not the value: it is a secret.
            return Sent::Dropped(format!("secret `{}` is not a notification URL: {why}", rule.url_secret));
        }
        let body = match rule.kind.as_str() {
            "slack" => message::slack(n, &base),
            "matrix" => message::matrix(n, &base),
            _ => message::payload(n, delivery, &base, now_ms()),
        }
        .to_string();
        let mut req = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-viaduct-event", &n.event)
            .header("x-viaduct-delivery", delivery);
        if !rule.key_secret.is_empty() {
            let key = match self.secret(&rule.key_secret) {
                Ok(k) => k,
                Err(why) => return Sent::Dropped(why),
            };
            req = req.header("x-viaduct-signature-256", format!("sha256={}", sign(key.as_bytes(), body.as_bytes())));
        }
        let answer = match req.body(body).send().await {
            Ok(a) => a,
            Err(e) => return Sent::Retry(None, format!("cannot reach the notification URL: {}", e.without_url())),
        };
        let (code, headers) = (answer.status(), answer.headers().clone());
        let bytes = crate::outbound::body_of(answer).await;
        match outbound::classify(code, &headers, &bytes, (now_ms() / 1000).max(0) as u64) {
            Reply::Accepted(_) => Sent::Done,
            // Not a forge: a 401/403/404 from a webhook will not change by itself.
            Reply::Retry { why, .. } if matches!(code.as_u16(), 401 | 403 | 404) => Sent::Dropped(why),
            Reply::Retry { wait, why } => Sent::Retry(wait, why),
            Reply::Refused(why) => Sent::Dropped(why),
        }
    }

    /// Sends one notification as an email.
    async fn email(&self, n: &NotificationRecord, to: &[String], base: &str) -> Sent {
        let Some((transport, from)) = &self.smtp else {
            return Sent::Dropped("email notifications need the server's --smtp-url".into());
        };
        let (subject, body) = message::email(n, base);
        let mut builder = lettre::Message::builder().from(from.clone()).subject(subject);
        for address in to {
            let domain = address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
            if !self.allowed_domains.contains(&domain) {
                return Sent::Dropped(format!("`{address}`: mail goes only to the domains of --smtp-allowed-domains"));
            }
            match address.parse() {
                Ok(mailbox) => builder = builder.to(mailbox),
                Err(e) => return Sent::Dropped(format!("`{address}` is not an address: {e}")),
            }
        }
        let mail = match builder.body(body) {
            Ok(m) => m,
            Err(e) => return Sent::Dropped(format!("cannot build the email: {e}")),
        };
        match transport.send(mail).await {
            Ok(_) => Sent::Done,
            Err(e) if e.is_permanent() => Sent::Dropped(format!("the mail server refused it: {e}")),
            Err(e) => Sent::Retry(None, format!("cannot send the email: {e}")),
        }
    }

    /// A secret's value, or why there is none.
    fn secret(&self, name: &str) -> std::result::Result<String, String> {
        match self.secrets.get(&self.store, name) {
            Ok(Some((value, _))) => Ok(value),
            Ok(None) => Err(format!("secret `{name}` is not set")),
            Err(e) => Err(format!("secret `{name}`: {e}")),
        }
    }
}

/// What orders notifications: the destination.
fn channel_of(n: &NotificationRecord) -> String {
    let rule = n.rule.clone().unwrap_or_default();
    match rule.kind.as_str() {
        "email" => format!("email:{}", rule.to.join(",")),
        kind => format!("{kind}:{}", rule.url_secret),
    }
}

/// The hex HMAC-SHA256 of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_leaves_this_machine_only_encrypted() {
        assert_eq!(smtp_url("smtp://mail.example").unwrap(), "smtp://mail.example?tls=required");
        assert_eq!(smtp_url("smtp://mail.example:587?tls=required").unwrap(), "smtp://mail.example:587?tls=required");
        assert_eq!(smtp_url("smtps://mail.example").unwrap(), "smtps://mail.example");
        assert_eq!(smtp_url("smtp://127.0.0.1:2525").unwrap(), "smtp://127.0.0.1:2525");
        assert_eq!(smtp_url("smtp://[::1]:2525").unwrap(), "smtp://[::1]:2525");
        assert_eq!(smtp_url("smtp://127.0.0.1.example:25").unwrap(), "smtp://127.0.0.1.example:25?tls=required");
        assert!(smtp_url("smtp://mail.example?tls=opportunistic").is_err());
        assert!(smtp_url("smtp://mail.example?tls=none").is_err());
        assert!(smtp_url("http://mail.example").is_err());
    }
}
