//! Reading the admin console's answers in tests: `SHOW` rows as (column, value) pairs.

use tokio_postgres::{Client, SimpleQueryMessage};

/// A console row: each column's name and its value as text.
pub type Row = Vec<(String, String)>;

/// The rows of a console command.
pub async fn show(c: &Client, command: &str) -> Vec<Row> {
    c.simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// One column's value of a row.
pub fn get<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    row.iter()
        .find(|(c, _)| c == column)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"))
}

/// The rows of `db` in a `SHOW` answer.
pub fn of<'a>(rows: &'a [Row], db: &str) -> Vec<&'a Row> {
    rows.iter().filter(|r| get(r, "database") == db).collect()
}
