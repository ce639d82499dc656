//! Which SQL leaves session state behind on a server connection, in transaction mode.
//!
//! In transaction mode a client's transactions run on whichever server connection is free, so
//! what a statement leaves in the *session* must follow the client, or keep the server with it:
//! - a session-level `SET` (or `RESET`, `set_config(..., false)`, `DISCARD`) of a parameter the
//!   server does not report: the proxy learns the new values and applies them wherever the
//!   client goes next, as it does for startup parameters;
//! - a SQL `PREPARE`, a `WITH HOLD` cursor, a temporary table, a session advisory lock: these
//!   cannot move, so the server stays with the client.
//!
//! This file only spots the statements that may do so; after their transaction the proxy asks
//! the server what its session now holds (`server::session_probe`), which also settles what a
//! rolled-back transaction or a failed statement undid. Reported parameters (`TimeZone`, ...)
//! are left out: they follow the client through `ParameterStatus`.
//!
//! Every Query, Parse and named Bind of a transaction-mode client passes [`may_change_session`]:
//! a first-word test and a scan for `_` and `;`, with no allocation. Only what passes it is
//! lexed ([`changes_session`]). Not seen: `SELECT ... INTO TEMP`, and state set inside
//! functions, procedures and `DO` blocks.

use crate::router::classify::{Lexer, Token};
use crate::server::params::TrackedParams;

/// Statements that may change session state by their first word.
const FIRST_WORDS: [&[u8]; 6] = [
    b"set", b"reset", b"prepare", b"declare", b"create", b"discard",
];

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
        && text
            .get(word.len())
            .is_none_or(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80))
}

/// Whether a statement starting at `text` may change session state by its first word (or
/// starts with a comment, which the lexer skips).
fn statement_may(text: &[u8]) -> bool {
    let start = text
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    match text.first().map(u8::to_ascii_lowercase) {
        Some(b'/' | b'-' | b'(') => true,
        Some(b's' | b'r' | b'p' | b'd' | b'c') => {
            FIRST_WORDS.iter().any(|w| starts_with_word(text, w))
        }
        _ => false,
    }
}

/// A cheap test that SQL may change session state: false for almost every query, without
/// lexing it. False negatives are not allowed: [`changes_session`] only looks at what passes.
pub(crate) fn may_change_session(sql: &[u8]) -> bool {
    if statement_may(sql) {
        return true;
    }
    for i in memchr::memchr2_iter(b'_', b';', sql) {
        let may = if sql[i] == b';' {
            statement_may(&sql[i + 1..])
        } else {
            let (before, after) = (&sql[..i], &sql[i + 1..]);
            let ends = |w: &[u8]| {
                before.len() >= w.len() && before[before.len() - w.len()..].eq_ignore_ascii_case(w)
            };
            let starts =
                |w: &[u8]| after.len() >= w.len() && after[..w.len()].eq_ignore_ascii_case(w);
            (ends(b"advisory") && starts(b"lock")) || (ends(b"set") && starts(b"config"))
        };
        if may {
            return true;
        }
    }
    false
}

fn is(word: &str, keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword)
}

/// Whether SQL (one statement or several) changes session state that the proxy must follow:
/// see the module comment. Names of custom parameters (`app.tenant`) it sets go to `custom`:
/// the server lists those only when asked by name.
pub(crate) fn changes_session(sql: &str, custom: &mut Vec<String>) -> bool {
    let mut lexer = Lexer::new(sql);
    let mut changes = false;
    loop {
        let (statement_changes, more) = statement(&mut lexer, custom);
        changes |= statement_changes;
        if !more {
            return changes;
        }
    }
}

/// The first tokens of a statement that decide its kind.
const HEAD: usize = 8;

/// Reads one statement; returns whether it changes session state and whether a `;` followed.
fn statement<'a>(lexer: &mut Lexer<'a>, custom: &mut Vec<String>) -> (bool, bool) {
    let mut head: [Option<Token<'a>>; HEAD] = [None; HEAD];
    let mut n = 0;
    let mut depth = 0i32;
    let mut prev: Option<Token<'a>> = None;
    let mut prev2: Option<Token<'a>> = None;
    let mut changes = false;
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
                        changes = true;
                    } else if is(f, "set_config") {
                        changes |= session_set_config(lexer, custom);
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
        return (changes, more);
    };
    let by_head = if is(first, "set") || is(first, "reset") {
        setting_changes(head, custom)
    } else if is(first, "prepare") {
        !word(1).is_some_and(|w| is(w, "transaction"))
    } else if is(first, "declare") {
        with_hold
    } else if is(first, "create") {
        let temp = (1..5).any(|i| word(i).is_some_and(|w| is(w, "temp") || is(w, "temporary")));
        temp && !on_commit_drop
    } else {
        is(first, "discard")
    };
    (changes || by_head, more)
}

/// `SET ...` or `RESET ...` (the head of the statement): whether it changes a session-level
/// parameter the server does not report.
fn setting_changes(head: &[Option<Token<'_>>], custom: &mut Vec<String>) -> bool {
    let word = |i: usize| match head.get(i) {
        Some(Some(Token::Word(w))) => Some(*w),
        _ => None,
    };
    let mut at = 1;
    if word(1).is_some_and(|w| is(w, "local")) {
        return false;
    }
    if word(1).is_some_and(|w| is(w, "session")) {
        at = 2;
    }
    let Some(name) = word(at) else {
        // A quoted name, or nothing: assume it does.
        return true;
    };
    if at == 1 && ["transaction", "constraints"].iter().any(|k| is(name, k)) {
        return false;
    }
    // `SET TIME ZONE` and `SET NAMES` set reported parameters.
    if ["time", "names"].iter().any(|k| is(name, k)) {
        return false;
    }
    if let (Some(Some(Token::Symbol(b'.'))), Some(part)) = (head.get(at + 1), word(at + 2)) {
        custom.push(format!(
            "{}.{}",
            name.to_ascii_lowercase(),
            part.to_ascii_lowercase()
        ));
        return true;
    }
    TrackedParams::index(name).is_none()
}

/// A `set_config(name, value, is_local)` call, read up to its closing parenthesis: whether it
/// may set a session-level value (`is_local` is not the literal `true`). A literal custom
/// name goes to `custom`.
fn session_set_config(lexer: &mut Lexer<'_>, custom: &mut Vec<String>) -> bool {
    let rest = lexer.rest().trim_start();
    if let Some(name) = rest
        .strip_prefix('\'')
        .and_then(|r| r.split_once('\''))
        .map(|(name, _)| name)
    {
        if name.contains('.') && super::params::valid_name(name) {
            custom.push(name.to_ascii_lowercase());
        }
    }
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
    !matches!(third, Some(Token::Word(w)) if is(w, "true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(sql: &str) -> bool {
        let found = changes_session(sql, &mut Vec::new());
        assert!(
            !found || may_change_session(sql.as_bytes()),
            "the quick test must let through what changes the session: {sql}"
        );
        found
    }

    #[test]
    fn ordinary_queries_are_ruled_out_without_lexing() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
            "INSERT INTO t VALUES (1); SELECT 1",
            "select pg_advisory_xact_lock(1)",
            "select pg_advisory_unlock(1)",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(!may_change_session(sql.as_bytes()), "{sql}");
            assert!(!changes(sql), "{sql}");
        }
    }

    #[test]
    fn session_level_settings_change_the_session() {
        for sql in [
            "SET work_mem = '64MB'",
            "set search_path to a, public",
            "SET SESSION statement_timeout = 5",
            "SET SCHEMA 'a'",
            "SET ROLE r1",
            "SET SESSION AUTHORIZATION bob",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "RESET work_mem",
            "RESET ALL",
            "RESET ROLE",
            "DISCARD ALL",
            "SELECT 1; SET lock_timeout = 1",
            "/* hint */ SET work_mem = 1",
            "SELECT set_config('search_path', 'a', false)",
            "SELECT pg_catalog.set_config('search_path', 'a', $1)",
            "SELECT set_config('work_mem', '1MB', is_local => false)",
            "SET \"work_mem\" = 1",
        ] {
            assert!(changes(sql), "{sql}");
        }
    }

    #[test]
    fn local_and_reported_settings_do_not() {
        for sql in [
            "SET LOCAL work_mem = '64MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET application_name = 'x'",
            "SET TIME ZONE 'UTC'",
            "SET timezone = 'UTC'",
            "SET NAMES 'UTF8'",
            "SET SESSION DateStyle = ISO",
            "RESET application_name",
            "SELECT set_config('work_mem', '1MB', true)",
            "SELECT set_config('work_mem', coalesce(null, '1MB'), TRUE), 1",
            "SELECT 'SET work_mem = 1'",
        ] {
            assert!(!changes(sql), "{sql}");
        }
    }

    #[test]
    fn objects_that_cannot_move_change_the_session() {
        for sql in [
            "PREPARE q AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "declare c scroll cursor with hold for select 1",
            "CREATE TEMP TABLE t (x int)",
            "CREATE TEMPORARY TABLE t AS SELECT 1",
            "CREATE GLOBAL TEMPORARY TABLE t (x int)",
            "create or replace temp view v as select 1",
            "CREATE TEMP SEQUENCE s",
            "SELECT pg_advisory_lock(1)",
            "SELECT PG_TRY_ADVISORY_LOCK(1, 2)",
            "select pg_advisory_lock_shared(7), 1",
            "SELECT 1; PREPARE q AS SELECT 2",
        ] {
            assert!(changes(sql), "{sql}");
        }
        for sql in [
            "PREPARE TRANSACTION 'x'",
            "DECLARE c CURSOR FOR SELECT 1",
            "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
            "CREATE TABLE t (x int)",
            "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
            "CREATE INDEX ON t (temp)",
        ] {
            assert!(!changes(sql), "{sql}");
        }
    }

    #[test]
    fn custom_parameter_names_are_collected() {
        let mut custom = Vec::new();
        assert!(changes_session(
            "SET app.tenant = '42'; SELECT set_config('Request.Claims', 'x', false); \
             SELECT set_config('bad name.x', 'y', false)",
            &mut custom
        ));
        assert_eq!(custom, ["app.tenant", "request.claims"]);
    }
}
