//! The md5 password exchange: `"md5" || md5hex(md5hex(password || user) || salt)`.

use md5::{Digest, Md5};

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `md5hex(password || user)`, the form PostgreSQL stores (without the `md5` prefix).
pub fn stored_hash(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    hex(&h.finalize())
}

/// What a client must answer to `salt`, given the stored hash (without prefix).
pub fn expected_response(stored_hex: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(stored_hex.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol_client_side() {
        let salt = [1, 2, 3, 4];
        let expected = expected_response(&stored_hash("bob", "secret"), salt);
        let client = postgres_protocol::authentication::md5_hash(b"bob", b"secret", salt);
        assert_eq!(expected, client);
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
