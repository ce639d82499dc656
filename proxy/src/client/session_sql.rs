//! Which SQL leaves session state behind on a server connection, in transaction mode.
//!
//! In transaction mode a client's transactions run on whichever server connection is free, so
//! what a statement leaves in the *session* must follow the client, or keep the server with it:
//! - a session-level `SET`, `RESET`, `set_config(..., false)`, `SET ROLE` or `DISCARD` of a
//!   parameter the server does not report: the proxy reads the new values back from the
//!   server after the transaction (`server::session_probe`) and applies them wherever the
//!   client goes next, as it does for startup parameters. Reading them back settles what a
//!   rolled-back or failed transaction undid;
//! - a SQL `PREPARE`, a `WITH HOLD` cursor, a temporary table, a session advisory lock: these
//!   cannot move. After the transaction the server is asked whether the session still has
//!   such objects (the statement may have failed, or a later one dropped them); if it does,
//!   the server stays with the client.
//!
//! Reported parameters (`TimeZone`, ...) are left out: they follow the client through
//! `ParameterStatus`.
//!
//! Every Query, Parse and named Bind of a transaction-mode client passes [`may_change_session`]:
//! a first-word test and a scan for `(` and `;`, with no allocation. Only what passes it is
//! lexed ([`scan`]). A `DO` block or a `CALL` may do anything, so after one the server is
//! asked about every setting and every kind of object. Not seen: state made inside a function
//! that another statement calls (`SELECT f()`), and `SELECT ... INTO TEMP` (spotting the word
//! `temp` in every query measured about 120 more instructions per transaction, 2 % of the
//! proxy's user-space work, for a form PostgreSQL's documentation steers away from).

use crate::router::classify::{Lexer, Token};
use crate::server::params::TrackedParams;
use crate::server::session_probe::kept;

/// What a client's statements left in its session, as far as their SQL tells.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Kinds of state that cannot move the statements may have made ([`kept`] bits): if the
    /// server has such objects after the transaction, it stays with the client.
    pub kept: u8,
    /// Parameters set by name (lowercase), to read back.
    pub names: Vec<String>,
    /// Parameters changed whose names the SQL does not tell, or reset (`RESET ALL`,
    /// `DISCARD ALL`, `SET SESSION CHARACTERISTICS`, a computed `set_config` name): read back
    /// every session-level setting.
    pub all: bool,
    /// Settings may have changed under names the SQL does not show (a `DO` block, a `CALL`, a
    /// computed or quoted name). PostgreSQL lists no custom parameter (`app.tenant`) in
    /// `pg_settings`, so such a one cannot be read back: the server gets `RESET ALL` before
    /// another client uses it.
    pub opaque: bool,
}

impl Found {
    /// Whether settings are to be read back from the server.
    pub fn settings_changed(&self) -> bool {
        self.all || !self.names.is_empty()
    }

    /// Whether the server is to be asked about the session before it is released.
    pub fn probe_due(&self) -> bool {
        self.kept != 0 || self.settings_changed()
    }

    fn name(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }
}

/// Session-level advisory lock functions (the `_xact_` ones end with the transaction).
const SESSION_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Whether `text` starts with `word`, case-insensitively, followed by a non-word byte.
fn starts_with_word(text: &[u8], word: &[u8]) -> bool {
    text.len() >= word.len()
        && text[..word.len()].eq_ignore_ascii_case(word)
        && text.get(word.len()).is_none_or(|&c| !is_word_byte(c))
}

/// Whether a statement starting at `text` may change session state by its first word (or
/// starts with a comment, which the lexer skips).
fn statement_may(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    // The first words of statements that may change session state, by first letter.
    match text.first().map(u8::to_ascii_lowercase) {
        Some(b'/' | b'-' | b'(') => true,
        Some(b's') => starts_with_word(text, b"set"),
        Some(b'r') => starts_with_word(text, b"reset"),
        Some(b'p') => starts_with_word(text, b"prepare"),
        Some(b'd') => {
            starts_with_word(text, b"declare")
                || starts_with_word(text, b"discard")
                || starts_with_word(text, b"do")
        }
        Some(b'c') => starts_with_word(text, b"create") || starts_with_word(text, b"call"),
        _ => false,
    }
}

/// A cheap test that SQL may change session state: false for almost every query, without
/// lexing it. False negatives are not allowed: [`scan`] only looks at what passes. Besides
/// the first word, it looks only at the text before each `(` (a function call) and after each
/// `;` (another statement): two `memchr` passes for a plain query.
pub(crate) fn may_change_session(sql: &[u8]) -> bool {
    if statement_may(sql) {
        return true;
    }
    memchr::memchr2_iter(b'(', b';', sql).any(|i| {
        if sql[i] == b';' {
            statement_may(&sql[i + 1..])
        } else {
            calls_session_function(&sql[..i])
        }
    })
}

/// Whether `c` may be part of an SQL word (identifier or keyword).
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Whether the text before a `(` ends with the name of a function that may change session
/// state (a session advisory lock, `set_config`).
fn calls_session_function(before: &[u8]) -> bool {
    let name = before.trim_ascii_end();
    let ends =
        |w: &[u8]| name.len() >= w.len() && name[name.len() - w.len()..].eq_ignore_ascii_case(w);
    ends(b"advisory_lock") || ends(b"advisory_lock_shared") || ends(b"set_config")
}

fn is(word: &str, keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword)
}

/// Reads SQL (one statement or several) into `found`: see the module comment.
pub(crate) fn scan(sql: &str, found: &mut Found) {
    let mut lexer = Lexer::new(sql);
    while statement(&mut lexer, found) {}
}

/// The first tokens of a statement that decide its kind.
const HEAD: usize = 8;

/// Reads one statement into `found`; returns whether a `;` followed.
fn statement<'a>(lexer: &mut Lexer<'a>, found: &mut Found) -> bool {
    let mut head: [Option<Token<'a>>; HEAD] = [None; HEAD];
    let mut n = 0;
    let mut depth = 0i32;
    let mut prev: Option<Token<'a>> = None;
    let mut prev2: Option<Token<'a>> = None;
    let mut with_hold = false;
    let mut on_commit_drop = false;
    let mut more = false;
    while let Some(token) = lexer.next() {
        if token == Token::Symbol(b';') && depth == 0 {
            more = true;
            break;
        }
        if n < HEAD {
            head[n] = Some(token);
            n += 1;
        }
        match token {
            Token::Symbol(b'(') => {
                if let Some(Token::Word(f)) = prev {
                    if SESSION_LOCKS.iter().any(|l| is(f, l)) {
                        found.kept |= kept::ADVISORY_LOCK;
                    } else if is(f, "set_config") {
                        set_config_call(lexer, found);
                        prev = Some(Token::Symbol(b')'));
                        continue;
                    }
                }
                depth += 1;
            }
            Token::Symbol(b')') => depth -= 1,
            Token::Word(w) if depth == 0 => {
                if let Some(Token::Word(p)) = prev {
                    with_hold |= is(p, "with") && is(w, "hold");
                    if let Some(Token::Word(p2)) = prev2 {
                        on_commit_drop |= is(p2, "on") && is(p, "commit") && is(w, "drop");
                    }
                }
            }
            _ => {}
        }
        prev2 = prev;
        prev = Some(token);
    }
    let head = &head[..n];
    let word = |i: usize| match head.get(i) {
        Some(Some(Token::Word(w))) => Some(*w),
        _ => None,
    };
    let Some(first) = word(0) else {
        return more;
    };
    if is(first, "set") || is(first, "reset") {
        setting(head, is(first, "reset"), found);
    } else if is(first, "prepare") {
        if !word(1).is_some_and(|w| is(w, "transaction")) {
            found.kept |= kept::PREPARED;
        }
    } else if is(first, "declare") {
        if with_hold {
            found.kept |= kept::CURSOR;
        }
    } else if is(first, "create") {
        let temp = (1..5).any(|i| word(i).is_some_and(|w| is(w, "temp") || is(w, "temporary")));
        if temp && !on_commit_drop {
            found.kept |= kept::TEMPORARY;
        }
    } else if is(first, "discard") {
        found.all = true;
    } else if is(first, "do") || is(first, "call") {
        // The block or procedure may set anything and make anything.
        found.all = true;
        found.opaque = true;
        found.kept |= kept::ALL;
    }
    more
}

/// `SET ...` or `RESET ...` (the head of the statement): the session-level parameter it
/// changes, unless the server reports that one.
fn setting(head: &[Option<Token<'_>>], reset: bool, found: &mut Found) {
    let word = |i: usize| match head.get(i) {
        Some(Some(Token::Word(w))) => Some(*w),
        _ => None,
    };
    let mut at = 1;
    if word(1).is_some_and(|w| is(w, "local")) {
        return;
    }
    if word(1).is_some_and(|w| is(w, "session")) {
        at = 2;
    }
    let Some(name) = word(at) else {
        // A quoted name, or nothing.
        found.all = true;
        found.opaque = true;
        return;
    };
    if at == 1 && ["transaction", "constraints"].iter().any(|k| is(name, k)) {
        return;
    }
    // `SET TIME ZONE` and `SET NAMES` set reported parameters, and `SET SESSION
    // AUTHORIZATION` is seen in the `ParameterStatus` it causes.
    if ["time", "names", "authorization"]
        .iter()
        .any(|k| is(name, k))
    {
        return;
    }
    // A `RESET` goes back to the startup value, which only a full read tells apart.
    if reset || is(name, "all") || is(name, "characteristics") {
        found.all = true;
        return;
    }
    if let (Some(Some(Token::Symbol(b'.'))), Some(part)) = (head.get(at + 1), word(at + 2)) {
        found.name(&format!("{name}.{part}"));
    } else if is(name, "schema") {
        found.name("search_path");
    } else if TrackedParams::index(name).is_none() {
        found.name(name);
    }
}

/// A `set_config(name, value, is_local)` call, read up to its closing parenthesis. Unless
/// `is_local` is the literal `true` it may set a session-level value: its literal name is
/// noted, or, computed, every setting is to be read back.
fn set_config_call(lexer: &mut Lexer<'_>, found: &mut Found) {
    let rest = lexer.rest().trim_start();
    let name = rest
        .strip_prefix('\'')
        .and_then(|r| r.split_once('\''))
        .map(|(name, _)| name)
        .filter(|name| super::params::valid_name(name));
    let mut depth = 1;
    let mut commas = 0;
    let mut third: Option<Token<'_>> = None;
    for token in lexer.by_ref() {
        match token {
            Token::Symbol(b'(') => depth += 1,
            Token::Symbol(b')') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Token::Symbol(b',') if depth == 1 => commas += 1,
            t if commas == 2 && depth == 1 && third.is_none() => third = Some(t),
            _ => {}
        }
    }
    if matches!(third, Some(Token::Word(w)) if is(w, "true")) {
        return;
    }
    match name {
        Some(name) if TrackedParams::index(name).is_some() => {}
        Some(name) => found.name(name),
        None => {
            found.all = true;
            found.opaque = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Found {
        let mut found = Found::default();
        scan(sql, &mut found);
        assert!(
            found == Found::default() || may_change_session(sql.as_bytes()),
            "the quick test must let through what changes the session: {sql}"
        );
        found
    }

    fn names(sql: &str) -> Vec<String> {
        let f = found(sql);
        assert!(f.kept == 0 && !f.all, "{sql}: {f:?}");
        f.names
    }

    #[test]
    fn ordinary_queries_are_ruled_out_without_lexing() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
            "INSERT INTO t VALUES (1); SELECT 1",
            "select pg_advisory_xact_lock(1)",
            "select pg_advisory_unlock(1)",
            "select pg_advisory_unlock_shared(1), lower('SET x')",
            "SELECT count(*) FROM t WHERE a IN (1, 2)",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(!may_change_session(sql.as_bytes()), "{sql}");
            assert_eq!(found(sql), Found::default(), "{sql}");
        }
    }

    #[test]
    fn session_level_settings_are_named() {
        assert_eq!(names("SET work_mem = '64MB'"), ["work_mem"]);
        assert_eq!(names("set search_path to a, public"), ["search_path"]);
        assert_eq!(
            names("SET SESSION Statement_Timeout = 5"),
            ["statement_timeout"]
        );
        assert_eq!(names("SET SCHEMA 'a'"), ["search_path"]);
        assert_eq!(names("SET ROLE r1"), ["role"]);
        assert_eq!(names("SELECT 1; SET lock_timeout = 1"), ["lock_timeout"]);
        assert_eq!(
            names("/* hint */ SET work_mem = 1; SET work_mem = 2"),
            ["work_mem"]
        );
        assert_eq!(
            names("SELECT set_config('search_path', 'a', false)"),
            ["search_path"]
        );
        assert_eq!(
            names("SELECT pg_catalog.set_config('work_mem', '1MB', $1)"),
            ["work_mem"]
        );
        assert_eq!(
            names("SELECT set_config('work_mem', '1MB', is_local => false)"),
            ["work_mem"]
        );
        assert_eq!(
            names("SET app.tenant = '42'; SELECT set_config('Request.Claims', 'x', false)"),
            ["app.tenant", "request.claims"]
        );
    }

    #[test]
    fn resets_and_unnamed_changes_read_everything() {
        for sql in [
            "RESET work_mem",
            "RESET ALL",
            "RESET ROLE",
            "SET work_mem TO DEFAULT; RESET search_path",
            "DISCARD ALL",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET \"work_mem\" = 1",
            "SELECT set_config(current_setting('x.name'), 'v', false)",
        ] {
            let f = found(sql);
            assert!(f.all && f.kept == 0, "{sql}: {f:?}");
            let names_hidden = sql.contains('"') || sql.contains("current_setting");
            assert_eq!(f.opaque, names_hidden, "{sql}");
        }
    }

    #[test]
    fn local_and_reported_settings_are_not_followed() {
        for sql in [
            "SET LOCAL work_mem = '64MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET application_name = 'x'",
            "SET TIME ZONE 'UTC'",
            "SET timezone = 'UTC'",
            "SET NAMES 'UTF8'",
            "SET SESSION DateStyle = ISO",
            "SET SESSION AUTHORIZATION bob",
            "SELECT set_config('application_name', 'x', false)",
            "SELECT set_config('work_mem', '1MB', true)",
            "SELECT set_config('work_mem', coalesce(null, '1MB'), TRUE), 1",
            "SELECT 'SET work_mem = 1'",
        ] {
            assert_eq!(found(sql), Found::default(), "{sql}");
        }
    }

    #[test]
    fn objects_that_cannot_move_are_kept() {
        use kept::*;
        for (sql, kind) in [
            ("PREPARE q AS SELECT 1", PREPARED),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", CURSOR),
            ("declare c scroll cursor with hold for select 1", CURSOR),
            ("CREATE TEMP TABLE t (x int)", TEMPORARY),
            ("CREATE TEMPORARY TABLE t AS SELECT 1", TEMPORARY),
            ("CREATE GLOBAL TEMPORARY TABLE t (x int)", TEMPORARY),
            ("create or replace temp view v as select 1", TEMPORARY),
            ("CREATE TEMP SEQUENCE s", TEMPORARY),
            ("SELECT pg_advisory_lock(1)", ADVISORY_LOCK),
            ("SELECT PG_TRY_ADVISORY_LOCK(1, 2)", ADVISORY_LOCK),
            ("select pg_advisory_lock_shared(7), 1", ADVISORY_LOCK),
            ("SELECT pg_advisory_lock (1)", ADVISORY_LOCK),
            ("SELECT 1; PREPARE q AS SELECT 2", PREPARED),
            ("DO $$ BEGIN CREATE TEMP TABLE t (x int); END $$", ALL),
            ("do 'begin perform 1; end'", ALL),
            ("CALL p(1)", ALL),
            ("SELECT 1; call p()", ALL),
            (
                "PREPARE q AS SELECT pg_advisory_lock(1)",
                PREPARED | ADVISORY_LOCK,
            ),
        ] {
            let f = found(sql);
            let reads_settings = kind == ALL;
            assert!(
                f.kept == kind && f.settings_changed() == reads_settings,
                "{sql}: {f:?}"
            );
            assert_eq!(f.opaque, reads_settings, "{sql}");
        }
        for sql in [
            "PREPARE TRANSACTION 'x'",
            "DECLARE c CURSOR FOR SELECT 1",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "CREATE TABLE t (x int)",
            "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
            "CREATE INDEX ON t (temp)",
            "INSERT INTO temp VALUES (1)",
            "SELECT temp FROM weather",
            "SELECT x INTO t FROM a",
            "SELECT 'do it', 'call me'",
        ] {
            assert_eq!(found(sql), Found::default(), "{sql}");
        }
    }
}
