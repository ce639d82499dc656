//! A console answer as a result set: columns with their types, rows of text.

use crate::protocol::backend;
use bytes::BytesMut;

/// PostgreSQL's type OIDs for the column types the console uses.
const INT8: u32 = 20;
const TEXT: u32 = 25;
const BOOL: u32 = 16;

/// A column's type, as a client sees it in the `RowDescription`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
}

impl Kind {
    fn oid(self) -> u32 {
        match self {
            Kind::Text => TEXT,
            Kind::Int => INT8,
            Kind::Bool => BOOL,
        }
    }
}

/// One value in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Cell::Text(s)
    }
}

impl From<usize> for Cell {
    fn from(n: usize) -> Self {
        Cell::Int(n as i64)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Cell::Int(n as i64)
    }
}

impl From<u32> for Cell {
    fn from(n: u32) -> Self {
        Cell::Int(i64::from(n))
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Self {
        Cell::Bool(b)
    }
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
            Cell::Bool(true) => "t".into(),
            Cell::Bool(false) => "f".into(),
        }
    }
}

/// A result set: what a `SHOW` command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<(&'static str, Kind)>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Kind)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Appends `RowDescription`, a `DataRow` per row and `CommandComplete` (`tag`).
    pub fn encode(&self, out: &mut BytesMut, tag: &str) {
        let columns: Vec<(&str, u32)> = self.columns.iter().map(|(n, k)| (*n, k.oid())).collect();
        backend::row_description(out, &columns);
        for row in &self.rows {
            let values: Vec<String> = row.iter().map(Cell::text).collect();
            backend::data_row(out, values.iter().map(|v| Some(v.as_bytes())));
        }
        backend::command_complete(out, tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_encodes_as_a_result_set() {
        let mut t = Table::new(&[("name", Kind::Text), ("n", Kind::Int), ("ok", Kind::Bool)]);
        t.push(vec!["a".into(), 7usize.into(), true.into()]);
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        // RowDescription: 3 columns, the second of type int8.
        assert_eq!(out[0], b'T');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(&out[5..7], &3i16.to_be_bytes());
        let desc = &out[7..1 + len];
        let after_name = desc.iter().position(|&b| b == 0).unwrap() + 1;
        assert_eq!(&desc[after_name + 6..after_name + 10], &TEXT.to_be_bytes());
        // DataRow: "a", "7", "t".
        let row = &out[1 + len..];
        assert_eq!(row[0], b'D');
        assert_eq!(&row[5..7], &3i16.to_be_bytes());
        assert_eq!(&row[7..11], &1i32.to_be_bytes());
        assert_eq!(row[11], b'a');
        assert_eq!(&row[12..16], &1i32.to_be_bytes());
        assert_eq!(row[16], b'7');
        assert_eq!(row[21], b't');
        // CommandComplete "SHOW".
        assert!(out.ends_with(b"C\0\0\0\x09SHOW\0"));
    }
}
