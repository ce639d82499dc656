//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it:
//! the proxy holds a verifier (salt, iterations, StoredKey, ServerKey), never needs the password,
//! and checks the client's proof.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Iterations used when the proxy derives a verifier from a plain password (PostgreSQL's default).
const DEFAULT_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    m.update(salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

impl ScramSecret {
    /// Derives a verifier from a plain password with a fresh random salt.
    pub fn from_password(password: &str) -> Self {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::derive(password, salt, DEFAULT_ITERATIONS)
    }

    fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = hi(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
            salt,
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            "not a valid SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)".to_string()
        };
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let key = |s: &str| -> Result<[u8; 32], String> {
            B64.decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(bad)
        };
        Ok(ScramSecret {
            iterations: iter.parse().map_err(|_| bad())?,
            salt: B64.decode(salt).map_err(|_| bad())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The client's messages do not follow the protocol.
    Protocol(&'static str),
    /// The proof does not match: a wrong password.
    WrongPassword,
}

/// One SCRAM exchange in progress, between the client's first and final messages.
pub struct ScramExchange<'a> {
    secret: &'a ScramSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl<'a> ScramExchange<'a> {
    /// Reads the client-first-message (`n,,n=user,r=nonce`) and prepares the server-first-message.
    pub fn start(secret: &'a ScramSecret, client_first: &[u8]) -> Result<Self, ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let bare = if let Some(b) = text.strip_prefix("n,,") {
            b
        } else if let Some(b) = text.strip_prefix("y,,") {
            b
        } else if text.starts_with("p=") {
            return Err(ScramError::Protocol("channel binding is not supported"));
        } else {
            return Err(ScramError::Protocol("malformed GS2 header"));
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Protocol("missing client nonce"))?;
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok(ScramExchange {
            secret,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        })
    }

    /// The server-first-message to send in `AuthenticationSASLContinue`.
    pub fn server_first(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// Checks the client-final-message; on success returns the server-final-message.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("missing proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if !matches!(channel, Some("biws") | Some("eSws")) {
            return Err(ScramError::Protocol("unexpected channel binding data"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Protocol("malformed proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !crate::auth::md5::constant_time_eq(&stored, &self.secret.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs the real client implementation from `postgres-protocol` against our server side.
    fn exchange(secret: &ScramSecret, password: &str) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let ex = ScramExchange::start(secret, client.message())?;
        client.update(ex.server_first()).unwrap();
        let server_final = ex.finish(client.message())?;
        client
            .finish(&server_final)
            .map_err(|_| ScramError::Protocol("client rejected server"))
    }

    #[test]
    fn right_password_passes_both_ways() {
        let secret = ScramSecret::from_password("s3cret");
        exchange(&secret, "s3cret").unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        let secret = ScramSecret::from_password("s3cret");
        assert_eq!(exchange(&secret, "nope"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn verifier_text_round_trips_with_postgres_format() {
        // The format PostgreSQL stores; generated here by postgres-protocol.
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let secret = ScramSecret::parse(&text).unwrap();
        exchange(&secret, "pw").unwrap();
        assert!(exchange(&secret, "px").is_err());
    }

    #[test]
    fn channel_binding_requests_are_refused() {
        let secret = ScramSecret::from_password("x");
        assert!(matches!(
            ScramExchange::start(&secret, b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::Protocol(_))
        ));
    }
}
