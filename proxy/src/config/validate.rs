//! Rules that serde cannot express: one primary per pool, passwords that fit the auth method,
//! sizes that make sense. Each failure names its key.

use super::{Config, Role};

type Failure = (String, String);

/// Checks a parsed config; on failure returns the key and what is wrong with it.
pub fn check(config: &Config) -> Result<(), Failure> {
    let g = &config.general;
    if g.listen_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err((
            "general.listen_addr".into(),
            format!(
                "\"{}\" is not an address like 127.0.0.1:6432",
                g.listen_addr
            ),
        ));
    }
    if let Some(addr) = &g.metrics_addr {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "general.metrics_addr".into(),
                format!("\"{addr}\" is not an address like 127.0.0.1:9127"),
            ));
        }
        if *addr == g.listen_addr {
            return Err((
                "general.metrics_addr".into(),
                "is general.listen_addr: the metrics endpoint needs a port of its own".into(),
            ));
        }
    }
    if let Some(dir) = &g.unix_socket_dir {
        socket_dir("general.unix_socket_dir".into(), dir, 65535)?;
    }
    if g.worker_threads == Some(0) {
        return Err(("general.worker_threads".into(), "must be at least 1".into()));
    }
    if g.max_message_size < 1024 || g.max_message_size > (1 << 30) {
        return Err((
            "general.max_message_size".into(),
            "must be between 1024 and 1073741824 bytes".into(),
        ));
    }
    for (key, value, max) in [
        ("tcp_keepalive_idle_s", g.tcp_keepalive_idle_s, 32_767),
        (
            "tcp_keepalive_interval_s",
            g.tcp_keepalive_interval_s,
            32_767,
        ),
        (
            "tcp_keepalive_count",
            g.tcp_keepalive_count.map(u64::from),
            127,
        ),
    ] {
        let Some(value) = value else { continue };
        let key = format!("general.{key}");
        if !g.tcp_keepalive {
            return Err((key, "is set, but general.tcp_keepalive is false".into()));
        }
        if value == 0 || value > max {
            return Err((key, format!("must be between 1 and {max} (Linux's limit)")));
        }
    }
    if g.tcp_user_timeout_ms > i32::MAX as u64 {
        return Err((
            "general.tcp_user_timeout_ms".into(),
            format!("must be at most {} (Linux's limit)", i32::MAX),
        ));
    }
    if g.max_client_conn == 0 {
        return Err((
            "general.max_client_conn".into(),
            "must be at least 1".into(),
        ));
    }
    if config.pools.is_empty() {
        return Err((
            "pools".into(),
            "no pool is configured: add a [pools.<database>] table".into(),
        ));
    }
    for (db, pool) in &config.pools {
        let key = |k: &str| format!("pools.{db}.{k}");
        let primaries = pool
            .servers
            .iter()
            .filter(|s| s.role == Role::Primary)
            .count();
        if primaries != 1 {
            return Err((
                key("servers"),
                format!("needs exactly one server with role = \"primary\", found {primaries}"),
            ));
        }
        for (i, s) in pool.servers.iter().enumerate() {
            if s.host.starts_with('/') {
                socket_dir(key(&format!("servers[{i}].host")), &s.host, s.port)?;
            }
        }
        if pool.servers.len() > 64 {
            return Err((key("servers"), "at most 64 servers per pool".into()));
        }
        if pool.pool_size == 0 {
            return Err((key("pool_size"), "must be at least 1".into()));
        }
        if pool.users.is_empty() {
            return Err((
                key("users"),
                "no user is configured: add a [pools.<db>.users.<name>] table".into(),
            ));
        }
        for (user, u) in &pool.users {
            let key = |k: &str| format!("pools.{db}.users.{user}.{k}");
            u.client_auth().map_err(|(k, m)| (key(k), m))?;
            let size = u.pool_size.unwrap_or(pool.pool_size);
            if size == 0 {
                return Err((key("pool_size"), "must be at least 1".into()));
            }
            if u.min_pool_size.unwrap_or(pool.min_pool_size) > size {
                return Err((
                    key("min_pool_size"),
                    format!("cannot exceed pool_size ({size})"),
                ));
            }
        }
    }
    let mut logins: std::collections::BTreeMap<&str, (u32, String)> = Default::default();
    for (db, pool) in &config.pools {
        for (user, u) in &pool.users {
            let Some(max) = u.max_user_connections else {
                continue;
            };
            let login = u.login(user);
            let key = format!("pools.{db}.users.{user}.max_user_connections");
            match logins.get(login) {
                Some((other, other_key)) if *other != max => {
                    return Err((
                        key,
                        format!(
                            "is {max}, but {other_key} is {other}: the cap is per server login ({login}), across databases"
                        ),
                    ))
                }
                _ => {
                    logins.insert(login, (max, key));
                }
            }
        }
    }
    if let Some(admin) = &config.admin {
        if admin.database.is_empty() {
            return Err(("admin.database".into(), "must not be empty".into()));
        }
        if config.pools.contains_key(&admin.database) {
            return Err((
                "admin.database".into(),
                format!(
                    "\"{}\" is also a pool ([pools.{}]): the console needs a name of its own",
                    admin.database, admin.database
                ),
            ));
        }
        if admin.users.is_empty() {
            return Err((
                "admin.users".into(),
                "no user is configured: add an [admin.users.<name>] table".into(),
            ));
        }
        for (user, u) in &admin.users {
            u.client_auth()
                .map_err(|(k, m)| (format!("admin.users.{user}.{k}"), m))?;
        }
    }
    Ok(())
}

/// A Unix socket directory must be absolute, and its socket file's path must fit the 107
/// bytes the kernel allows (`sun_path`).
fn socket_dir(key: String, dir: &str, port: u16) -> Result<(), Failure> {
    if !dir.starts_with('/') {
        return Err((key, format!("\"{dir}\" is not an absolute directory path")));
    }
    let path = crate::socket::socket_path(dir, port);
    if path.as_os_str().len() > 107 {
        return Err((
            key,
            format!(
                "the socket path {} is longer than the 107 bytes a Unix socket path may have",
                path.display()
            ),
        ));
    }
    Ok(())
}
