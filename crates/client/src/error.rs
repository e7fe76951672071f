//! The client's errors, and which server close codes end a session.

use std::fmt;
use std::io;

use tether_proto::pb::CloseCode;
use tether_proto::DecodeError;

/// Why a client ended. Every variant is final: the [`Client`](crate::Client)
/// yields it once from `next_event` (or returns it from `connect`) and then
/// stops.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The login is malformed (bad character name, empty ticket). Fix the
    /// config.
    InvalidLogin(&'static str),
    /// The server closed the session with a code that a retry cannot fix:
    /// bad credentials, `RESUME_REFUSED` (the session is gone: log in again
    /// with a new client), `SESSION_TAKEN_OVER` (another client of this
    /// account won), a protocol violation, a ban.
    Closed { code: CloseCode, message: String },
    /// The reconnect policy's attempts were used up without getting a
    /// session (back). `last` says what the last attempt ran into. Try again
    /// later with a new client.
    GaveUp { attempts: u32, last: String },
    /// The server sent bytes that are not a valid frame. A bug on one side:
    /// report it.
    Protocol(DecodeError),
}

impl ClientError {
    /// The close code, for [`ClientError::Closed`].
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ClientError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidLogin(why) => write!(f, "invalid login: {why}"),
            ClientError::Closed { code, message } => {
                write!(f, "server closed the session: {}", code.as_str_name())?;
                if !message.is_empty() {
                    write!(f, " ({message})")?;
                }
                Ok(())
            }
            ClientError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
            ClientError::Protocol(e) => write!(f, "server broke the protocol: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Client::send`](crate::Client::send) refused a command. The command
/// was not numbered and nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// Too many inputs wait for the server's acknowledgement, or too many
    /// bytes wait for the socket. Keep awaiting `next_event` (acks arrive,
    /// the socket drains) and try again; dropping the command is also fine.
    Backlog,
    /// The client has ended (logged out or failed) or is logging out.
    Ended,
    /// A typed MMO [`Command`](crate::Command) on a client made for another
    /// game ([`ClientConfig::raw_frames`](crate::ClientConfig::raw_frames)):
    /// that game would read it in its own schema. Use
    /// [`Client::send_raw`](crate::Client::send_raw).
    OtherGame,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Backlog => f.write_str("send backlog full"),
            SendError::Ended => f.write_str("client has ended"),
            SendError::OtherGame => f.write_str("an MMO command on a client of another game"),
        }
    }
}

impl std::error::Error for SendError {}

/// What a `Close` from the server means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseAction {
    /// The session is over; end with [`ClientError::Closed`].
    End,
    /// The session (or the chance to log in) is still there: reconnect with
    /// backoff, waiting at least the server's `retry_after_ms`.
    Retry,
    /// Our own logout completed.
    LoggedOut,
}

/// Sorts close codes. A code this build does not know (a newer server) is
/// treated as retryable: the session may well still exist, and the retry is
/// bounded by the reconnect policy anyway.
pub(crate) fn close_action(code: i32) -> (CloseCode, CloseAction) {
    let Ok(code) = CloseCode::try_from(code) else {
        return (CloseCode::Unspecified, CloseAction::Retry);
    };
    let action = match code {
        CloseCode::Logout => CloseAction::LoggedOut,
        CloseCode::ProtocolError
        | CloseCode::FrameTooLarge
        | CloseCode::UnsupportedVersion
        | CloseCode::AuthFailed
        | CloseCode::TicketExpired
        | CloseCode::ResumeRefused
        | CloseCode::SessionTakenOver
        | CloseCode::AlreadyLoggedIn
        | CloseCode::Banned
        | CloseCode::Kicked
        | CloseCode::InputSeqGap => CloseAction::End,
        CloseCode::Unspecified
        | CloseCode::HandshakeTimeout
        | CloseCode::HeartbeatTimeout
        | CloseCode::SlowConsumer
        | CloseCode::RateLimited
        | CloseCode::ServerBusy
        | CloseCode::ServerShutdown
        | CloseCode::StorageUnavailable
        | CloseCode::Redirect => CloseAction::Retry,
    };
    (code, action)
}

/// An I/O error as text, for [`ClientError::GaveUp`].
pub(crate) fn describe_io(e: &io::Error) -> String {
    format!("{}: {e}", e.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_sort() {
        assert_eq!(
            close_action(CloseCode::ResumeRefused as i32).1,
            CloseAction::End
        );
        assert_eq!(
            close_action(CloseCode::ServerBusy as i32).1,
            CloseAction::Retry
        );
        assert_eq!(
            close_action(CloseCode::Logout as i32).1,
            CloseAction::LoggedOut
        );
        assert_eq!(
            close_action(9999),
            (CloseCode::Unspecified, CloseAction::Retry)
        );
    }

    #[test]
    fn errors_read_well() {
        let e = ClientError::Closed {
            code: CloseCode::ResumeRefused,
            message: "unknown session".into(),
        };
        assert_eq!(
            e.to_string(),
            "server closed the session: CLOSE_CODE_RESUME_REFUSED (unknown session)"
        );
    }
}
