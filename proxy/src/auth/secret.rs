//! A configured client password in the form it is kept: plain text, an md5 hash, or a
//! SCRAM-SHA-256 verifier, as PostgreSQL stores them in `pg_authid`.

use crate::auth::scram::ScramSecret;
use serde::Deserialize;

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password asked (for loopback or trusted networks only).
    Trust,
    /// Cleartext password (only over trusted networks until TLS lands).
    Password,
    /// `md5(md5(password || user) || salt)`.
    Md5,
    /// SCRAM-SHA-256 (RFC 7677), without channel binding.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl AuthMethod {
    /// The name used in config and messages.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// A client password as configured, with what it can verify.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    /// The password itself: verifies every method.
    Plain {
        password: String,
        scram: ScramSecret,
    },
    /// `md5` followed by 32 hex digits of `md5(password || user)`: verifies md5 only.
    Md5Hash(String),
    /// `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`: verifies SCRAM only.
    Scram(ScramSecret),
}

impl ClientSecret {
    /// Reads a configured password string.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(hex) = text.strip_prefix("md5") {
            if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(ClientSecret::Md5Hash(hex.to_ascii_lowercase()));
            }
        }
        if text.starts_with("SCRAM-SHA-256$") {
            return ScramSecret::parse(text).map(ClientSecret::Scram);
        }
        Ok(ClientSecret::Plain {
            password: text.to_owned(),
            scram: ScramSecret::from_password(text),
        })
    }

    /// Whether this secret can verify a client with `method`.
    pub fn supports(&self, method: AuthMethod) -> bool {
        matches!(
            (self, method),
            (_, AuthMethod::Trust)
                | (ClientSecret::Plain { .. }, _)
                | (ClientSecret::Md5Hash(_), AuthMethod::Md5)
                | (ClientSecret::Scram(_), AuthMethod::ScramSha256)
        )
    }

    /// The plain password, when it was configured as such.
    pub fn plain(&self) -> Option<&str> {
        match self {
            ClientSecret::Plain { password, .. } => Some(password),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_recognised() {
        assert!(matches!(
            ClientSecret::parse("md5aabbccddeeff00112233445566778899").unwrap(),
            ClientSecret::Md5Hash(_)
        ));
        assert!(matches!(
            ClientSecret::parse("hunter2").unwrap(),
            ClientSecret::Plain { .. }
        ));
        // "md5" followed by something that is not a hash is just a password.
        assert!(matches!(
            ClientSecret::parse("md5short").unwrap(),
            ClientSecret::Plain { .. }
        ));
    }

    #[test]
    fn hashed_secrets_verify_only_their_method() {
        let md5 = ClientSecret::parse("md5aabbccddeeff00112233445566778899").unwrap();
        assert!(md5.supports(AuthMethod::Md5));
        assert!(!md5.supports(AuthMethod::ScramSha256));
        assert!(!md5.supports(AuthMethod::Password));
    }
}
