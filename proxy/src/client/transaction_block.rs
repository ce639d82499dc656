//! Recognizes the transaction-control statements the proxy answers itself.
//!
//! In transaction mode a client's `BEGIN` does not need a server yet: the proxy answers it
//! (`BEGIN`, ReadyForQuery 'T') and routes the transaction at its first real statement, which
//! tells a policy far more than `BEGIN` does (the tables, the tenant, whether it reads). That
//! statement then goes to the chosen server right behind the `BEGIN`, in one write. A `COMMIT` or
//! `ROLLBACK` of a transaction that never needed a server is answered too.
//!
//! Only a lone `BEGIN` that cannot fail on an idle server of either role is deferred: no
//! `READ WRITE` and no `SERIALIZABLE`, which a hot standby refuses. Anything else goes to a
//! server as it always did.

use crate::router::classify::{Lexer, Token};

/// A `BEGIN` the proxy may answer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeferrableBegin {
    /// Declared `READ ONLY`.
    pub read_only: bool,
    /// The CommandComplete tag PostgreSQL answers it with: `BEGIN` or `START TRANSACTION`.
    pub tag: &'static str,
}

/// How a transaction the proxy kept to itself ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoneEnd {
    Commit,
    Rollback,
}

impl LoneEnd {
    /// The CommandComplete tag PostgreSQL gives.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            LoneEnd::Commit => "COMMIT",
            LoneEnd::Rollback => "ROLLBACK",
        }
    }
}

fn is(w: &str, k: &str) -> bool {
    w.eq_ignore_ascii_case(k)
}

/// The words of `sql`, if it is one statement of words only (an optional trailing `;`, commas
/// between words), at most `max` of them.
fn words(sql: &str, max: usize) -> Option<([&str; 12], usize)> {
    let mut out = [""; 12];
    let mut n = 0;
    let mut lexer = Lexer::new(sql);
    let mut ended = false;
    for t in lexer.by_ref() {
        match t {
            Token::Symbol(b';') if !ended => ended = true,
            Token::Symbol(b',') if !ended && n > 0 => {}
            Token::Word(w) if !ended && n < max.min(out.len()) => {
                out[n] = w;
                n += 1;
            }
            _ => return None,
        }
    }
    (!lexer.broken && n > 0).then_some((out, n))
}

/// Whether a `Query` message may start with `BEGIN` or `START`: its text past white space
/// starts with one of them, or with a comment.
pub(crate) fn may_begin(msg: &[u8]) -> bool {
    let body = msg.get(5..).unwrap_or_default();
    let text = match body.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => &body[i..],
        None => return false,
    };
    let head = &text[..text.len().min(5)];
    matches!(text[0], b'/' | b'-')
        || head.eq_ignore_ascii_case(b"begin")
        || head.eq_ignore_ascii_case(b"start")
}

/// A lone `BEGIN`/`START TRANSACTION` with modes that any server accepts.
pub(crate) fn deferrable_begin(sql: &str) -> Option<DeferrableBegin> {
    // Called for every Query that needs a server: decide on the first word alone when it can.
    match Lexer::new(sql).next() {
        Some(Token::Word(w)) if is(w, "begin") || is(w, "start") => {}
        _ => return None,
    }
    let (w, n) = words(sql, 12)?;
    let (mut i, tag) = if is(w[0], "begin") {
        let i = usize::from(n > 1 && (is(w[1], "work") || is(w[1], "transaction"))) + 1;
        (i, "BEGIN")
    } else if is(w[0], "start") && n > 1 && is(w[1], "transaction") {
        (2, "START TRANSACTION")
    } else {
        return None;
    };
    let mut read_only = false;
    let at = |i: usize| (i < n).then(|| w[i]);
    while i < n {
        let a = w[i];
        let b = at(i + 1).unwrap_or("");
        if is(a, "read") && is(b, "only") {
            read_only = true;
            i += 2;
        } else if is(a, "deferrable") {
            i += 1;
        } else if is(a, "not") && is(b, "deferrable") {
            i += 2;
        } else if is(a, "isolation") && is(b, "level") {
            let c = at(i + 2)?;
            let d = at(i + 3).unwrap_or("");
            if is(c, "read") && (is(d, "committed") || is(d, "uncommitted"))
                || is(c, "repeatable") && is(d, "read")
            {
                i += 4;
            } else {
                // SERIALIZABLE (refused by a hot standby) or a typo: the server answers.
                return None;
            }
        } else {
            // READ WRITE (refused by a hot standby) or anything unknown.
            return None;
        }
    }
    Some(DeferrableBegin { read_only, tag })
}

/// A lone `COMMIT`/`END`/`ROLLBACK`/`ABORT` (optionally `WORK` or `TRANSACTION`).
pub(crate) fn lone_end(sql: &str) -> Option<LoneEnd> {
    let (w, n) = words(sql, 2)?;
    if n == 2 && !(is(w[1], "work") || is(w[1], "transaction")) {
        return None;
    }
    if is(w[0], "commit") || is(w[0], "end") {
        Some(LoneEnd::Commit)
    } else if is(w[0], "rollback") || is(w[0], "abort") {
        Some(LoneEnd::Rollback)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_that_any_server_accepts_are_deferred() {
        let begin = |read_only| {
            Some(DeferrableBegin {
                read_only,
                tag: "BEGIN",
            })
        };
        let (rw, ro) = (begin(false), begin(true));
        assert_eq!(deferrable_begin("BEGIN"), rw);
        assert_eq!(deferrable_begin("begin;"), rw);
        assert_eq!(deferrable_begin("  BEGIN TRANSACTION ; "), rw);
        let start = |read_only| {
            Some(DeferrableBegin {
                read_only,
                tag: "START TRANSACTION",
            })
        };
        assert_eq!(deferrable_begin("START TRANSACTION"), start(false));
        assert_eq!(deferrable_begin("BEGIN READ ONLY"), ro);
        assert_eq!(
            deferrable_begin("start transaction isolation level repeatable read, read only"),
            start(true)
        );
        assert_eq!(
            deferrable_begin("BEGIN ISOLATION LEVEL READ COMMITTED NOT DEFERRABLE"),
            rw
        );
    }

    #[test]
    fn anything_else_goes_to_a_server() {
        for sql in [
            "BEGIN READ WRITE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN; SELECT 1",
            "BEGIN; BEGIN",
            "BEGIN ISOLATION LEVEL",
            "BEGIN TRANSACTION TRANSACTION",
            "BEGIN /* unterminated",
            "BEGIN 'x'",
            "BEGINNING",
            "START",
            "COMMIT",
            "",
        ] {
            assert_eq!(deferrable_begin(sql), None, "{sql}");
        }
    }

    #[test]
    fn lone_ends() {
        assert_eq!(lone_end("COMMIT"), Some(LoneEnd::Commit));
        assert_eq!(lone_end("end work;"), Some(LoneEnd::Commit));
        assert_eq!(lone_end("ROLLBACK TRANSACTION"), Some(LoneEnd::Rollback));
        assert_eq!(lone_end("abort"), Some(LoneEnd::Rollback));
        assert_eq!(lone_end("COMMIT AND CHAIN"), None);
        assert_eq!(lone_end("ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(lone_end("COMMIT PREPARED 'x'"), None);
        assert_eq!(lone_end("COMMIT; SELECT 1"), None);
        assert_eq!(lone_end("SELECT 1"), None);
    }

    fn query(sql: &str) -> bytes::BytesMut {
        let mut m = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut m).expect("no NUL in the text");
        m
    }

    #[test]
    fn begin_precheck_rules_out_only_what_cannot_begin() {
        for sql in [
            "BEGIN",
            "  begin;",
            "\nStart transaction read only",
            "/* hint */ BEGIN",
            "-- x\nBEGIN",
        ] {
            assert!(may_begin(&query(sql)), "{sql:?}");
        }
        for sql in ["SELECT 1", "set x = 1", "  ", "", "BEGI", "COMMIT", "stat"] {
            assert!(!may_begin(&query(sql)), "{sql:?}");
        }
    }
}
