//! Which server may hold an account, when several share one database.
//!
//! In a cluster (`tether --cluster`), every server writes to the same
//! database, so an account must be played on one server at a time or two of
//! them would write its record over each other. The writer thread asks an
//! [`Ownership`] before it answers a load, and tells it when a session's
//! last record is durable, so that ownership changes hands only after the
//! data does:
//!
//! - a login's load is answered only once [`Ownership::acquire`] said yes;
//!   otherwise the load is answered [`StoreError::Elsewhere`] (the shard
//!   redirects the client) or [`StoreError::Unavailable`] (the cluster's
//!   coordination is away; the login is refused with a retry hint);
//! - a resume's load by session id is answered the same way, once the
//!   record says which account it is;
//! - [`crate::StoreHandle::release`] waits until every record and
//!   transaction of the account queued before it is written, then calls
//!   [`Ownership::release`].
//!
//! A single server has no `Ownership`: every load is answered at once.

use crate::StoreError;

/// Where a refused account is served instead (the cluster's server that
/// holds its session, or a less loaded one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The server's node id.
    pub node: String,
    /// host:port of its TCP game listener, as clients reach it.
    pub address: String,
    /// ws:// URL of its WebSocket listener; empty when it has none.
    pub ws_url: String,
}

/// The cluster's say over accounts, asked on the writer thread. Calls may
/// block on the network for a bounded time (the implementation's timeout):
/// the writer waits, the game does not.
pub trait Ownership: Send {
    /// Before a load of `account` is answered: `Ok` if this server holds the
    /// account now (it took it, or it had it), [`StoreError::Elsewhere`] if
    /// another server must serve it, [`StoreError::Unavailable`] if nobody
    /// can say now.
    fn acquire(&mut self, account: &str) -> Result<(), StoreError>;
    /// This server's last record of `account` is durable: let the account
    /// go, or hand it to the server `to`. `false`: it could not, and the
    /// account stays this server's (a login elsewhere is redirected here,
    /// where it is loaded again).
    fn release(&mut self, account: &str, to: Option<&str>) -> bool;

    /// A resume's load by session id found no record saved under that
    /// session (none written yet): `Ok` to answer so here (the resume is
    /// refused), [`StoreError::Elsewhere`] when a live server handed out
    /// that id (the session is there, in memory), or [`StoreError::Wait`].
    /// The default answers as storage did.
    fn route_session(&mut self, session_id: u64) -> Result<(), StoreError> {
        let _ = session_id;
        Ok(())
    }
}
