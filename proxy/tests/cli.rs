//! The `switchyard` command line: `check` reports config errors by file and key.

use std::process::Command;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE"),
    )
}

const GOOD: &str = r#"
[general]
listen_addr = "127.0.0.1:6432"
[pools.app]
pool_mode = "transaction"
servers = [{ host = "127.0.0.1", port = 5432, role = "primary" }, { host = "127.0.0.1", port = 5433, role = "replica" }]
[pools.app.users.alice]
password = "secret"
"#;

#[test]
fn a_valid_config_passes() {
    let (ok, stdout, stderr) = check(GOOD);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn errors_name_the_file_and_the_key() {
    let (ok, _, stderr) = check(&GOOD.replace("pool_mode", "pool_mod"));
    assert!(!ok);
    assert!(stderr.contains("FILE: pools.app"), "{stderr}");
    assert!(stderr.contains("pool_mod"), "{stderr}");

    let (ok, _, stderr) = check(&GOOD.replace("\"transaction\"", "\"statements\""));
    assert!(!ok);
    assert!(stderr.contains("pools.app.pool_mode"), "{stderr}");

    let (ok, _, stderr) = check(&GOOD.replace("127.0.0.1:6432", "nowhere"));
    assert!(!ok);
    assert!(stderr.contains("general.listen_addr"), "{stderr}");
}

#[test]
fn a_missing_file_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", "/nonexistent/switchyard.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/switchyard.toml"));
}
