//! The classifier's fast path: a plain `SELECT`, the statement routed more than any other.
//!
//! The lexer in [`classify`](super::classify) handles literals, comments, quoting and many
//! statements, and costs about 20 instructions per byte. Most reads need none of that: ASCII
//! text made of words, numbers, `$n` parameters, parentheses and operators. For such text one
//! tight pass decides, and anything it is not sure about goes to the lexer: a quote, a comment
//! or a `-`, a `$` that is not a parameter, non-ASCII bytes, a second statement, and the words
//! that can make a `SELECT` write (`FOR` of a locking clause, `INTO`, `INSERT`, `UPDATE`,
//! `DELETE`, `MERGE`) or a call of a write function. It only ever answers "surely a read".

/// Byte classes of the fast path.
const WORD: u8 = 1; // letters, digits, `_`
const LETTER: u8 = 2; // letters and `_`: a word starts with one
const SPACE: u8 = 4;
/// Operators and punctuation that cannot start a literal, a comment or a quote.
const SAFE: u8 = 8;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() || c == b'_' {
            WORD | LETTER
        } else if c.is_ascii_digit() {
            WORD
        } else if c.is_ascii_whitespace() || c == 0x0b {
            SPACE
        } else {
            match c {
                b',' | b'.' | b')' | b'=' | b'<' | b'>' | b'+' | b'*' | b'%' | b':' | b'!'
                | b'|' | b'&' | b'~' | b'^' | b'@' | b'#' | b'?' => SAFE,
                _ => 0,
            }
        };
        i += 1;
    }
    t
};

/// The length of the run at the start of `b` whose bytes all have class bit `bit`.
#[inline(always)]
fn run(b: &[u8], bit: u8) -> usize {
    b.iter()
        .position(|&c| CLASS[c as usize] & bit == 0)
        .unwrap_or(b.len())
}

/// Whether `sql` is surely a read that the full classifier would call `Read`. `writes(name)`
/// tells whether a function name is a configured write function.
pub(crate) fn is_plain_select(sql: &str, writes: impl Fn(&[u8]) -> bool) -> bool {
    let mut b = sql.as_bytes();
    b = &b[run(b, SPACE)..];
    let first = run(b, WORD);
    if !b[..first].eq_ignore_ascii_case(b"select") || b.get(first) == Some(&b'$') {
        return false;
    }
    b = &b[first..];
    // The last word, while only white space followed it: `name (` is a call of `name`.
    let mut last_word: &[u8] = b"select";
    while let Some(&c) = b.first() {
        let k = CLASS[c as usize];
        if k & LETTER != 0 {
            let len = run(b, WORD);
            let word = &b[..len];
            if b.get(len) == Some(&b'$') || may_write(word) {
                return false; // `a$b` words are the lexer's business
            }
            last_word = word;
            b = &b[len..];
        } else if k & SPACE != 0 {
            b = &b[run(b, SPACE)..];
        } else if k & WORD != 0 {
            // A number (`12`, `1.5`; an exponent's `-` goes to the lexer).
            let len = b
                .iter()
                .position(|&c| CLASS[c as usize] & WORD == 0 && c != b'.')
                .unwrap_or(b.len());
            b = &b[len..];
            last_word = b"";
        } else if k & SAFE != 0 {
            b = &b[1..];
            last_word = b"";
        } else {
            match c {
                b'(' => {
                    if !last_word.is_empty() && writes(last_word) {
                        return false;
                    }
                    b = &b[1..];
                    last_word = b"";
                }
                b'$' => {
                    // A parameter, `$1`; `$$` and `$tag$` start dollar quotes. As in the
                    // lexer, a parameter is no token: `name $1 (` still counts as a call.
                    let digits = b[1..].iter().take_while(|d| d.is_ascii_digit()).count();
                    let after = b.get(1 + digits).copied().unwrap_or(b' ');
                    if digits == 0 || after == b'$' || CLASS[after as usize] & LETTER != 0 {
                        return false;
                    }
                    b = &b[1 + digits..];
                }
                // One statement, then nothing but white space.
                b';' => return b[1..].iter().all(u8::is_ascii_whitespace),
                _ => return false,
            }
        }
    }
    true
}

/// The words that can turn a `SELECT` into a write, or that the lexer must weigh.
fn may_write(word: &[u8]) -> bool {
    let kw: &[u8] = match (word.len(), word[0] | 0x20) {
        (3, b'f') => b"for",
        (4, b'i') => b"into",
        (6, b'i') => b"insert",
        (6, b'u') => b"update",
        (6, b'd') => b"delete",
        (5, b'm') => b"merge",
        _ => return false,
    };
    word.eq_ignore_ascii_case(kw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify::{Classifier, StatementKind};

    fn fast(sql: &str) -> bool {
        is_plain_select(sql, |f| f.eq_ignore_ascii_case(b"nextval"))
    }

    #[test]
    fn plain_selects_take_the_fast_path() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select a.x, count(*) from t a join u on a.id = u.id where x in (1, 2) group by 1",
            "SELECT 1",
            "SELECT x::int FROM t WHERE y >= 2.5 ORDER BY x LIMIT 10;  \n",
            "SELECT * FROM t WHERE j @> j2 AND a <> b",
        ] {
            assert!(fast(sql), "{sql}");
        }
    }

    #[test]
    fn anything_unsure_goes_to_the_lexer() {
        for sql in [
            "SELECT * FROM t FOR UPDATE",
            "select * from t for share",
            "SELECT * INTO new_t FROM t",
            "SELECT nextval ('s')",
            "SELECT public.NEXTVAL(1)",
            "SELECT 'x'",
            "SELECT \"update\" FROM t",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT $$ x $$",
            "SELECT $tag$ x $tag$",
            "SELECT $1$",
            "SELECT a$b FROM t",
            "SELECT$1",
            "select$$ x $$",
            "SELECT 1; DELETE FROM t",
            "SELECT 1 - 1",
            "SELECT 'é'",
            "SELECT é FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM (DELETE FROM t RETURNING *) x",
            "SELECT E'x'",
            "",
            " ; ",
        ] {
            assert!(!fast(sql), "{sql}");
        }
    }

    /// The fast path never disagrees with the lexer: whatever it takes, the lexer calls a read.
    #[test]
    fn the_fast_path_agrees_with_the_lexer() {
        let c = Classifier::new(&["nextval".to_string()]);
        let parts = [
            "SELECT", "select", "a", "FROM", "t", "for", "update", "into", "x", "(", ")", "$1",
            "$$", ";", ",", "1", "1.5", "=", "nextval", "delete", "'s'", "--", "\n", "::", "-",
            "*", "WHERE", "share", "merge", "in",
        ];
        // Every sequence of up to four parts after a leading SELECT, and some without it.
        let mut checked = 0;
        let mut stack: Vec<Vec<usize>> = (0..parts.len()).map(|i| vec![i]).collect();
        while let Some(seq) = stack.pop() {
            for lead in ["SELECT ", ""] {
                let sql = format!(
                    "{lead}{}",
                    seq.iter().map(|&i| parts[i]).collect::<Vec<_>>().join(" ")
                );
                if is_plain_select(&sql, |f| f.eq_ignore_ascii_case(b"nextval")) {
                    assert_eq!(c.classify_lexed(&sql).kind, StatementKind::Read, "{sql}");
                }
                checked += 1;
            }
            if seq.len() < 4 {
                for i in 0..parts.len() {
                    let mut longer = seq.clone();
                    longer.push(i);
                    stack.push(longer);
                }
            }
        }
        assert!(checked > 1_000_000);
    }
}
