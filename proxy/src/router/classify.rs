//! What a SQL string does, as far as routing needs to know: read, write, DDL, transaction
//! control, session settings, or other.
//!
//! A lexer, not a parser: it skips comments, string literals, quoted identifiers and dollar
//! quotes, splits statements at top-level semicolons and looks at keywords. It is conservative:
//! anything not surely a read is not a read. `SELECT ... FOR UPDATE/SHARE`, `SELECT ... INTO`,
//! data-modifying CTEs, `EXPLAIN ANALYZE` of a write, and calls of configured write functions
//! (`nextval`, `setval` and the advisory locks by default) are writes; unterminated literals or
//! comments and unknown commands are `Other`. One pass over the bytes, no allocation.

/// The kind of a statement (or of a multi-statement string, by its strongest statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatementKind {
    /// Surely reads only: may run on a replica.
    Read,
    /// SET, RESET, DISCARD, LISTEN, PREPARE, ...: session state.
    Session,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
    TransactionControl,
    /// Not understood: treated like a write by careful policies.
    Other,
    /// CREATE, ALTER, DROP, GRANT, VACUUM, ...
    Ddl,
    /// Changes data.
    Write,
}

/// The classification of one SQL string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub kind: StatementKind,
    /// The string starts a transaction declared `READ ONLY` (`BEGIN READ ONLY`, ...).
    pub read_only_begin: bool,
}

/// Functions whose call makes a SELECT a write, unless configured otherwise.
pub const DEFAULT_WRITE_FUNCTIONS: [&str; 6] = [
    "nextval",
    "setval",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
];

/// Classifies SQL, knowing which functions write.
#[derive(Debug, Clone)]
pub struct Classifier {
    write_functions: Vec<String>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&[])
    }
}

/// One lexical token: a word (keyword or identifier, unquoted) or a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Word(&'a str),
    /// A quoted identifier or literal: never a keyword.
    Opaque,
    Symbol(u8),
}

/// The tokens of a string, with `None` after an unterminated literal or comment.
pub(crate) struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
    /// An unterminated literal or comment was found.
    pub(crate) broken: bool,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer {
            sql,
            pos: 0,
            broken: false,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.sql.as_bytes()
    }

    /// The text not lexed yet.
    pub(crate) fn rest(&self) -> &'a str {
        self.sql.get(self.pos..).unwrap_or_default()
    }

    /// Skips to just after `end`, or marks the input broken.
    fn skip_past(&mut self, end: &[u8]) {
        let rest = &self.bytes()[self.pos..];
        match rest.windows(end.len()).position(|w| w == end) {
            Some(i) => self.pos += i + end.len(),
            None => {
                self.broken = true;
                self.pos = self.bytes().len();
            }
        }
    }

    fn skip_block_comment(&mut self) {
        let b = self.bytes();
        let mut depth = 0usize;
        while self.pos + 1 < b.len() {
            match (b[self.pos], b[self.pos + 1]) {
                (b'/', b'*') => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return;
                    }
                }
                _ => self.pos += 1,
            }
        }
        self.broken = true;
        self.pos = b.len();
    }

    /// A string literal starting at the quote at `self.pos`; `escapes` for E'...' strings.
    fn skip_string(&mut self, escapes: bool) {
        let b = self.bytes();
        self.pos += 1;
        while self.pos < b.len() {
            match b[self.pos] {
                b'\\' if escapes => self.pos += 2,
                b'\'' if b.get(self.pos + 1) == Some(&b'\'') => self.pos += 2,
                b'\'' => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
        self.broken = true;
        self.pos = b.len();
    }

    /// At a `$`: a dollar-quoted string (`$$...$$`, `$tag$...$tag$`) or a parameter (`$1`).
    fn skip_dollar(&mut self) -> bool {
        let b = self.bytes();
        let start = self.pos;
        let mut end = start + 1;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let tag_ok = end == start + 1 || !b[start + 1].is_ascii_digit();
        if end < b.len() && b[end] == b'$' && tag_ok {
            let tag = &self.sql[start..=end];
            self.pos = end + 1;
            self.skip_past(tag.as_bytes());
            true
        } else {
            self.pos = end;
            false
        }
    }
}

/// Byte classes for the lexer's hot loops (every routed query is lexed whole).
const SPACE: u8 = 1;
/// Letters, `_` and non-ASCII bytes: they start a word.
const WORD_START: u8 = 2;
/// What continues a word: also digits and `$`.
const WORD: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_whitespace() {
            SPACE
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            WORD_START | WORD
        } else if c.is_ascii_digit() || c == b'$' {
            WORD
        } else {
            0
        };
        i += 1;
    }
    t
};

fn class(c: u8) -> u8 {
    CLASS[c as usize]
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Token<'a>> {
        let b = self.bytes();
        while self.pos < b.len() {
            let c = b[self.pos];
            let k = class(c);
            if k & SPACE != 0 {
                self.pos += 1;
                continue;
            }
            if k & WORD_START != 0 {
                let start = self.pos;
                // E'...' (escape string), also U&'...' is fine as a plain string.
                if (c == b'e' || c == b'E') && b.get(self.pos + 1) == Some(&b'\'') {
                    self.pos += 1;
                    self.skip_string(true);
                    return Some(Token::Opaque);
                }
                self.pos += b[start..]
                    .iter()
                    .position(|&c| class(c) & WORD == 0)
                    .unwrap_or(b.len() - start);
                return Some(Token::Word(&self.sql[start..self.pos]));
            }
            match c {
                b'-' if b.get(self.pos + 1) == Some(&b'-') => {
                    match b[self.pos..].iter().position(|&x| x == b'\n') {
                        Some(i) => self.pos += i + 1,
                        None => self.pos = b.len(),
                    }
                }
                b'/' if b.get(self.pos + 1) == Some(&b'*') => self.skip_block_comment(),
                b'\'' => {
                    self.skip_string(false);
                    return Some(Token::Opaque);
                }
                b'"' => {
                    self.pos += 1;
                    self.skip_past(b"\"");
                    return Some(Token::Opaque);
                }
                b'$' => {
                    if self.skip_dollar() {
                        return Some(Token::Opaque);
                    }
                }
                c if c.is_ascii_digit() => {
                    while self.pos < b.len()
                        && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'.')
                    {
                        self.pos += 1;
                    }
                    return Some(Token::Opaque);
                }
                c => {
                    self.pos += 1;
                    return Some(Token::Symbol(c));
                }
            }
        }
        None
    }
}

fn is(word: &str, keyword: &str) -> bool {
    word.eq_ignore_ascii_case(keyword)
}

/// The keywords a statement's facts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Insert,
    Update,
    Delete,
    Merge,
    Share,
    For,
    Key,
    Read,
    Only,
    Analyze,
    Into,
    From,
}

/// Which of those keywords `word` is. Every word of every routed query passes here, so the
/// length and first letter pick the one candidate to compare.
fn keyword(word: &str) -> Option<Keyword> {
    use Keyword::*;
    let b = word.as_bytes();
    let (kw, text) = match (b.len(), b.first()?.to_ascii_lowercase()) {
        (6, b'i') => (Insert, "insert"),
        (6, b'u') => (Update, "update"),
        (6, b'd') => (Delete, "delete"),
        (5, b'm') => (Merge, "merge"),
        (5, b's') => (Share, "share"),
        (3, b'f') => (For, "for"),
        (3, b'k') => (Key, "key"),
        (4, b'r') => (Read, "read"),
        (4, b'o') => (Only, "only"),
        (4, b'i') => (Into, "into"),
        (4, b'f') => (From, "from"),
        (7, b'a') => return (is(word, "analyze") || is(word, "analyse")).then_some(Analyze),
        _ => return None,
    };
    is(word, text).then_some(kw)
}

/// What one statement's tokens showed.
#[derive(Default)]
struct Facts<'a> {
    first: Option<&'a str>,
    second: Option<&'a str>,
    locking_clause: bool,
    data_modifying: bool,
    top_level_into: bool,
    top_level_from: bool,
    write_function: bool,
    analyze: bool,
    read_only: bool,
    empty: bool,
}

impl Classifier {
    /// A classifier whose write functions are the defaults plus `extra` (case-insensitive;
    /// a schema-qualified call matches by its last name part).
    pub fn new(extra: &[String]) -> Self {
        let mut write_functions: Vec<String> = DEFAULT_WRITE_FUNCTIONS
            .iter()
            .map(|f| f.to_string())
            .collect();
        write_functions.extend(extra.iter().map(|f| f.to_ascii_lowercase()));
        Classifier { write_functions }
    }

    fn writes(&self, function: &str) -> bool {
        self.write_functions
            .iter()
            .any(|f| f.eq_ignore_ascii_case(function))
    }

    /// Classifies a SQL string (one statement or several separated by `;`).
    pub fn classify(&self, sql: &str) -> Classification {
        self.classify_noting_plain(sql).0
    }

    /// As [`Classifier::classify`], and whether the fast path decided: then the text is
    /// ASCII words, numbers, parameters and operators, with no comment, quote or second
    /// statement, which spares callers a search for a comment.
    pub fn classify_noting_plain(&self, sql: &str) -> (Classification, bool) {
        // A plain SELECT is decided in one tight pass (see `plain_select`).
        if super::plain_select::is_plain_select(sql, |f| {
            self.write_functions
                .iter()
                .any(|w| w.as_bytes().eq_ignore_ascii_case(f))
        }) {
            let read = Classification {
                kind: StatementKind::Read,
                read_only_begin: false,
            };
            return (read, true);
        }
        (self.classify_lexed(sql), false)
    }

    /// Classifies with the lexer alone.
    pub(crate) fn classify_lexed(&self, sql: &str) -> Classification {
        let mut lexer = Lexer::new(sql);
        let mut overall: Option<StatementKind> = None;
        let mut read_only_begin = false;
        loop {
            let (facts, more) = self.statement(&mut lexer);
            if lexer.broken {
                return Classification {
                    kind: StatementKind::Other,
                    read_only_begin: false,
                };
            }
            if !facts.empty {
                let kind = kind_of(&facts);
                if kind == StatementKind::TransactionControl && facts.read_only && overall.is_none()
                {
                    read_only_begin = true;
                }
                overall = Some(overall.map_or(kind, |k| k.max(kind)));
            }
            if !more {
                break;
            }
        }
        Classification {
            kind: overall.unwrap_or(StatementKind::Read),
            read_only_begin,
        }
    }

    /// Reads one statement's tokens; returns its facts and whether a `;` followed.
    fn statement<'a>(&self, lexer: &mut Lexer<'a>) -> (Facts<'a>, bool) {
        let mut f = Facts {
            empty: true,
            ..Facts::default()
        };
        let mut depth = 0i32;
        let mut prev: Option<Token<'a>> = None;
        // The keyword the previous token was, if it was one.
        let mut prev_kw: Option<Keyword> = None;
        for token in lexer.by_ref() {
            if token == Token::Symbol(b';') && depth == 0 {
                return (f, true);
            }
            f.empty = false;
            let mut kw = None;
            match token {
                Token::Symbol(b'(') => {
                    if let Some(Token::Word(w)) = prev {
                        if self.writes(w) {
                            f.write_function = true;
                        }
                    }
                    depth += 1;
                }
                Token::Symbol(b')') => depth -= 1,
                Token::Word(w) => {
                    if f.first.is_none() {
                        f.first = Some(w);
                    } else if f.second.is_none() {
                        f.second = Some(w);
                    }
                    kw = keyword(w);
                    // `FOR UPDATE` / `FOR NO KEY UPDATE` / `FOR [KEY] SHARE` are locking
                    // clauses, not DML.
                    let locking = matches!(prev_kw, Some(Keyword::For | Keyword::Key));
                    match kw {
                        Some(
                            Keyword::Insert | Keyword::Update | Keyword::Delete | Keyword::Merge,
                        ) => {
                            if locking {
                                f.locking_clause = true;
                            } else {
                                f.data_modifying = true;
                            }
                        }
                        Some(Keyword::Share) if locking => f.locking_clause = true,
                        Some(Keyword::Only) if prev_kw == Some(Keyword::Read) => f.read_only = true,
                        Some(Keyword::Analyze) => f.analyze = true,
                        Some(Keyword::Into) if depth == 0 => f.top_level_into = true,
                        Some(Keyword::From) if depth == 0 => f.top_level_from = true,
                        _ => {}
                    }
                }
                _ => {}
            }
            prev = Some(token);
            prev_kw = kw;
        }
        (f, false)
    }
}

/// The kind of one statement from its facts.
fn kind_of(f: &Facts<'_>) -> StatementKind {
    use StatementKind::*;
    let Some(first) = f.first else {
        // Only literals or symbols, e.g. `(SELECT 1)`: understood only if nothing writes.
        return if f.data_modifying || f.write_function || f.locking_clause {
            Write
        } else {
            Other
        };
    };
    let second_is = |k: &str| f.second.is_some_and(|s| is(s, k));
    let reads_unless_writing = || {
        if f.locking_clause || f.data_modifying || f.write_function {
            Write
        } else {
            Read
        }
    };
    let any = |words: &[&str]| words.iter().any(|k| is(first, k));
    if any(&["select", "values", "table"]) {
        if f.top_level_into {
            Write // SELECT ... INTO new_table
        } else {
            reads_unless_writing()
        }
    } else if any(&["with"]) {
        reads_unless_writing()
    } else if any(&["show"]) {
        Read
    } else if any(&["explain"]) {
        if f.analyze {
            reads_unless_writing()
        } else {
            Read
        }
    } else if any(&["copy"]) {
        if f.top_level_from || f.data_modifying || f.write_function {
            Write
        } else {
            Read
        }
    } else if any(&[
        "insert", "update", "delete", "merge", "truncate", "lock", "call", "notify",
    ]) {
        Write
    } else if any(&[
        "create", "alter", "drop", "comment", "grant", "revoke", "reindex", "cluster", "vacuum",
        "analyze", "analyse", "refresh", "security", "import", "reassign",
    ]) {
        Ddl
    } else if any(&[
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
    ]) || (any(&["prepare"]) && second_is("transaction"))
    {
        TransactionControl
    } else if any(&[
        "set",
        "reset",
        "discard",
        "deallocate",
        "prepare",
        "listen",
        "unlisten",
        "load",
    ]) {
        Session
    } else {
        Other
    }
}

/// The SQL text of a `Query` or `Parse` message (whole message, tag included).
pub fn sql_of(message: &[u8]) -> Option<&str> {
    let body = message.get(5..)?;
    let text = match message.first()? {
        // The text ends where the message does (PostgreSQL refuses a Query with more after
        // its NUL): no search for the NUL.
        b'Q' => body.strip_suffix(b"\0")?,
        b'P' => {
            let (_, rest) = crate::protocol::frame::cstr(body)?;
            crate::protocol::frame::cstr(rest)?.0
        }
        _ => return None,
    };
    text_of(text)
}

/// SQL bytes as text, if they are UTF-8. SQL is nearly always ASCII, and that test costs a
/// fraction of a full UTF-8 validation on short text (which measured about 200 instructions
/// for pgbench's `SELECT`, per query, under callgrind).
pub fn text_of(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII text is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::StatementKind::*;
    use super::*;

    fn kind(sql: &str) -> StatementKind {
        Classifier::new(&["audit_write".to_string()])
            .classify(sql)
            .kind
    }

    #[test]
    fn plain_reads() {
        for sql in [
            "SELECT 1",
            "select * from t where a = 'x; DELETE FROM t'",
            "  -- comment; DELETE\n SELECT a FROM t",
            "/* nested /* DELETE */ */ SELECT 1",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "EXPLAIN DELETE FROM t",
            "SELECT \"update\" FROM t",
            "SELECT $$ DELETE FROM t $$",
            "SELECT $tag$ INSERT $ $tag$",
            "SELECT E'it\\'s; DELETE FROM t'",
            "SELECT 'a''b; UPDATE t SET x = 1'",
            "COPY (SELECT * FROM t) TO STDOUT",
            "COPY t TO STDOUT",
            "SELECT $1::int",
            "SELECT 1; SELECT 2",
            "",
            ";",
        ] {
            assert_eq!(kind(sql), Read, "{sql}");
        }
    }

    #[test]
    fn writes_hidden_in_reads() {
        for sql in [
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
            "select * from t for no key update nowait",
            "Select * From t For Share",
            "explain analyse delete from t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH u AS (UPDATE t SET x = 1 RETURNING x) SELECT 1",
            "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i",
            "SELECT nextval('s')",
            "select NEXTVAL('s')",
            "SELECT public.setval('s', 1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT audit_write(1)",
            "SELECT * INTO new_t FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET x = 1",
            "SELECT 1; DELETE FROM t",
            "DELETE FROM t; SELECT 1",
            "INSERT INTO t VALUES (1)",
            "update t set x = 1",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "TRUNCATE t",
            "COPY t FROM STDIN",
            "LOCK TABLE t",
            "CALL p()",
            "NOTIFY chan",
        ] {
            assert_eq!(kind(sql), Write, "{sql}");
        }
    }

    #[test]
    fn other_kinds() {
        assert_eq!(kind("CREATE TABLE t (x int)"), Ddl);
        assert_eq!(kind("drop index i"), Ddl);
        assert_eq!(kind("VACUUM t"), Ddl);
        assert_eq!(kind("BEGIN"), TransactionControl);
        assert_eq!(kind("COMMIT"), TransactionControl);
        assert_eq!(kind("PREPARE TRANSACTION 'x'"), TransactionControl);
        assert_eq!(kind("SET search_path = a"), Session);
        assert_eq!(kind("PREPARE q AS SELECT 1"), Session);
        assert_eq!(kind("DISCARD ALL"), Session);
        assert_eq!(kind("DO $$ BEGIN END $$"), Other);
        assert_eq!(kind("EXECUTE q"), Other);
        assert_eq!(kind("FROBNICATE"), Other);
        assert_eq!(kind("BEGIN; SELECT 1"), TransactionControl);
        assert_eq!(kind("SET x = 1; CREATE TABLE t ()"), Ddl);
    }

    #[test]
    fn unterminated_input_is_other() {
        for sql in [
            "SELECT 'abc",
            "SELECT \"abc",
            "SELECT $$ x",
            "SELECT 1 /* x",
            "SELECT E'\\'",
        ] {
            assert_eq!(kind(sql), Other, "{sql}");
        }
    }

    #[test]
    fn read_only_transactions_are_recognised() {
        let c = Classifier::default();
        assert!(c.classify("BEGIN READ ONLY").read_only_begin);
        assert!(
            c.classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .read_only_begin
        );
        assert!(c.classify("begin transaction read only").read_only_begin);
        assert!(!c.classify("BEGIN").read_only_begin);
        assert!(!c.classify("BEGIN READ WRITE").read_only_begin);
        assert!(!c.classify("SELECT 1; BEGIN READ ONLY").read_only_begin);
    }

    #[test]
    fn sql_is_taken_from_query_and_parse_messages() {
        assert_eq!(sql_of(b"Q\0\0\0\x0dSELECT 1\0"), Some("SELECT 1"));
        assert_eq!(sql_of(b"P\0\0\0\x10s1\0SELECT 1\0\0\0"), Some("SELECT 1"));
        assert_eq!(sql_of(b"B\0\0\0\x04"), None);
    }
}
