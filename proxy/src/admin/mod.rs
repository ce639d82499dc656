//! The admin console: a database of its own (`[admin] database`, default `switchyard`) where
//! the users of `[admin.users]` look at the running proxy and reload its policies.
//!
//! It is what PgBouncer's `pgbouncer` database is to its operators: `psql -d switchyard`,
//! then `SHOW POOLS`, `SHOW SERVERS`, `SHOW CLIENTS`, `SHOW STATS`, `SHOW POLICIES`, `SHOW
//! CONFIG`, `RELOAD`, and for maintenance `PAUSE`, `RESUME`, `KILL`, `KILL_CLIENT`,
//! `RECONNECT` ([`pause`]). Monitoring reads the same tables. The console answers from the
//! pools' own counters; no server is involved.
//!
//! The same counters are served to Prometheus at `GET /metrics` on `general.metrics_addr`
//! ([`metrics`], [`metrics_http`]).
//!
//! Only the simple query protocol is served (as in PgBouncer's console): an extended-protocol
//! message gets an error, and the messages up to the next `Sync` are skipped. A query may hold
//! several commands separated by `;`; each gets its own result.

mod command;
pub mod metrics;
pub mod metrics_http;
mod pause;
mod show;
mod table;

use crate::cancel::{CancelSlot, Registration};
use crate::protocol::backend::{self, Severity};
use crate::protocol::{frame, sqlstate};
use crate::reload::Outcome;
use crate::shutdown::Phase;
use crate::socket::Stream;
use crate::Proxy;
use bytes::BytesMut;
use command::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest message the console reads: commands are short.
const MAX_MESSAGE: usize = 64 * 1024;

/// SQLSTATE `42601` syntax_error: an unknown command.
const SYNTAX_ERROR: &str = "42601";
/// SQLSTATE `F0000` config_file_error: a reload that was refused.
const CONFIG_FILE_ERROR: &str = "F0000";

/// Appends the greeting of a console login: `AuthenticationOk`, the parameters a client
/// library expects, `BackendKeyData`, `ReadyForQuery`. The `server_version` says what this is,
/// as PgBouncer's does (`1.21.0/bouncer`); psql warns that it is no PostgreSQL version, which
/// is true.
pub(crate) fn greet(out: &mut BytesMut, application_name: &str, registration: &Registration<'_>) {
    backend::auth_ok(out);
    let version = concat!(env!("CARGO_PKG_VERSION"), "/switchyard");
    for (name, value) in [
        ("server_version", version),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("application_name", application_name),
    ] {
        backend::parameter_status(out, name.as_bytes(), value.as_bytes());
    }
    backend::backend_key_data(out, registration.pid, registration.secret);
    backend::ready_for_query(out, b'I');
}

/// One logged-in console session.
pub(crate) struct Console<'p> {
    proxy: &'p Proxy,
    stream: Stream,
    /// Bytes read from the client and not yet handled.
    buf: BytesMut,
    user: String,
    /// The session's cancel slot: a cancel request stops a waiting `PAUSE` or `KILL`.
    slot: Arc<CancelSlot>,
    /// An extended-protocol message was refused: skip messages up to `Sync`.
    skip_until_sync: bool,
}

impl<'p> Console<'p> {
    pub(crate) fn new(
        proxy: &'p Proxy,
        stream: Stream,
        buf: BytesMut,
        user: String,
        slot: Arc<CancelSlot>,
    ) -> Self {
        Console {
            proxy,
            stream,
            buf,
            user,
            slot,
            skip_until_sync: false,
        }
    }

    /// Serves the session until the client leaves, breaks the protocol, or the proxy shuts
    /// down (then the client is told `57P01`, as pooled clients are).
    pub(crate) async fn run(mut self) {
        let mut shutdown = self.proxy.shutdown.clone();
        let mut out = BytesMut::new();
        loop {
            if shutdown.phase() >= Phase::Draining {
                return self
                    .fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .await;
            }
            let f = match frame::complete(&self.buf, MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    let read = tokio::select! {
                        r = self.stream.read_buf(&mut self.buf) => r,
                        _ = shutdown.draining() => continue,
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
                Err(e) => {
                    return self
                        .fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                        .await
                }
            };
            let message = self.buf.split_to(f.total);
            let body = &message[5..];
            match f.tag {
                b'X' => return,
                b'Q' if !self.skip_until_sync => {
                    let sql = frame::cstr(body).and_then(|(sql, _)| std::str::from_utf8(sql).ok());
                    match sql {
                        Some(sql) => self.answer(sql, &mut out).await,
                        None => {
                            return self
                                .fatal(sqlstate::PROTOCOL_VIOLATION, "invalid Query message")
                                .await
                        }
                    }
                    backend::ready_for_query(&mut out, b'I');
                }
                b'S' => {
                    self.skip_until_sync = false;
                    backend::ready_for_query(&mut out, b'I');
                }
                // Flush; and COPY messages outside a COPY, which PostgreSQL ignores too.
                b'H' | b'c' | b'd' | b'f' => {}
                b'P' | b'B' | b'D' | b'E' | b'C' | b'F' if !self.skip_until_sync => {
                    backend::error(
                        &mut out,
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console takes simple queries only (psql, or simple_query)",
                    );
                    self.skip_until_sync = true;
                }
                _ if self.skip_until_sync => {}
                tag => {
                    let m = format!("invalid frontend message type {tag}");
                    return self.fatal(sqlstate::PROTOCOL_VIOLATION, &m).await;
                }
            }
            // Answer once the messages that arrived together are handled.
            if frame::complete(&self.buf, MAX_MESSAGE)
                .ok()
                .flatten()
                .is_none()
                && !out.is_empty()
            {
                if self.stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    }

    /// Runs each `;`-separated command of a simple query and appends its answer.
    async fn answer(&self, sql: &str, out: &mut BytesMut) {
        let commands: Vec<&str> = sql.split(';').filter(|c| !c.trim().is_empty()).collect();
        if commands.is_empty() {
            backend::empty(out, b'I');
            return;
        }
        for text in commands {
            match command::parse(text) {
                Ok(c) => {
                    tracing::debug!(user = %self.user, command = ?c, "admin console");
                    if !self.run_command(c, out).await {
                        return;
                    }
                }
                Err(m) => {
                    backend::error(out, Severity::Error, SYNTAX_ERROR, &m);
                    return;
                }
            }
        }
    }

    /// Appends one command's answer; false when it failed (the rest of the query is skipped,
    /// as PostgreSQL skips the statements after a failed one).
    async fn run_command(&self, c: Command, out: &mut BytesMut) -> bool {
        let table = match c {
            Command::Help => show::help(),
            Command::Version => show::version(),
            Command::Pools => show::pools(self.proxy),
            Command::Servers => show::servers(self.proxy),
            Command::Policies => show::policies(self.proxy),
            Command::Stats => show::stats(self.proxy),
            Command::Clients => show::clients(self.proxy),
            Command::Config => show::config(self.proxy),
            Command::Reload => return self.reload(out).await,
            Command::Pause(db) => return self.pause(db.as_deref(), out).await,
            Command::Resume(db) => return self.resume(db.as_deref(), out),
            Command::Kill(db) => return self.kill(&db, out).await,
            Command::Reconnect(db) => return self.reconnect(db.as_deref(), out),
            Command::KillClient(pid) => {
                return answer(out, "KILL_CLIENT", pause::kill_client(self.proxy, pid));
            }
            Command::Shutdown => {
                tracing::info!(user = %self.user, "SHUTDOWN on the admin console");
                self.proxy.stop_requested.notify_one();
                return answer(out, "SHUTDOWN", Ok(()));
            }
        };
        table.encode(out, "SHOW");
        true
    }

    async fn reload(&self, out: &mut BytesMut) -> bool {
        let Some(reloader) = &self.proxy.reloader else {
            backend::error(
                out,
                Severity::Error,
                sqlstate::FEATURE_NOT_SUPPORTED,
                "this proxy runs without a config file to reload",
            );
            return false;
        };
        let why = format!("RELOAD by admin user \"{}\"", self.user);
        match reloader.reload(&why).await {
            Outcome::Reloaded { notes, unapplied } => {
                for note in notes {
                    backend::notice(out, &note);
                }
                for key in unapplied {
                    backend::notice(
                        out,
                        &format!(
                            "{key} changed in the config file; takes effect at the next start"
                        ),
                    );
                }
                backend::command_complete(out, "RELOAD");
                true
            }
            Outcome::Refused(why) => {
                let m = format!("reload refused; the running pools and policies stay: {why}");
                backend::error(out, Severity::Error, CONFIG_FILE_ERROR, &m);
                false
            }
        }
    }

    async fn pause(&self, db: Option<&str>, out: &mut BytesMut) -> bool {
        tracing::info!(user = %self.user, database = ?db, "PAUSE on the admin console");
        let paused = pause::pause(self.proxy, db, (&self.stream, &self.slot)).await;
        let paused = paused.map(|done| notice(out, &done));
        answer(out, "PAUSE", paused)
    }

    async fn kill(&self, db: &str, out: &mut BytesMut) -> bool {
        tracing::info!(user = %self.user, database = %db, "KILL on the admin console");
        let killed = pause::kill(self.proxy, db, (&self.stream, &self.slot)).await;
        let killed = killed.map(|done| notice(out, &done));
        answer(out, "KILL", killed)
    }

    fn resume(&self, db: Option<&str>, out: &mut BytesMut) -> bool {
        tracing::info!(user = %self.user, database = ?db, "RESUME on the admin console");
        answer(out, "RESUME", pause::resume(self.proxy, db).map(|_| ()))
    }

    fn reconnect(&self, db: Option<&str>, out: &mut BytesMut) -> bool {
        tracing::info!(user = %self.user, database = ?db, "RECONNECT on the admin console");
        let done = pause::reconnect(self.proxy, db).map(|closed| {
            let m = format!(
                "{closed} idle server connection(s) closed; those in use will be when released"
            );
            backend::notice(out, &m);
        });
        answer(out, "RECONNECT", done)
    }

    async fn fatal(mut self, code: &str, message: &str) {
        crate::client::send_fatal(&mut self.stream, code, message).await;
    }
}

/// Appends a command's `CommandComplete`, or its refusal as an ERROR; false for a refusal.
fn answer(out: &mut BytesMut, tag: &str, outcome: Result<(), pause::Refused>) -> bool {
    match outcome {
        Ok(()) => {
            backend::command_complete(out, tag);
            true
        }
        Err((code, m)) => {
            backend::error(out, Severity::Error, code, &m);
            false
        }
    }
}

/// The NOTICE a `PAUSE` or `KILL` answers with: what it did.
fn notice(out: &mut BytesMut, done: &pause::Paused) {
    let killed = match done.killed {
        0 => String::new(),
        n => format!("{n} client session(s) ended; "),
    };
    backend::notice(
        out,
        &format!(
            "{killed}{} pool(s) paused, no transaction running; {} idle server connection(s) closed",
            done.pools, done.closed
        ),
    );
}
