//! A small ordered list of `name = value` session parameters.
//!
//! Sessions carry a handful of these, so a `Vec` searched linearly beats a map in both speed and
//! memory. Names compare case-insensitively, as PostgreSQL's GUC names do.

/// Parameters such as the `ParameterStatus` set of a server or the settings a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamList(Vec<(String, String)>);

impl ParamList {
    /// An empty list.
    pub const fn new() -> Self {
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

/// Values of the [`TRACKED`] parameters, compared on every checkout.
///
/// Kept as one buffer (`value\0` six times: PostgreSQL values never contain a NUL), so that the
/// comparison at checkout is one `memcmp` of a few dozen bytes rather than six, and a session
/// holds one allocation for them rather than six.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedParams(Vec<u8>);

impl Default for TrackedParams {
    fn default() -> Self {
        TrackedParams(vec![0; TRACKED.len()])
    }
}

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
                t.set_at(i, v);
            }
        }
        t
    }

    /// The index of `application_name` in [`TRACKED`] (routing reads it for every query).
    pub const APPLICATION_NAME: usize = 0;

    /// Where value `i` lies in the buffer.
    fn span(&self, i: usize) -> std::ops::Range<usize> {
        let nul = |from: usize| memchr::memchr(0, &self.0[from..]).unwrap_or(0);
        let mut start = 0;
        for _ in 0..i {
            start += nul(start) + 1;
        }
        start..start + nul(start)
    }

    /// The value of [`TRACKED`]`[i]` (empty until the server reports it).
    pub fn get(&self, i: usize) -> &str {
        let value = &self.0[self.span(i)];
        debug_assert!(std::str::from_utf8(value).is_ok());
        // SAFETY: the buffer is private, and only `set_at` writes it: whole `&str` values
        // (cut at a NUL, which is ASCII) between NUL separators, so every span is valid
        // UTF-8. Routing reads `application_name` for every query, and validating it again
        // measured about 70 instructions per query.
        unsafe { std::str::from_utf8_unchecked(value) }
    }

    /// Sets the value of [`TRACKED`]`[i]`; a value with a NUL (which no server reports) is
    /// cut there.
    pub fn set_at(&mut self, i: usize, value: &str) {
        let value = value.split('\0').next().unwrap_or_default();
        let span = self.span(i);
        if &self.0[span.clone()] != value.as_bytes() {
            self.0.splice(span, value.bytes());
        }
    }

    /// Records a reported value if `name` is tracked.
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(i) = Self::index(name) {
            self.set_at(i, value);
        }
    }
}

#[cfg(test)]
mod tracked_tests {
    use super::*;

    #[test]
    fn values_are_kept_apart() {
        let mut t = TrackedParams::default();
        assert_eq!(t.get(0), "");
        t.set("TimeZone", "Europe/Paris");
        t.set("application_name", "psql");
        t.set("standard_conforming_strings", "on");
        assert_eq!(t.get(4), "Europe/Paris");
        assert_eq!(t.get(0), "psql");
        assert_eq!(t.get(5), "on");
        t.set("application_name", "");
        t.set("timezone", "UTC");
        assert_eq!(t.get(0), "");
        assert_eq!(t.get(4), "UTC");
        assert_eq!(t.get(5), "on");
        t.set("not_tracked", "x");
        t.set_at(1, "a\0b");
        assert_eq!(t.get(1), "a");
    }

    #[test]
    fn application_name_index() {
        assert_eq!(TRACKED[TrackedParams::APPLICATION_NAME], "application_name");
    }

    #[test]
    fn equal_values_compare_equal() {
        let mut a = TrackedParams::default();
        let mut b = TrackedParams::default();
        a.set("DateStyle", "ISO, MDY");
        a.set("IntervalStyle", "postgres");
        b.set("IntervalStyle", "postgres");
        assert_ne!(a, b);
        b.set("datestyle", "ISO, MDY");
        assert_eq!(a, b);
        // The boundary between values counts: ("ab", "") differs from ("a", "b").
        let (mut c, mut d) = (TrackedParams::default(), TrackedParams::default());
        c.set_at(0, "ab");
        d.set_at(0, "a");
        d.set_at(1, "b");
        assert_ne!(c, d);
    }
}
