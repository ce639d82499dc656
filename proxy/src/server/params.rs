//! A small ordered list of `name = value` session parameters.
//!
//! Sessions carry a handful of these, so a `Vec` searched linearly beats a map in both speed and
//! memory. Names compare case-insensitively, as PostgreSQL's GUC names do.

/// Parameters such as the `ParameterStatus` set of a server or the settings a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamList(Vec<(String, String)>);

impl ParamList {
    /// An empty list.
    pub fn new() -> Self {
        ParamList(Vec::new())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`; allocates only when the value changes.
    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) if v == value => {}
            Some((_, v)) => *v = value.to_owned(),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// All entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads a `ParameterStatus` body: `name\0value\0`.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = crate::protocol::frame::cstr(body)?;
    let (value, _) = crate::protocol::frame::cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_remove_ignore_case() {
        let mut p = ParamList::new();
        p.set("DateStyle", "ISO");
        assert_eq!(p.get("datestyle"), Some("ISO"));
        p.set("DATESTYLE", "SQL");
        assert_eq!(p.iter().count(), 1);
        assert_eq!(p.get("DateStyle"), Some("SQL"));
        p.remove("datestyle");
        assert!(p.is_empty());
    }

    #[test]
    fn parameter_status_body() {
        assert_eq!(
            parse_parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone", "UTC"))
        );
        assert_eq!(parse_parameter_status(b"TimeZone\0UTC"), None);
    }
}

/// The parameters PostgreSQL reports with `ParameterStatus` that a pooled session must carry
/// from one server connection to the next (the same set PgBouncer tracks, plus IntervalStyle).
pub const TRACKED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// Values of the [`TRACKED`] parameters, compared on every checkout: six string comparisons,
/// no lookup by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackedParams(pub [String; 6]);

impl TrackedParams {
    /// The position of `name` in [`TRACKED`].
    pub fn index(name: &str) -> Option<usize> {
        TRACKED.iter().position(|t| t.eq_ignore_ascii_case(name))
    }

    /// Takes the tracked values out of a full parameter list.
    pub fn from_list(list: &ParamList) -> Self {
        let mut t = TrackedParams::default();
        for (i, name) in TRACKED.iter().enumerate() {
            if let Some(v) = list.get(name) {
                t.0[i] = v.to_owned();
            }
        }
        t
    }

    /// Records a reported value if `name` is tracked.
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(i) = Self::index(name) {
            if self.0[i] != value {
                self.0[i] = value.to_owned();
            }
        }
    }
}
