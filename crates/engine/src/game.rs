//! The one extension point: what a game implements to run on the engine.
//!
//! The engine owns everything between the socket and the game: handshakes,
//! sessions that outlive their connections, frame counting, replay, acks,
//! exactly-once inputs, zombie timers, write-behind and durable
//! transactions. A game owns its rules and its schema. The two meet here.
//!
//! See docs/GAME_API.md for a walk through writing a game.

use bytes::Bytes;

use crate::record::{Record, Tx};

/// A player inside a game, as the game names it (the MMO uses its entity
/// ids). Unique within one shard while the player is in the game; the
/// engine routes the game's frames to the player's session by it.
pub type PlayerId = u64;

/// What every game call is told about the moment it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// Milliseconds on the shard's monotonic clock.
    pub now_ms: u64,
    /// The shard this game instance runs on.
    pub shard: u16,
    /// Whether a durable transaction would be taken now. While false
    /// (storage away or its queue full), a game should refuse actions that
    /// create value instead of emitting transactions that cannot be made
    /// durable; everything else goes on.
    pub can_commit: bool,
}

/// Where a cross-shard message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The shard that holds this account's session, wherever it is.
    Account(String),
    /// One shard by index.
    Shard(u16),
}

/// Why a cross-shard message could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    /// No shard holds a session of that account.
    NoSuchAccount,
    /// The target shard's bus is full (it is far behind); try later.
    Busy,
    /// The account is on another server of the cluster and the cluster's
    /// messaging is away (or its queue is full); try later.
    Unreachable,
}

/// The `from_shard` of a message that came from another server of the
/// cluster ([`Game::on_remote`]). A game answers such a message with a new
/// [`Route::Account`] message, not with [`Route::Shard`].
pub const FROM_OTHER_NODE: u16 = u16::MAX;

/// A game's input could not be decoded: the connection is closed with
/// `PROTOCOL_ERROR` and the peer earns a strike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad input: {}", self.0)
    }
}

impl std::error::Error for BadInput {}

/// A stored record the game cannot read: the login is refused with
/// `STORAGE_UNAVAILABLE` and the record is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord(pub String);

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable record: {}", self.0)
    }
}

impl std::error::Error for BadRecord {}

/// Everything a game call wants done. The engine owns it, hands it to every
/// call and drains it after: frames to their players' sessions (counted,
/// kept for replay), broadcasts to every shard, cross-shard messages,
/// transactions to storage.
pub struct Outbox<R> {
    /// (recipient, counted frame). One encoded frame may go to many
    /// recipients: clone the `Bytes`, never re-encode.
    pub frames: Vec<(PlayerId, Bytes)>,
    /// Counted frames for every player on every shard.
    pub broadcast: Vec<Bytes>,
    /// Messages for the game on other shards.
    pub remote: Vec<(Route, R)>,
    /// Durable transactions. The player must hear of one only in
    /// [`Game::committed`], after it is durable.
    pub commits: Vec<Tx>,
    /// Records to write now rather than at the next flush (a character that
    /// was just created, say).
    pub saves: Vec<Record>,
}

impl<R> Default for Outbox<R> {
    fn default() -> Self {
        Outbox {
            frames: Vec::new(),
            broadcast: Vec::new(),
            remote: Vec::new(),
            commits: Vec::new(),
            saves: Vec::new(),
        }
    }
}

impl<R> Outbox<R> {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
            && self.broadcast.is_empty()
            && self.remote.is_empty()
            && self.commits.is_empty()
            && self.saves.is_empty()
    }
}

/// A game on the Tether engine.
///
/// One instance runs per shard, on the shard's thread; every call gets the
/// shard's clock in [`Ctx`] and writes what it wants sent into the engine's
/// [`Outbox`]. What the engine guarantees a game:
///
/// - calls come one at a time, from one thread, with a `now` that never
///   goes back;
/// - a player's inputs reach [`Game::apply`] exactly once each, in the
///   order the client numbered them, across any number of reconnects;
/// - frames pushed for a player reach that player in order, once, across
///   reconnects (replayed from the session's buffer, or replaced by a
///   [`Game::snapshot`] when the buffer let them go);
/// - a transaction pushed to [`Outbox::commits`] comes back in
///   [`Game::committed`] only once it is durable, or in
///   [`Game::rejected`] if storage refused it as bad data.
///
/// What a game must guarantee the engine: every call does bounded work and
/// never blocks (no I/O, no locks held across calls, no sleeping); every
/// call returns, whatever the input (no panics on client data); frames are
/// already-encoded server messages whose field numbers follow
/// `proto/engine.proto`.
pub trait Game: Send + 'static {
    /// The game's name: its namespace in storage (records are keyed by game
    /// and account, so games can share a database) and in logs.
    const NAME: &'static str;

    /// One decoded input command.
    type Input: Send + 'static;
    /// A message between instances of the game on different shards.
    type Remote: Send + 'static;

    /// Decodes the game's part of a client `Input` frame. `payload` is the
    /// whole client message; the engine has read its own fields (seq, ack)
    /// already. `Ok(None)`: an input that carries no command (it still
    /// takes its sequence number). Runs on an I/O thread: cheap, no state.
    fn decode_input(payload: &[u8]) -> Result<Option<Self::Input>, BadInput>;

    /// The game's welcome information, encoded: sent in `Welcome.game`.
    fn welcome_info(&self) -> Bytes;

    /// A player enters: `record` is what storage holds for the account
    /// (`None`: a new player). The game must push the player's snapshot
    /// (its first counted frames) into `out`.
    fn join(
        &mut self,
        ctx: &Ctx,
        account: &str,
        record: Option<Record>,
        out: &mut Outbox<Self::Remote>,
    ) -> Result<PlayerId, BadRecord>;

    /// A player leaves for good (logout, zombie expiry, shutdown). Returns
    /// the record to save, written promptly.
    fn leave(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        out: &mut Outbox<Self::Remote>,
    ) -> Option<Record>;

    /// The player's connection is gone (`true`: the session is a zombie
    /// and the player stays in the game) or back (`false`).
    fn link_changed(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        link_dead: bool,
        out: &mut Outbox<Self::Remote>,
    );

    /// Applies one input of `player`, numbered `seq` by its client.
    fn apply(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        seq: u32,
        input: Self::Input,
        out: &mut Outbox<Self::Remote>,
    );

    /// Advances the game to `ctx.now_ms` (monsters, timers, regeneration).
    fn tick(&mut self, ctx: &Ctx, out: &mut Outbox<Self::Remote>);

    /// A fresh snapshot for a player whose missed frames were let go (after
    /// a resume or a take-over): whatever a client needs to rebuild its view.
    fn snapshot(&mut self, ctx: &Ctx, player: PlayerId, out: &mut Outbox<Self::Remote>);

    /// Records of players changed since the last call (write-behind, once a
    /// tick): storage coalesces them per account and writes them every
    /// flush interval.
    fn take_dirty(&mut self, out: &mut Vec<Record>);

    /// A transaction from [`Outbox::commits`] is durable: now tell the player.
    fn committed(&mut self, ctx: &Ctx, tx: &Tx, out: &mut Outbox<Self::Remote>);

    /// Storage refused a transaction as bad data; it will never be durable.
    /// The player must not be told it happened.
    fn rejected(&mut self, _ctx: &Ctx, _tx: &Tx, _out: &mut Outbox<Self::Remote>) {}

    /// A message from the game on another shard.
    fn on_remote(
        &mut self,
        ctx: &Ctx,
        from_shard: u16,
        msg: Self::Remote,
        out: &mut Outbox<Self::Remote>,
    );

    /// A message for the game on another server of the cluster, as bytes
    /// (the servers may run different builds: a game keeps this encoding
    /// stable, as it does its records). `None` (the default): this message
    /// stays on this server, and a [`Route::Account`] message for an account
    /// held elsewhere is undeliverable (`NoSuchAccount`).
    fn encode_remote(msg: &Self::Remote) -> Option<Bytes> {
        let _ = msg;
        None
    }

    /// Reads what [`Game::encode_remote`] wrote, on another server. `None`:
    /// not a message this build knows; it is dropped.
    fn decode_remote(bytes: &[u8]) -> Option<Self::Remote> {
        let _ = bytes;
        None
    }

    /// A message this shard sent could not be handed over.
    fn undeliverable(
        &mut self,
        ctx: &Ctx,
        msg: Self::Remote,
        why: Undeliverable,
        out: &mut Outbox<Self::Remote>,
    );
}
