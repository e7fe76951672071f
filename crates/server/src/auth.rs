//! Login credentials: `dev` names and HMAC-SHA256 tickets.
//!
//! A ticket is `NAME.EXPIRY.SIG` where EXPIRY is a Unix time in seconds and
//! SIG is the lowercase hex HMAC-SHA256 of `NAME.EXPIRY` under the server's
//! ticket secret. An account service mints them (or `tether ticket NAME`);
//! the game server only checks them, so it never sees passwords.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tether_proto::pb::{hello::Auth, CloseCode};

use crate::config::AuthMode;

type HmacSha256 = Hmac<Sha256>;

/// Longest character name; also the longest account name.
pub const MAX_NAME_LEN: usize = 24;

/// Why a Hello was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Malformed or wrongly signed credentials, a bad name, or an auth
    /// method this server does not accept.
    Invalid(&'static str),
    /// A well-signed ticket whose expiry has passed.
    Expired,
}

impl AuthError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Invalid(_) => CloseCode::AuthFailed,
            AuthError::Expired => CloseCode::TicketExpired,
        }
    }
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Invalid(m) => m,
            AuthError::Expired => "ticket expired",
        }
    }
}

/// Character names: 1-24 of `[A-Za-z0-9_]`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a Hello's credentials and returns the account (character) name.
pub fn authenticate(
    mode: AuthMode,
    secret: Option<&str>,
    auth: Option<&Auth>,
    now_unix: u64,
) -> Result<String, AuthError> {
    match (mode, auth) {
        (AuthMode::Dev, Some(Auth::DevName(name))) => {
            if valid_name(name) {
                Ok(name.clone())
            } else {
                Err(AuthError::Invalid(
                    "name must be 1-24 characters of A-Z a-z 0-9 _",
                ))
            }
        }
        (_, Some(Auth::Ticket(ticket))) => {
            verify_ticket(secret.unwrap_or_default().as_bytes(), ticket, now_unix)
        }
        (AuthMode::Ticket, Some(Auth::DevName(_))) => {
            Err(AuthError::Invalid("this server accepts tickets only"))
        }
        (_, None) => Err(AuthError::Invalid("no credentials")),
    }
}

fn signature(secret: &[u8], signed: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed.as_bytes());
    mac
}

/// Mints a ticket for `name` valid until `expiry_unix`.
pub fn mint_ticket(secret: &[u8], name: &str, expiry_unix: u64) -> String {
    let signed = format!("{name}.{expiry_unix}");
    let sig = signature(secret, &signed).finalize().into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("{signed}.{hex}")
}

/// Checks a ticket's signature (in constant time) and expiry.
pub fn verify_ticket(secret: &[u8], ticket: &str, now_unix: u64) -> Result<String, AuthError> {
    const MALFORMED: AuthError = AuthError::Invalid("malformed ticket");
    if secret.is_empty() {
        return Err(AuthError::Invalid("tickets are not enabled on this server"));
    }
    let mut parts = ticket.rsplitn(2, '.');
    let (Some(sig_hex), Some(signed)) = (parts.next(), parts.next()) else {
        return Err(MALFORMED);
    };
    let Some((name, expiry)) = signed.split_once('.') else {
        return Err(MALFORMED);
    };
    if sig_hex.len() != 64 || !valid_name(name) {
        return Err(MALFORMED);
    }
    let expiry: u64 = expiry.parse().map_err(|_| MALFORMED)?;
    let mut sig = [0u8; 32];
    for (i, byte) in sig.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&sig_hex[2 * i..2 * i + 2], 16).map_err(|_| MALFORMED)?;
    }
    signature(secret, signed)
        .verify_slice(&sig)
        .map_err(|_| AuthError::Invalid("bad ticket signature"))?;
    if now_unix >= expiry {
        return Err(AuthError::Expired);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trip_and_failures() {
        let t = mint_ticket(b"s3cret", "Alice", 1000);
        assert_eq!(verify_ticket(b"s3cret", &t, 999), Ok("Alice".into()));
        assert_eq!(verify_ticket(b"s3cret", &t, 1000), Err(AuthError::Expired));
        assert!(matches!(
            verify_ticket(b"other", &t, 999),
            Err(AuthError::Invalid(_))
        ));
        let forged = t.replacen("Alice", "Alicf", 1);
        assert!(matches!(
            verify_ticket(b"s3cret", &forged, 999),
            Err(AuthError::Invalid(_))
        ));
        let later = t.replacen("1000", "9000", 1);
        assert!(matches!(
            verify_ticket(b"s3cret", &later, 999),
            Err(AuthError::Invalid(_))
        ));
        for junk in ["", ".", "a.b.c", "Alice.1.zz", "Al ice.1.00"] {
            assert!(verify_ticket(b"s3cret", junk, 0).is_err(), "{junk}");
        }
    }

    #[test]
    fn dev_names() {
        assert!(valid_name("bot_17"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(25)));
        assert!(matches!(
            authenticate(
                AuthMode::Ticket,
                Some("k"),
                Some(&Auth::DevName("a".into())),
                0
            ),
            Err(AuthError::Invalid(_))
        ));
    }
}
