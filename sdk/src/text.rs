//! Looking into the SQL text, for policies that need more than the host's classification and
//! hint (both computed once by the host, for every policy). Fetching the text
//! ([`Query::sql`](crate::Query::sql)) costs a string across the component boundary and
//! keeps that decision out of the host's memo of a deterministic policy, so look only where
//! it matters.

/// Whether `sql` calls `function` (case-insensitive, `name(`, not part of a longer name): for
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
    fn function_calls() {
        assert!(calls("SELECT audit_write (1)", "audit_write"));
        assert!(calls("select x.AUDIT_WRITE(1)", "audit_write"));
        assert!(!calls("SELECT my_audit_write(1)", "audit_write"));
        assert!(!calls("SELECT audit_write FROM t", "audit_write"));
    }
}
