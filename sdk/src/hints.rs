//! Routing hints a client can give.
//!
//! * In a comment anywhere in the SQL: `/* switchyard: primary */` or `/* switchyard: replica */`.
//! * For the rest of the session: `SET switchyard.route = 'primary'` (or `'replica'`, or
//!   `'default'` to clear). PostgreSQL accepts the custom setting, so the statement also runs.

/// Where a hint asks to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
    /// Clears a session hint.
    Default,
}

fn parse_target(word: &str) -> Option<Hint> {
    match word
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_ascii_lowercase()
        .as_str()
    {
        "primary" => Some(Hint::Primary),
        "replica" => Some(Hint::Replica),
        "default" => Some(Hint::Default),
        _ => None,
    }
}

/// A `/* switchyard: ... */` comment hint in `sql`.
pub fn comment_hint(sql: &str) -> Option<Hint> {
    let start = sql.find("/*")?;
    let rest = &sql[start + 2..];
    let end = rest.find("*/")?;
    let body = rest[..end].trim();
    let target = body.strip_prefix("switchyard:")?;
    parse_target(target)
}

/// The target of a `SET switchyard.route = ...` statement.
pub fn session_hint(sql: &str) -> Option<Hint> {
    let s = sql.trim().trim_end_matches(';').trim();
    let rest = s.get(..3).filter(|k| k.eq_ignore_ascii_case("set"))?;
    let _ = rest;
    let s = s[3..].trim_start();
    let s = s
        .strip_prefix("session ")
        .or_else(|| s.strip_prefix("SESSION "))
        .unwrap_or(s)
        .trim_start();
    let name_len = "switchyard.route".len();
    if !s.get(..name_len)?.eq_ignore_ascii_case("switchyard.route") {
        return None;
    }
    let s = s[name_len..].trim_start();
    let s = s.strip_prefix('=').or_else(|| {
        s.get(..2)
            .filter(|k| k.eq_ignore_ascii_case("to"))
            .map(|_| &s[2..])
    })?;
    parse_target(s)
}

/// Whether `sql` calls `function` (case-insensitive, `name(`), outside nothing smarter: for
/// policies that keep their own list of write functions on top of the host's.
pub fn calls(sql: &str, function: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let f = function.to_ascii_lowercase();
    lower.match_indices(&f).any(|(i, _)| {
        let before_ok = i == 0
            || !lower.as_bytes()[i - 1].is_ascii_alphanumeric() && lower.as_bytes()[i - 1] != b'_';
        let after = lower[i + f.len()..].trim_start();
        before_ok && after.starts_with('(')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_hints() {
        assert_eq!(
            comment_hint("/* switchyard: primary */ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(
            comment_hint("SELECT 1 /*switchyard:replica*/"),
            Some(Hint::Replica)
        );
        assert_eq!(comment_hint("/* other */ SELECT 1"), None);
        assert_eq!(comment_hint("SELECT 1"), None);
    }

    #[test]
    fn session_hints() {
        assert_eq!(
            session_hint("SET switchyard.route = 'primary'"),
            Some(Hint::Primary)
        );
        assert_eq!(
            session_hint("set SESSION switchyard.route to replica;"),
            Some(Hint::Replica)
        );
        assert_eq!(
            session_hint("SET switchyard.route = default"),
            Some(Hint::Default)
        );
        assert_eq!(session_hint("SET search_path = a"), None);
    }

    #[test]
    fn function_calls() {
        assert!(calls("SELECT audit_write (1)", "audit_write"));
        assert!(calls("select x.AUDIT_WRITE(1)", "audit_write"));
        assert!(!calls("SELECT my_audit_write(1)", "audit_write"));
        assert!(!calls("SELECT audit_write FROM t", "audit_write"));
    }
}
