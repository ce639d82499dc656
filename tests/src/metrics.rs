//! Reading the `/metrics` endpoint in tests: one HTTP request, and a sample's value.

use std::time::{Duration, Instant};

/// One HTTP/1.1 request to the metrics endpoint (retried while it is not listening yet):
/// the status line and headers, and the body.
pub fn http_get(port: u16, method: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "metrics endpoint: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_string(), body.to_string())
}

/// The value of the sample `name{labels}` (`name` alone when `labels` is empty) in an
/// exposition.
pub fn sample(body: &str, name: &str, labels: &str) -> f64 {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in:\n{body}"))
        .parse()
        .unwrap()
}
