//! Which keys differ between two versions of a config file, compared as TOML trees, so that a
//! reload can name each change it does not apply.

use toml::Value;

/// The paths of the keys whose values differ between `old` and `new` (added and removed keys
/// included), each as its segments: `["pools", "app", "servers[1]", "weight"]`. A list whose
/// length changed is one path; lists of the same length are compared item by item.
pub fn changed_keys(old: &Value, new: &Value) -> Vec<Vec<String>> {
    let mut changed = Vec::new();
    walk(old, new, &mut Vec::new(), &mut changed);
    changed
}

/// A path as a key is written in the file and in errors: `pools.app.servers[1].weight`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for segment in path {
        if !s.is_empty() && !segment.starts_with('[') {
            s.push('.');
        }
        s.push_str(segment);
    }
    s
}

fn walk(old: &Value, new: &Value, path: &mut Vec<String>, changed: &mut Vec<Vec<String>>) {
    match (old, new) {
        (Value::Table(a), Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                path.push(key.clone());
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(x, y, path, changed),
                    _ => changed.push(path.clone()),
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                path.push(format!("[{i}]"));
                walk(x, y, path, changed);
                path.pop();
            }
        }
        (a, b) if a == b => {}
        _ => changed.push(path.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(old: &str, new: &str) -> Vec<String> {
        let (old, new): (Value, Value) =
            (toml::from_str(old).unwrap(), toml::from_str(new).unwrap());
        changed_keys(&old, &new)
            .iter()
            .map(|p| display(p))
            .collect()
    }

    #[test]
    fn names_each_changed_added_and_removed_key() {
        let old = "[general]\nquery_timeout_ms = 0\n[pools.app]\nservers = [{ host = \"a\", port = 1 }, { host = \"b\", port = 2, weight = 1 }]\npool_size = 5\n";
        assert!(keys(old, old).is_empty());
        let new = "[general]\nquery_timeout_ms = 100\n[pools.app]\nservers = [{ host = \"a\", port = 1 }, { host = \"b\", port = 2, weight = 3 }]\nmin_pool_size = 1\n";
        assert_eq!(
            keys(old, new),
            [
                "general.query_timeout_ms",
                "pools.app.min_pool_size",
                "pools.app.pool_size",
                "pools.app.servers[1].weight",
            ]
        );
        let fewer = "[general]\nquery_timeout_ms = 0\n[pools.app]\nservers = [{ host = \"a\", port = 1 }]\npool_size = 5\n";
        assert_eq!(keys(old, fewer), ["pools.app.servers"]);
    }
}
