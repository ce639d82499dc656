//! `switchyard.toml`: what an operator writes, checked before anything starts.
//!
//! Unknown keys are errors. Every error names the file and the key (`pools.app.users.alice.auth`),
//! so `switchyard check --config FILE` tells the operator exactly what to fix.

pub mod diff;
mod file;
mod validate;

pub use file::{
    AdminConfig, AdminUserConfig, Config, FallbackReads, General, PolicyConfig, PoolConfig,
    PoolMode, Role, ServerConfig, UserConfig,
};

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A config that cannot be used, with where the problem is.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        file: path.to_owned(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| invalid("(syntax)".into(), e.to_string().trim().replace('\n', " ")))?;
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        // toml's own message repeats the line; keep only its first sentence.
        let message = e.inner().message().trim().to_string();
        invalid(
            if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message,
        )
    })?;
    validate::check(&config).map_err(|(key, message)| invalid(key, message))?;
    let mut config = config;
    config.base_dir = path.parent().map(|p| p.to_owned()).unwrap_or_default();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    const MINIMAL: &str = r#"
        [pools.app]
        servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }]
        [pools.app.users.alice]
        password = "pw"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.general.listen_addr, "127.0.0.1:6432");
        assert_eq!(c.general.checkout_timeout_ms, 5000);
        let pool = &c.pools["app"];
        assert_eq!(pool.pool_mode, PoolMode::Transaction);
        assert_eq!(pool.reset_query, "DISCARD ALL");
        assert!(pool.track_session_state);
        assert_eq!(pool.users["alice"].pool_size, None);
    }

    #[test]
    fn pool_modes_are_named_as_in_pgbouncer() {
        for (name, mode, per_transaction) in [
            ("session", PoolMode::Session, false),
            ("transaction", PoolMode::Transaction, true),
            ("statement", PoolMode::Statement, true),
        ] {
            let text = MINIMAL.replace(
                "[pools.app]",
                &format!("[pools.app]\npool_mode = \"{name}\""),
            );
            let c = parse_str(&text).unwrap();
            assert_eq!(c.pools["app"].pool_mode, mode);
            assert_eq!(mode.per_transaction(), per_transaction);
        }
        let text = MINIMAL.replace("[pools.app]", "[pools.app]\npool_mode = \"statements\"");
        let e = parse_str(&text).unwrap_err();
        assert!(e.contains("pools.app.pool_mode"), "{e}");
    }

    #[test]
    fn tcp_user_timeout_is_the_systems_unless_set() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.general.liveness().user_timeout, None);
        let c = parse_str(&format!(
            "[general]\ntcp_user_timeout_ms = 30000\n{MINIMAL}"
        ))
        .unwrap();
        let l = c.general.liveness();
        assert_eq!(l.user_timeout, Some(std::time::Duration::from_secs(30)));
        assert!(l.keepalive.is_some(), "keepalive stays on beside it");
        let e = parse_str(&format!(
            "[general]\ntcp_user_timeout_ms = 4000000000\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(e.contains("general.tcp_user_timeout_ms"), "{e}");
    }

    #[test]
    fn keepalive_is_on_by_default_and_its_settings_are_checked() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(
            c.general.keepalive(),
            Some(crate::socket::Keepalive::default())
        );
        let c = parse_str(&format!(
            "[general]\ntcp_keepalive_idle_s = 60\ntcp_keepalive_count = 3\n{MINIMAL}"
        ))
        .unwrap();
        let k = c.general.keepalive().unwrap();
        assert_eq!(k.idle, Some(std::time::Duration::from_secs(60)));
        assert_eq!((k.interval, k.count), (None, Some(3)));
        let c = parse_str(&format!("[general]\ntcp_keepalive = false\n{MINIMAL}")).unwrap();
        assert_eq!(c.general.keepalive(), None);
        for (setting, key) in [
            ("tcp_keepalive_idle_s = 0", "general.tcp_keepalive_idle_s"),
            (
                "tcp_keepalive_interval_s = 40000",
                "general.tcp_keepalive_interval_s",
            ),
            ("tcp_keepalive_count = 200", "general.tcp_keepalive_count"),
            (
                "tcp_keepalive = false\ntcp_keepalive_idle_s = 10",
                "general.tcp_keepalive_idle_s",
            ),
        ] {
            let e = parse_str(&format!("[general]\n{setting}\n{MINIMAL}")).unwrap_err();
            assert!(e.contains(key), "{setting}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = parse_str(&format!("{MINIMAL}\n[general]\nlisten = \"x\"\n")).unwrap_err();
        assert!(e.contains("test.toml"), "{e}");
        assert!(e.contains("general"), "{e}");
        assert!(e.contains("listen"), "{e}");
        let e =
            parse_str(&MINIMAL.replace("password = \"pw\"", "password = \"pw\"\npool_sise = 3"))
                .unwrap_err();
        assert!(e.contains("pools.app.users.alice"), "{e}");
        assert!(e.contains("pool_sise"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = parse_str(&MINIMAL.replace("port = 5432", "port = \"x\"")).unwrap_err();
        assert!(e.contains("pools.app.servers[0].port"), "{e}");
    }

    #[test]
    fn a_pool_needs_exactly_one_primary() {
        let e = parse_str(&MINIMAL.replace("primary", "replica")).unwrap_err();
        assert!(e.contains("pools.app.servers"), "{e}");
        assert!(e.contains("primary"), "{e}");
    }

    #[test]
    fn auth_needs_a_fitting_password() {
        let e = parse_str(&MINIMAL.replace("password = \"pw\"", "auth = \"md5\"")).unwrap_err();
        assert!(e.contains("pools.app.users.alice.password"), "{e}");
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let e = parse_str(&MINIMAL.replace(
            "password = \"pw\"",
            &format!("password = \"{scram}\"\nauth = \"md5\""),
        ))
        .unwrap_err();
        assert!(e.contains("pools.app.users.alice.auth"), "{e}");
    }

    #[test]
    fn every_auth_method_name_parses() {
        for m in ["trust", "password", "md5", "scram-sha-256"] {
            let c = parse_str(&MINIMAL.replace(
                "password = \"pw\"",
                &format!("password = \"pw\"\nauth = \"{m}\""),
            ))
            .unwrap();
            assert_eq!(c.pools["app"].users["alice"].auth.unwrap().name(), m);
        }
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/switchyard.toml");
        load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn min_pool_size_cannot_exceed_pool_size() {
        let e = parse_str(&MINIMAL.replace(
            "password = \"pw\"",
            "password = \"pw\"\npool_size = 2\nmin_pool_size = 3",
        ))
        .unwrap_err();
        assert!(e.contains("pools.app.users.alice.min_pool_size"), "{e}");
    }

    #[test]
    fn max_user_connections_is_per_login_across_databases() {
        let two = format!(
            "[general]\nmax_user_connections = 7\n{MINIMAL}\n[pools.other]\nservers = [{{ host = \"127.0.0.1\", port = 5432, role = \"primary\" }}]\n[pools.other.users.bob]\nserver_user = \"alice\"\nMAX\n[pools.other.users.carol]\n"
        );
        let c = parse_str(&two.replace("MAX", "")).unwrap();
        assert_eq!(c.max_user_connections("alice"), 7, "the general default");
        let c = parse_str(&two.replace("MAX", "max_user_connections = 3")).unwrap();
        assert_eq!(c.max_user_connections("alice"), 3, "bob logs in as alice");
        assert_eq!(c.max_user_connections("carol"), 7);
        let e = parse_str(&two.replace("MAX", "max_user_connections = 3").replace(
            "password = \"pw\"",
            "password = \"pw\"\nmax_user_connections = 4",
        ))
        .unwrap_err();
        assert!(
            e.contains("pools.other.users.bob.max_user_connections")
                || e.contains("pools.app.users.alice.max_user_connections"),
            "{e}"
        );
        assert!(e.contains("per server login (alice)"), "{e}");
    }

    #[test]
    fn unix_socket_directories_must_be_absolute_and_short_enough() {
        let c = parse_str(&MINIMAL.replace("host = \"127.0.0.1\"", "host = \"/run/pg\"")).unwrap();
        assert_eq!(c.pools["app"].servers[0].host, "/run/pg");
        let e = parse_str(&format!("[general]\nunix_socket_dir = \"tmp\"\n{MINIMAL}")).unwrap_err();
        assert!(e.contains("general.unix_socket_dir"), "{e}");
        let long = format!("/{}", "d".repeat(120));
        let e = parse_str(&MINIMAL.replace("127.0.0.1", &long)).unwrap_err();
        assert!(e.contains("pools.app.servers[0].host"), "{e}");
        assert!(e.contains("107 bytes"), "{e}");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = parse_str("[general\n").unwrap_err();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn the_admin_console_is_checked_like_the_pools() {
        let ok = parse_str(&format!(
            "{MINIMAL}\n[admin.users.ops]\npassword = \"pw\"\n"
        ))
        .unwrap();
        let admin = ok.admin.expect("[admin]");
        assert_eq!(admin.database, "switchyard");
        assert!(ok.pools.contains_key("app"));
        for (extra, key) in [
            (
                "[admin]\ndatabase = \"app\"\n[admin.users.ops]\npassword = \"pw\"",
                "admin.database",
            ),
            (
                "[admin]\ndatabase = \"\"\n[admin.users.ops]\npassword = \"pw\"",
                "admin.database",
            ),
            ("[admin]\n", "admin.users"),
            ("[admin.users.ops]\n", "admin.users.ops.password"),
            (
                "[admin.users.ops]\nauth = \"md5\"",
                "admin.users.ops.password",
            ),
            (
                "[admin.users.ops]\npassword = \"pw\"\npool_size = 3",
                "admin.users.ops",
            ),
            (
                "[admin]\nport = 1\n[admin.users.ops]\npassword = \"pw\"",
                "admin",
            ),
        ] {
            let e = parse_str(&format!("{MINIMAL}\n{extra}\n")).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        // An explicit trust is allowed.
        let trust =
            parse_str(&format!("{MINIMAL}\n[admin.users.ops]\nauth = \"trust\"\n")).unwrap();
        assert!(trust.admin.is_some());
    }

    #[test]
    fn the_metrics_address_is_checked() {
        let c = parse_str(&format!(
            "[general]\nmetrics_addr = \"127.0.0.1:9127\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.general.metrics_addr.as_deref(), Some("127.0.0.1:9127"));
        for bad in ["\"localhost\"", "\"127.0.0.1:6432\""] {
            let e = parse_str(&format!("[general]\nmetrics_addr = {bad}\n{MINIMAL}")).unwrap_err();
            assert!(e.contains("general.metrics_addr"), "{e}");
        }
    }
}
