//! Routing hints a client can give, parsed by the host so that every policy sees them as one
//! plain value (`query.hint`) and none has to fetch the SQL text to look for them.
//!
//! * In a comment anywhere in the SQL, for that query: `/* switchyard: primary */`,
//!   `/* switchyard: replica */`, or `/* switchyard: default */` (ignore the session's hint).
//! * For the rest of the session: `SET switchyard.route = 'primary'` (or `'replica'`, or
//!   `'default'` to clear). PostgreSQL accepts the custom setting, so the statement also runs.
//! * The same at connect time, as a startup option: `options='-c switchyard.route=primary'`.

/// Where a client asked a query to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hint {
    /// No hint (or `default`): the policies decide alone.
    #[default]
    None,
    Primary,
    Replica,
}

/// The setting clients name, in `SET` and in startup options.
const SETTING: &str = "switchyard.route";

fn parse_target(word: &str) -> Option<Hint> {
    let word = word.trim().trim_matches(|c| c == '\'' || c == '"');
    [
        ("primary", Hint::Primary),
        ("replica", Hint::Replica),
        ("default", Hint::None),
    ]
    .into_iter()
    .find(|(name, _)| word.eq_ignore_ascii_case(name))
    .map(|(_, hint)| hint)
}

/// The hint of a `/* switchyard: ... */` comment in `sql` (the first comment only).
/// `Some(Hint::None)` is an explicit `default`, which overrides the session's hint.
pub fn comment_hint(sql: &str) -> Option<Hint> {
    let start = sql.find("/*")?;
    let rest = &sql[start + 2..];
    let end = rest.find("*/")?;
    let target = rest[..end].trim().strip_prefix("switchyard:")?;
    parse_target(target)
}

/// The target of a `SET [SESSION] switchyard.route = ...` (or `TO ...`) statement.
pub fn session_hint(sql: &str) -> Option<Hint> {
    let s = sql.trim().trim_end_matches(';').trim();
    if !s.get(..3)?.eq_ignore_ascii_case("set") {
        return None;
    }
    let s = s[3..].trim_start();
    let s = match s.get(..8) {
        Some(word) if word.eq_ignore_ascii_case("session ") => s[8..].trim_start(),
        _ => s,
    };
    if !s.get(..SETTING.len())?.eq_ignore_ascii_case(SETTING) {
        return None;
    }
    let s = s[SETTING.len()..].trim_start();
    let value = s.strip_prefix('=').or_else(|| {
        s.get(..2)
            .filter(|k| k.eq_ignore_ascii_case("to"))
            .map(|_| &s[2..])
    })?;
    parse_target(value)
}

/// The session hint given at connect time (`options=-c switchyard.route=replica`), from the
/// startup parameters the proxy did not track itself.
pub fn startup_hint(options: &crate::server::ParamList) -> Hint {
    options
        .get(SETTING)
        .and_then(parse_target)
        .unwrap_or_default()
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
            comment_hint("SELECT 1 /*switchyard:REPLICA*/"),
            Some(Hint::Replica)
        );
        assert_eq!(
            comment_hint("SELECT 1 /* switchyard: default */"),
            Some(Hint::None)
        );
        assert_eq!(comment_hint("/* other */ SELECT 1"), None);
        assert_eq!(comment_hint("/* switchyard: elsewhere */ SELECT 1"), None);
        assert_eq!(comment_hint("/* switchyard: primary"), None);
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
            Some(Hint::None)
        );
        assert_eq!(session_hint("SET search_path = a"), None);
        assert_eq!(session_hint("SET switchyard.routes = primary"), None);
        assert_eq!(session_hint("SET"), None);
        assert_eq!(session_hint("SÉT x"), None);
    }

    #[test]
    fn startup_hints() {
        let mut options = crate::server::ParamList::new();
        assert_eq!(startup_hint(&options), Hint::None);
        options.set("Switchyard.Route", "replica");
        assert_eq!(startup_hint(&options), Hint::Replica);
        options.set("switchyard.route", "nowhere");
        assert_eq!(startup_hint(&options), Hint::None);
    }
}
