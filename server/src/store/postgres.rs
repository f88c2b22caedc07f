//! PostgreSQL: the backend for a server whose state lives in a database it
//! does not own (`--store postgres://…`).
//!
//! Every tree is one table, `viaduct_kv (tree, k, v)`, keyed by the tree's
//! name and the key; PostgreSQL orders `bytea` byte by byte, as sled orders
//! keys, so ranges read the same on every backend. A write set is one
//! transaction; a write is durable when its commit returns (each
//! connection sets `synchronous_commit = on`), so [`Kv::flush`] has nothing
//! left to do. The server does not commit each state transition here: it
//! holds them in a [`super::write_back::WriteBack`] and commits them here
//! in batches, one per group commit. Ids come from a sequence, a block at a
//! time. The schema is versioned:
//! [`MIGRATIONS`] are applied in order on open, each once, under an
//! advisory lock (servers starting together do not race), and a database
//! migrated by a newer server is refused.
//!
//! One engine per database: the engine keeps its queue and leases in
//! memory. A lone server holds an advisory lock for as long as it runs
//! ([`hold_server_lock`]); replicas (`--replica`) elect a leader through a
//! lease row instead ([`spawn_lease`]), and the leader's every write checks
//! its fencing epoch ([`Fence`]).
//!
//! The [`Kv`] trait is synchronous — the engine calls it under its lock, as
//! it calls sled. The `postgres` client runs its own runtime, which must not
//! run inside the server's, so each connection lives on a thread of its own
//! and calls reach it over a channel. A connection that breaks is opened
//! again for the next call; the call that saw it break fails.
//!
//! TLS follows the URL's `sslmode`, as libpq's does — `disable`, `prefer`
//! (the default: TLS when the database offers it) or `require` — except
//! that whenever TLS is used the database's certificate is verified: its
//! chain against the system's roots and `--store-ca-file`, and its name
//! against the URL's host (rustls with ring, [`Target`]). A certificate
//! that does not verify is an error, never a quiet fall back to plaintext.
//! A Unix socket has no TLS (PostgreSQL offers none there).

use std::{
    collections::{HashMap, VecDeque},
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
};

use postgres::{
    Client, Row, Statement,
    config::{Host, SslMode},
    types::ToSql,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    T, TREE_NAMES,
    kv::{Entries, Entry, Kv, Op},
};
use crate::error::{Error, Result};

/// The schema, in order: (version, name, SQL). Append; never edit one that
/// has shipped.
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "kv", include_str!("migrations/0001_kv.sql")), (2, "leader", include_str!("migrations/0002_leader.sql"))];

/// Connections (each on its own thread) per server.
const CONNECTIONS: usize = 4;
/// Entries read by a range's first round trip from either end (callers
/// often want one: the last chunk of a log); each further page doubles, up
/// to [`MAX_PAGE`].
const FIRST_PAGE: i64 = 4;
/// The most entries one round trip reads.
const MAX_PAGE: i64 = 512;
/// Ids taken from the sequence per round trip.
const ID_BLOCK: i64 = 64;
/// Bytes of keys and values per statement of a commit (a commit of more
/// runs several statements in its one transaction).
const STATEMENT_BYTES: usize = 8 << 20;
/// The advisory lock migrations hold (a fixed number of our own).
const MIGRATION_LOCK: i64 = 0x0076_6961_6475_6374;
/// The advisory lock a server holds on its database for as long as it
/// runs: one server per database.
const SERVER_LOCK: i64 = 0x0076_6961_6475_6375;
/// How long a starting server waits for the lock (a server killed a moment
/// ago still holds it until PostgreSQL sees its connection close).
const SERVER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

type PgResult<R> = std::result::Result<R, postgres::Error>;
type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// Refuses a URL that carries a password (it would show in the process
/// list and in logs): the password goes in a file of its own.
pub fn check_url(url: &str) -> Result<()> {
    let config: postgres::Config =
        url.parse().map_err(|e| Error::invalid(format!("{} is not a PostgreSQL URL: {e}", redacted(url))))?;
    if config.get_password().is_some() {
        return Err(Error::invalid(
            "the store URL carries a password: put it in a file and pass --store-password-file instead",
        ));
    }
    Ok(())
}

/// How every connection of this process reaches the database: its
/// settings and its TLS. Built once per store, lock and lease thread by
/// [`Target::new`] — the one place a connector is made.
#[derive(Clone)]
struct Target {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    /// What the URL names, without a password (see [`redacted`]).
    name: String,
    /// The CA file trusted besides the system's roots.
    ca_file: Option<PathBuf>,
}

impl Target {
    /// The settings of `url` (with `password`, when given) and TLS as its
    /// `sslmode` says, trusting `ca_file` (PEM) besides the system's roots.
    fn new(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<Self> {
        let config = config(url, password)?;
        let tls = tls(&config, ca_file)?;
        Ok(Self { config, tls, name: redacted(url), ca_file: ca_file.map(Path::to_path_buf) })
    }

    /// What went wrong connecting, for a person: a failed TLS handshake
    /// says so (and what to do about a CA it does not know); a refusal of
    /// a connection without TLS says it was one.
    fn failed(&self, e: &postgres::Error) -> Error {
        let name = &self.name;
        let tcp = self.config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        if let Some(why) = tls_failure(e) {
            let hint = if !tcp && self.config.get_hostaddrs().is_empty() {
                " (PostgreSQL has no TLS on a Unix socket: leave sslmode=require to TCP)".to_string()
            } else if !why.contains("UnknownIssuer") {
                String::new()
            } else if let Some(ca) = &self.ca_file {
                format!(" (its certificate is signed neither by --store-ca-file {} nor by a system root)", ca.display())
            } else {
                " (its certificate is not signed by a system root: pass its CA with --store-ca-file)".to_string()
            };
            return Error::Storage(format!("TLS to {name} failed: {why}{hint}"));
        }
        let refused = e.code() == Some(&postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
        let hint = if refused && tcp && self.config.get_ssl_mode() == SslMode::Disable {
            " (this connection had no TLS: sslmode=disable)"
        } else {
            ""
        };
        Error::Storage(format!("cannot connect to {name}: {}{hint}", crate::error::with_causes(e)))
    }
}

/// Why a connection's TLS failed, if that is what failed: rustls's reason
/// (`invalid peer certificate: UnknownIssuer`), or the client's own
/// (`server does not support TLS`, with `sslmode=require`).
fn tls_failure(e: &postgres::Error) -> Option<String> {
    let cause = std::error::Error::source(e)?;
    let from_rustls = cause
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(r) = from_rustls {
        return Some(r.to_string());
    }
    // tokio-postgres's words for a failure of its TLS step.
    e.to_string().starts_with("error performing TLS handshake").then(|| cause.to_string())
}

/// The TLS connector of every connection to the database: rustls, the
/// database's certificate verified against the system's roots and
/// `ca_file` and its name checked against the URL's host (webpki).
/// Whether TLS is used at all is `sslmode`'s (the client asks, the
/// database answers); the system's roots are only read when a connection
/// may use TLS (not over a Unix socket, nor with `sslmode=disable`).
fn tls(config: &postgres::Config, ca_file: Option<&Path>) -> Result<MakeRustlsConnect> {
    let hosts = config.get_hosts();
    let may_use_tls = config.get_ssl_mode() != SslMode::Disable
        && (hosts.is_empty() || !config.get_hostaddrs().is_empty() || hosts.iter().any(|h| matches!(h, Host::Tcp(_))));
    let client = crate::tls::client_config(ca_file, "--store-ca-file", may_use_tls).map_err(Error::Storage)?;
    Ok(MakeRustlsConnect::new(client))
}

/// The connection settings of `url`, with `password` when given.
fn config(url: &str, password: Option<&str>) -> Result<postgres::Config> {
    let mut config: postgres::Config =
        url.parse().map_err(|e| Error::Storage(format!("{} is not a PostgreSQL URL: {e}", redacted(url))))?;
    if let Some(p) = password {
        config.password(p);
    }
    // A database that stops answering (a partition) is noticed in
    // seconds, not after the kernel's two hours.
    config
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5))
        .tcp_user_timeout(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok(config)
}

/// Makes this process the one server of the database at `url` (the
/// engine's queue and leases live in one process): takes the server lock
/// on a connection of its own — waiting a little for a server killed a
/// moment ago to lose it — and holds it. If that connection is ever lost,
/// the lock is gone and another server may take over, so this process
/// exits rather than go on beside it.
pub fn hold_server_lock(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<()> {
    let target = Target::new(url, password, ca_file)?;
    let name = target.name.clone();
    let (tx, rx) = mpsc::sync_channel::<Result<()>>(1);
    std::thread::Builder::new()
        .name("viaduct-pg-lock".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + SERVER_LOCK_WAIT;
            let mut client = loop {
                let attempt = connect(&target).and_then(|mut c| {
                    let got: bool = c.query_one("SELECT pg_try_advisory_lock($1)", &[&SERVER_LOCK])?.get(0);
                    Ok((c, got))
                });
                match attempt {
                    Ok((mut c, true)) => {
                        // Replicas elect their leader by lease, not by this
                        // lock: a live lease means they use this database.
                        let leased = c
                            .query_opt("SELECT 1 FROM viaduct_leader WHERE id = 1 AND expires_at > now()", &[])
                            .ok()
                            .flatten()
                            .is_some();
                        if leased {
                            let _ = tx.send(Err(Error::Storage(format!(
                                "replicas (--replica) use {name}: start this server with --replica too"
                            ))));
                            return;
                        }
                        break c;
                    }
                    Ok(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                    Ok(_) => {
                        let _ = tx.send(Err(Error::Storage(format!(
                            "another server uses {name}: one server per database (or several, all with --replica)"
                        ))));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(target.failed(&e)));
                        return;
                    }
                }
            };
            let _ = tx.send(Ok(()));
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                if let Err(e) = client.simple_query("SELECT 1") {
                    tracing::error!(error = %e, database = %name, "lost the connection holding this server's lock on its database (another server may take over): exiting");
                    std::process::exit(70);
                }
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the PostgreSQL lock thread: {e}")))?;
    rx.recv().map_err(|_| Error::Storage("PostgreSQL: the lock thread died".into()))?
}

/// See the module docs.
pub struct Postgres {
    jobs: mpsc::Sender<Job>,
    /// Set on a replica that leads: every write checks it.
    fence: Option<Fence>,
    /// Ids taken from the sequence and not handed out yet.
    ids: Mutex<VecDeque<u64>>,
}

/// The rows of one statement of a commit, column by column.
#[derive(Default)]
struct Rows {
    trees: Vec<&'static str>,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    bytes: usize,
}

/// A leader's right to write: the lease's epoch when it took the lead, and
/// who it is. A write whose transaction no longer finds both in the lease
/// row is refused (a successor took over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Raised by each new leader.
    pub epoch: i64,
    /// The replica's id (`host/pid/random`).
    pub holder: String,
}

/// What a replica is, as its lease thread sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// Not known yet (the database was not reached).
    Unknown,
    /// Another replica leads, reachable at `leader` (`None`: none leads
    /// right now, a lease just expired).
    Follower {
        /// The leader's URL.
        leader: Option<String>,
    },
    /// This replica leads.
    Leader(Fence),
}

/// A leader's write goes on only while the lease row still names it.
const FENCE_CHECK: &str = "SELECT 1 FROM viaduct_leader WHERE id = 1 AND epoch = $1 AND holder = $2 FOR SHARE";

/// How long a lease lasts without renewal: a leader killed -9 is replaced
/// this long after its last renewal (plus a poll).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the lease is renewed, or tried for.
const LEASE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Competes for the lead of the replicas on the database at `url`, as
/// `holder`, reachable by the others at `advertise`: a thread of its own
/// tries for the lease every second while another holds it, and renews it
/// every second once it leads. The role is published on the returned
/// channel. A leader that cannot renew before its lease would expire — or
/// finds it taken — exits the process: its successor may already write.
pub fn spawn_lease(
    url: &str,
    password: Option<&str>,
    ca_file: Option<&Path>,
    holder: String,
    advertise: String,
) -> Result<tokio::sync::watch::Receiver<Leadership>> {
    let target = Target::new(url, password, ca_file)?;
    let name = target.name.clone();
    let (tx, rx) = tokio::sync::watch::channel(Leadership::Unknown);
    std::thread::Builder::new()
        .name("viaduct-pg-lease".into())
        .spawn(move || {
            let ttl = LEASE_TTL.as_secs_f64();
            let mut client: Option<Client> = None;
            let mut led: Option<(i64, std::time::Instant)> = None;
            let mut shared_held = false;
            loop {
                if client.as_ref().is_none_or(Client::is_closed) {
                    shared_held = false;
                    client = match connect(&target) {
                        // The lease table is a migration: followers never
                        // open the store, so they apply it here.
                        Ok(mut c) => match migrate(&mut c).and_then(|()| {
                            // A takeover waits at most this long for a
                            // leader's open write (which the database ends
                            // after 10 s idle); a renewal never hangs.
                            c.batch_execute("SET lock_timeout = '2s'; SET statement_timeout = '3s'").map_err(storage)
                        }) {
                            Ok(()) => Some(c),
                            Err(e) => {
                                tracing::error!(error = %e, database = %name, "lease: cannot migrate the database");
                                None
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %target.failed(&e), "lease: cannot connect");
                            None
                        }
                    };
                }
                // A lone server (without --replica) holds the server lock
                // exclusively; replicas hold it shared on this connection,
                // so neither can run an engine beside the other.
                if !shared_held && let Some(c) = client.as_mut() {
                    match c.query_one("SELECT pg_try_advisory_lock_shared($1)", &[&SERVER_LOCK]) {
                        Ok(r) if r.get::<_, bool>(0) => shared_held = true,
                        Ok(_) => {
                            tracing::error!(database = %name, "a server without --replica uses this database: replicas cannot share it; exiting");
                            std::process::exit(2);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lease: cannot check for a lone server");
                            client = None;
                        }
                    }
                }
                let now = std::time::Instant::now();
                match (led, client.as_mut()) {
                    (Some((epoch, renewed)), c) => {
                        let kept = c.map(|c| {
                            c.execute(
                                "UPDATE viaduct_leader SET expires_at = now() + make_interval(secs => $3) \
                                 WHERE id = 1 AND holder = $1 AND epoch = $2",
                                &[&holder, &epoch, &ttl],
                            )
                        });
                        match kept {
                            Some(Ok(1)) => led = Some((epoch, now)),
                            Some(Ok(_)) => {
                                tracing::error!(epoch, "this replica lost its lead (another took over): exiting");
                                std::process::exit(70);
                            }
                            Some(Err(e)) if now.duration_since(renewed) + LEASE_POLL >= LEASE_TTL => {
                                tracing::error!(error = %e, epoch, "this replica cannot renew its lead before it expires: exiting");
                                std::process::exit(70);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "lease: renewal failed; retrying");
                                client = None;
                            }
                            None if now.duration_since(renewed) + LEASE_POLL >= LEASE_TTL => {
                                tracing::error!(epoch, "this replica cannot reach its database to renew its lead: exiting");
                                std::process::exit(70);
                            }
                            None => {}
                        }
                    }
                    (None, Some(c)) => {
                        let took = c.query_opt(
                            "UPDATE viaduct_leader SET epoch = epoch + 1, holder = $1, url = $2, \
                             expires_at = now() + make_interval(secs => $3) \
                             WHERE id = 1 AND expires_at < now() RETURNING epoch",
                            &[&holder, &advertise, &ttl],
                        );
                        let role = match took {
                            Ok(Some(row)) => {
                                let epoch: i64 = row.get(0);
                                led = Some((epoch, now));
                                tracing::info!(epoch, "this replica leads");
                                Leadership::Leader(Fence { epoch, holder: holder.clone() })
                            }
                            Ok(None) => {
                                match c.query_opt("SELECT url FROM viaduct_leader WHERE id = 1 AND expires_at >= now()", &[]) {
                                    Ok(row) => Leadership::Follower { leader: row.map(|r| r.get(0)) },
                                    Err(e) => {
                                        tracing::warn!(error = %e, "lease: cannot read the leader");
                                        client = None;
                                        Leadership::Follower { leader: None }
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "lease: cannot try for the lead");
                                client = None;
                                Leadership::Follower { leader: None }
                            }
                        };
                        tx.send_if_modified(|r| {
                            let changed = *r != role;
                            *r = role;
                            changed
                        });
                    }
                    (None, None) => {}
                }
                std::thread::sleep(LEASE_POLL);
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the PostgreSQL lease thread: {e}")))?;
    Ok(rx)
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("PostgreSQL: {e}"))
}

/// What `url` names, without its password, for messages and logs.
fn redacted(url: &str) -> String {
    let Ok(c) = url.parse::<postgres::Config>() else { return "the PostgreSQL URL".into() };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432u16)))
        .map(|(h, port)| match h {
            postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "database `{}` on {} as `{}`",
        c.get_dbname().unwrap_or("(default)"),
        hosts.join(","),
        c.get_user().unwrap_or("(default)")
    )
}

/// Opens a connection that commits durably. A transaction left open —
/// its server paused or cut off between the fence check and the commit —
/// is ended by the database after 10 s, so it cannot hold the lease row
/// (and with it every takeover) for longer.
fn connect(target: &Target) -> PgResult<Client> {
    let mut client = target.config.connect(target.tls.clone())?;
    client.batch_execute("SET synchronous_commit = on; SET idle_in_transaction_session_timeout = '10s'")?;
    Ok(client)
}

/// Whether this connection uses TLS, as the database sees it.
const TLS_USED: &str = "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";

/// A connection as the store makes them (tests).
#[cfg(test)]
pub(crate) fn client(url: &str, ca_file: Option<&Path>) -> Result<Client> {
    let target = Target::new(url, None, ca_file)?;
    std::thread::spawn(move || connect(&target).map_err(|e| target.failed(&e)))
        .join()
        .map_err(|_| Error::Storage("connecting panicked".into()))?
}

/// One connection and its prepared statements.
struct Conn {
    target: Target,
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The client, connected again if the connection broke.
    fn client(&mut self) -> PgResult<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.client = None;
            self.client = Some(connect(&self.target)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// `sql`, prepared once per connection.
    fn statement(&mut self, sql: &'static str) -> PgResult<Statement> {
        self.client()?;
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client()?.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> PgResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.client()?.query(&statement, params)
    }
}

impl Postgres {
    /// Connects to `url` (with `password`, when it is not in the URL, and
    /// trusting `ca_file` for TLS besides the system's roots), applies the
    /// migrations the database lacks, and starts the connection threads.
    pub fn open(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<Self> {
        let target = Target::new(url, password, ca_file)?;
        // The client runs its own runtime: never inside the caller's.
        let first = {
            let target = target.clone();
            std::thread::spawn(move || -> Result<(Client, bool)> {
                let mut client = connect(&target).map_err(|e| target.failed(&e))?;
                migrate(&mut client)?;
                let tls = client.query_one(TLS_USED, &[]).map_err(storage)?.get(0);
                Ok((client, tls))
            })
            .join()
            .map_err(|_| Error::Storage("PostgreSQL: opening the database panicked".into()))??
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (first, tls) = first;
        let mut first = Some(first);
        for i in 0..CONNECTIONS {
            let rx = Arc::clone(&rx);
            let mut conn = Conn { target: target.clone(), client: first.take(), statements: HashMap::new() };
            std::thread::Builder::new()
                .name(format!("viaduct-pg-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(&mut conn),
                            // The store was dropped.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| Error::Storage(format!("cannot start a PostgreSQL connection thread: {e}")))?;
        }
        tracing::info!(database = %target.name, connections = CONNECTIONS, tls, "store: PostgreSQL");
        Ok(Self { jobs: tx, fence: None, ids: Mutex::new(VecDeque::new()) })
    }

    /// Every write from now on checks `fence` (a replica that leads).
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The error of a write refused by its fence.
    fn fenced_out(&self) -> Error {
        let epoch = self.fence.as_ref().map_or(0, |f| f.epoch);
        Error::Storage(format!(
            "PostgreSQL: this replica's lead (epoch {epoch}) was taken over by another: the write is refused"
        ))
    }

    /// Runs `f` on a connection and waits for its answer.
    fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Conn) -> PgResult<R> + Send + 'static) -> Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.jobs.send(job).map_err(|_| Error::Storage("PostgreSQL: the connection threads are gone".into()))?;
        rx.recv().map_err(|_| Error::Storage("PostgreSQL: a connection thread died".into()))?.map_err(storage)
    }
}

/// Applies the migrations the database lacks, under the advisory lock.
fn migrate(c: &mut Client) -> Result<()> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(storage)?;
    let done = apply_migrations(c);
    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    done
}

fn apply_migrations(c: &mut Client) -> Result<()> {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS viaduct_migrations (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .map_err(storage)?;
    let applied: i32 =
        c.query_one("SELECT COALESCE(MAX(version), 0) FROM viaduct_migrations", &[]).map_err(storage)?.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > known {
        return Err(Error::Storage(format!(
            "the database has schema version {applied}, newer than this server knows ({known}): run the newer server"
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        let mut tx = c.transaction().map_err(storage)?;
        tx.batch_execute(sql).map_err(|e| storage(format!("migration {version} ({name}): {e}")))?;
        tx.execute("INSERT INTO viaduct_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        tracing::info!(version, name, "PostgreSQL schema migrated");
    }
    Ok(())
}

fn name(tree: T) -> &'static str {
    TREE_NAMES[tree as usize]
}

fn entries(rows: Vec<Row>) -> Vec<Entry> {
    rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect()
}

/// The query for one page of a range (`$1` tree, `$2` page size, then
/// the bounds): every bound shape has its own statement, prepared once per
/// connection.
fn page_sql(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, descending: bool) -> &'static str {
    macro_rules! pick {
        ($lo:literal, $hi:literal) => {
            if descending {
                concat!("SELECT k, v FROM viaduct_kv WHERE tree = $1", $lo, $hi, " ORDER BY k DESC LIMIT $2")
            } else {
                concat!("SELECT k, v FROM viaduct_kv WHERE tree = $1", $lo, $hi, " ORDER BY k LIMIT $2")
            }
        };
    }
    use Bound::{Excluded as E, Included as I, Unbounded as U};
    match (lo, hi) {
        (U, U) => pick!("", ""),
        (I(_), U) => pick!(" AND k >= $3", ""),
        (E(_), U) => pick!(" AND k > $3", ""),
        (U, I(_)) => pick!("", " AND k <= $3"),
        (U, E(_)) => pick!("", " AND k < $3"),
        (I(_), I(_)) => pick!(" AND k >= $3", " AND k <= $4"),
        (I(_), E(_)) => pick!(" AND k >= $3", " AND k < $4"),
        (E(_), I(_)) => pick!(" AND k > $3", " AND k <= $4"),
        (E(_), E(_)) => pick!(" AND k > $3", " AND k < $4"),
    }
}

/// A range read a page at a time from either end; the two ends never
/// overlap because each page narrows the bounds past what it read.
struct PagedRange<'a> {
    kv: &'a Postgres,
    tree: &'static str,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    /// Read from the front, ascending.
    front: VecDeque<Entry>,
    /// Read from the back, descending.
    back: VecDeque<Entry>,
    /// Nothing is left between `lo` and `hi`.
    middle_empty: bool,
    failed: bool,
    /// Size of the next page from the front and from the back.
    front_page: i64,
    back_page: i64,
}

impl PagedRange<'_> {
    /// Reads the next page from the front (or the back); `false` when the
    /// middle is empty.
    fn fetch(&mut self, descending: bool) -> Result<bool> {
        let (tree, lo, hi) = (self.tree, self.lo.clone(), self.hi.clone());
        let size = if descending { &mut self.back_page } else { &mut self.front_page };
        let limit = *size;
        *size = (*size * 2).min(MAX_PAGE);
        let rows = self.kv.call(move |c| {
            let sql = page_sql(&lo, &hi, descending);
            let bound = |b: &Bound<Vec<u8>>| match b {
                Bound::Included(k) | Bound::Excluded(k) => Some(k.clone()),
                Bound::Unbounded => None,
            };
            let (l, h) = (bound(&lo), bound(&hi));
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tree, &limit];
            params.extend(l.as_ref().map(|k| k as &(dyn ToSql + Sync)));
            params.extend(h.as_ref().map(|k| k as &(dyn ToSql + Sync)));
            c.query(sql, &params)
        })?;
        let page = entries(rows);
        if (page.len() as i64) < limit {
            // This page reaches the other bound.
            self.middle_empty = true;
        }
        let Some(last) = page.last() else { return Ok(false) };
        if descending {
            self.hi = Bound::Excluded(last.0.clone());
            self.back.extend(page);
        } else {
            self.lo = Bound::Excluded(last.0.clone());
            self.front.extend(page);
        }
        Ok(true)
    }

    fn fail(&mut self, e: Error) -> Option<Result<Entry>> {
        self.failed = true;
        Some(Err(e))
    }
}

impl Iterator for PagedRange<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        if self.front.is_empty()
            && !self.middle_empty
            && let Err(e) = self.fetch(false)
        {
            return self.fail(e);
        }
        // The middle is read: what the back read is all that is left.
        self.front.pop_front().or_else(|| self.back.pop_back()).map(Ok)
    }
}

impl DoubleEndedIterator for PagedRange<'_> {
    fn next_back(&mut self) -> Option<Result<Entry>> {
        if self.failed {
            return None;
        }
        if self.back.is_empty()
            && !self.middle_empty
            && let Err(e) = self.fetch(true)
        {
            return self.fail(e);
        }
        self.back.pop_front().or_else(|| self.front.pop_back()).map(Ok)
    }
}

impl Kv for Postgres {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let (tree, key) = (name(tree), key.to_vec());
        self.call(move |c| {
            let rows = c.query("SELECT v FROM viaduct_kv WHERE tree = $1 AND k = $2", &[&tree, &key])?;
            Ok(rows.into_iter().next().map(|r| r.get(0)))
        })
    }

    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Entries<'_> {
        Box::new(PagedRange {
            kv: self,
            tree: name(tree),
            lo: lo.map(<[u8]>::to_vec),
            hi: hi.map(<[u8]>::to_vec),
            front: VecDeque::new(),
            back: VecDeque::new(),
            middle_empty: false,
            failed: false,
            front_page: FIRST_PAGE,
            back_page: FIRST_PAGE,
        })
    }

    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> Result<bool> {
        let (tree, key, value) = (name(tree), key.to_vec(), value.to_vec());
        let fence = self.fence.clone();
        let done = self.call(move |c| {
            let statement =
                c.statement("INSERT INTO viaduct_kv (tree, k, v) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")?;
            let check = c.statement(FENCE_CHECK)?;
            let mut tx = c.client()?.transaction()?;
            if let Some(f) = &fence
                && tx.query_opt(&check, &[&f.epoch, &f.holder])?.is_none()
            {
                return Ok(None);
            }
            let inserted = tx.execute(&statement, &[&tree, &key, &value])? == 1;
            tx.commit()?;
            Ok(Some(inserted))
        })?;
        done.ok_or_else(|| self.fenced_out())
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // The last write of each key is the one that counts (and one
        // statement may not touch a row twice).
        let mut last: HashMap<(&'static str, &[u8]), Option<&[u8]>> = HashMap::with_capacity(ops.len());
        for (tree, key, value) in ops {
            last.insert((name(*tree), key.as_slice()), value.as_deref());
        }
        // Statements of at most STATEMENT_BYTES each, all in one transaction.
        let mut puts: Vec<Rows> = vec![Rows::default()];
        let mut dels: Vec<Rows> = vec![Rows::default()];
        for ((tree, key), value) in last {
            let rows = if value.is_some() { &mut puts } else { &mut dels };
            let size = key.len() + value.map_or(0, <[u8]>::len);
            if rows.last().is_some_and(|r| r.bytes > 0 && r.bytes + size > STATEMENT_BYTES) {
                rows.push(Rows::default());
            }
            let r = rows.last_mut().expect("never empty");
            r.bytes += size;
            r.trees.push(tree);
            r.keys.push(key.to_vec());
            r.values.extend(value.map(<[u8]>::to_vec));
        }
        let fence = self.fence.clone();
        let committed = self.call(move |c| {
            let check = c.statement(FENCE_CHECK)?;
            let put = c.statement(
                "INSERT INTO viaduct_kv (tree, k, v) SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                 ON CONFLICT (tree, k) DO UPDATE SET v = EXCLUDED.v",
            )?;
            let delete = c.statement(
                "DELETE FROM viaduct_kv WHERE (tree, k) IN (SELECT * FROM unnest($1::text[], $2::bytea[]))",
            )?;
            let mut tx = c.client()?.transaction()?;
            for r in puts.iter().filter(|r| !r.keys.is_empty()) {
                tx.execute(&put, &[&r.trees, &r.keys, &r.values])?;
            }
            for r in dels.iter().filter(|r| !r.keys.is_empty()) {
                tx.execute(&delete, &[&r.trees, &r.keys])?;
            }
            // Last, and held until the commit: a takeover committed before
            // is seen (and the writes roll back); a later one waits for this
            // commit. Last, so that a large batch does not hold the lease
            // row — and with it the leader's own renewals — while it is sent.
            if let Some(f) = &fence
                && tx.query_opt(&check, &[&f.epoch, &f.holder])?.is_none()
            {
                return Ok(false);
            }
            tx.commit()?;
            Ok(true)
        })?;
        if !committed {
            // Its successor leads and may already have dispatched what this
            // process holds in memory: nothing more of it may go on.
            tracing::error!(error = %self.fenced_out(), "exiting");
            std::process::exit(70);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // Every commit was durable when it returned.
        Ok(())
    }

    /// A database that went away comes back: held writes wait for it.
    fn flush_retries(&self) -> bool {
        true
    }

    fn generate_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.is_empty() {
            // A block at a time: each greater than any id handed out before,
            // by this process or by any other (a replica that led before).
            let block = self.call(|c| {
                let rows =
                    c.query("SELECT nextval('viaduct_ids') FROM generate_series(1, $1::bigint)", &[&ID_BLOCK])?;
                Ok(rows.into_iter().map(|r| r.get::<_, i64>(0) as u64).collect::<Vec<_>>())
            })?;
            ids.extend(block);
            ids.make_contiguous().sort_unstable();
        }
        ids.pop_front().ok_or_else(|| Error::Storage("PostgreSQL: the id sequence gave nothing".into()))
    }
}
