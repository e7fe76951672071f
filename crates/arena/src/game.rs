//! [`Arena`]: the game on one shard, implementing [`tether_engine::Game`].

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use prost::Message;
use tether_engine::{BadInput, BadRecord, Ctx, Game, Outbox, PlayerId, Record, Tx, Undeliverable};

use crate::board::{Board, DropRefused, Seat, COLUMNS, CONNECT, ROWS};
use crate::pb::{self, client_message, input::Cmd, server_message::Msg, ErrorCode};
use crate::record::{decode_record, encode_record, rate, Profile, START_RATING};

/// Bits of a match or transaction id below the shard index, so ids made on
/// different shards of one server never collide (the ledger keys
/// transactions by id within a run).
pub const ID_SHARD_SHIFT: u32 = 48;

/// The arena's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaConfig {
    /// A player to move who does not move for this long loses.
    ///
    /// Default 30 s: a human thinks a few seconds per move; a player who has
    /// walked away should not hold the opponent for longer than this.
    pub turn_timeout_ms: u64,
    /// A player whose connection is gone loses if not back within this long.
    /// Meanwhile the match waits (the turn timer does not run against a
    /// player who is away).
    ///
    /// Default 20 s: the client SDK's reconnects take well under a second
    /// to a few seconds; the opponent should not wait out the engine's whole
    /// zombie grace (two minutes by default).
    pub forfeit_after_ms: u64,
    /// Players waiting in this shard's queue at most; past it, `Queue` is
    /// refused with `QUEUE_FULL`.
    ///
    /// Default 10,000: the shard's whole population at the load the MMO is
    /// sized for; the queue costs a few bytes a player.
    pub max_queue: usize,
    /// Matches in play on this shard at most; past it, queued players wait.
    ///
    /// Default 5,000: every player of a 10,000-player shard in a match. A
    /// match is about 200 bytes and every tick looks at each one.
    pub max_matches: usize,
    /// Pairs the matchmaker makes in one tick at most, so a queue that
    /// filled up while matches were full drains over a few ticks instead
    /// of in one long one.
    pub pairings_per_tick: usize,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            turn_timeout_ms: 30_000,
            forfeit_after_ms: 20_000,
            max_queue: 10_000,
            max_matches: 5_000,
            pairings_per_tick: 256,
        }
    }
}

/// Counters of one shard's arena, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    pub matches_started: u64,
    /// Matches that ended (their two results went to storage).
    pub matches_finished: u64,
    /// Results storage confirmed (two per match whose players both stayed).
    pub results_committed: u64,
    /// Results storage refused as bad data; never told to the player.
    pub results_rejected: u64,
    pub moves: u64,
    /// Inputs applied without effect (`CommandError`).
    pub command_errors: u64,
}

/// Where a player stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seating {
    Idle,
    Queued,
    Playing(u64),
}

struct Player {
    profile: Profile,
    seating: Seating,
    link_dead: bool,
}

struct Match {
    id: u64,
    players: [PlayerId; 2],
    board: Board,
    to_move: Seat,
    /// When the player to move got the turn (or came back).
    turn_since_ms: u64,
    /// Per seat: when that player forfeits, while its connection is gone.
    forfeit_at: [Option<u64>; 2],
}

/// How a match ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    /// `None`: a draw.
    winner: Option<Seat>,
    reason: pb::EndReason,
}

/// Cross-shard messages: the arena has none (each shard's matchmaker pairs
/// its own players), so the type has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRemote {}

/// The arena on one shard: its players, its queue, its matches.
pub struct Arena {
    cfg: ArenaConfig,
    shard: u16,
    welcome: Bytes,
    players: HashMap<PlayerId, Player>,
    by_account: HashMap<String, PlayerId>,
    /// Queued players, oldest first.
    queue: VecDeque<PlayerId>,
    matches: HashMap<u64, Match>,
    next_player: PlayerId,
    next_match: u64,
    next_tx: u64,
    stats: ArenaStats,
}

fn frame(msg: Msg) -> Bytes {
    tether_proto::encode_frame(&pb::ServerMessage { msg: Some(msg) })
}

fn side(seat: Seat) -> pb::Side {
    if seat == 0 {
        pb::Side::One
    } else {
        pb::Side::Two
    }
}

impl Arena {
    /// The arena of shard `shard`.
    pub fn new(cfg: ArenaConfig, shard: u16) -> Arena {
        let info = pb::ArenaInfo {
            columns: COLUMNS as u32,
            rows: ROWS as u32,
            connect: CONNECT as u32,
            turn_timeout_ms: cfg.turn_timeout_ms.min(u32::MAX as u64) as u32,
            forfeit_after_ms: cfg.forfeit_after_ms.min(u32::MAX as u64) as u32,
            start_rating: START_RATING,
        };
        Arena {
            cfg,
            shard,
            welcome: Bytes::from(info.encode_to_vec()),
            players: HashMap::new(),
            by_account: HashMap::new(),
            queue: VecDeque::new(),
            matches: HashMap::new(),
            next_player: 1,
            next_match: 1,
            next_tx: 1,
            stats: ArenaStats::default(),
        }
    }

    pub fn config(&self) -> &ArenaConfig {
        &self.cfg
    }

    pub fn stats(&self) -> ArenaStats {
        self.stats
    }

    /// Players in the game (live and away).
    pub fn player_count(&self) -> usize {
        self.players.len()
    }

    /// Players waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Matches in play.
    pub fn match_count(&self) -> usize {
        self.matches.len()
    }

    /// The profile of a player in the game, by account.
    pub fn profile(&self, account: &str) -> Option<&Profile> {
        let id = self.by_account.get(account)?;
        self.players.get(id).map(|p| &p.profile)
    }

    /// The match `account` is playing, if any.
    pub fn match_of(&self, account: &str) -> Option<u64> {
        let id = self.by_account.get(account)?;
        match self.players.get(id)?.seating {
            Seating::Playing(m) => Some(m),
            _ => None,
        }
    }

    /// The seat `player` holds in match `m`, if it plays in it.
    fn seat_in(&self, m: u64, player: PlayerId) -> Option<Seat> {
        self.matches
            .get(&m)?
            .players
            .iter()
            .position(|&p| p == player)
    }

    fn shard_id(&self, counter: u64) -> u64 {
        (u64::from(self.shard) << ID_SHARD_SHIFT) | counter
    }

    fn error(&mut self, out: &mut Outbox<NoRemote>, player: PlayerId, seq: u32, code: ErrorCode) {
        self.stats.command_errors += 1;
        let f = frame(Msg::CommandError(pb::CommandError {
            seq,
            code: code as i32,
        }));
        out.frames.push((player, f));
    }

    fn queue_state(out: &mut Outbox<NoRemote>, player: PlayerId, queued: bool) {
        out.frames
            .push((player, frame(Msg::Queue(pb::QueueState { queued }))));
    }

    fn unqueue(&mut self, player: PlayerId) {
        // Linear in the queue, which `max_queue` bounds; leaving the queue
        // is rare next to moves.
        self.queue.retain(|&p| p != player);
    }

    /// The match as `player` (at `seat`) sees it.
    fn board_of(&self, m: &Match, seat: Seat) -> pb::Board {
        let opponent = self.players.get(&m.players[1 - seat]);
        pb::Board {
            match_id: m.id,
            you: side(seat) as i32,
            opponent: opponent.map(|o| o.profile.name.clone()).unwrap_or_default(),
            opponent_rating: opponent.map_or(0, |o| o.profile.rating),
            cells: m
                .board
                .cells()
                .iter()
                .map(|c| c.map_or(pb::Side::None, side) as i32)
                .collect(),
            to_move: side(m.to_move) as i32,
            moves: m.board.moves(),
            opponent_link_dead: opponent.is_some_and(|o| o.link_dead),
        }
    }

    // ----- matchmaking -------------------------------------------------

    /// Pairs queued players, oldest first, while matches have room.
    fn matchmake(&mut self, ctx: &Ctx, out: &mut Outbox<NoRemote>) {
        let mut made = 0;
        while self.queue.len() >= 2
            && self.matches.len() < self.cfg.max_matches
            && made < self.cfg.pairings_per_tick
            && ctx.can_commit
        {
            let (Some(a), Some(b)) = (self.queue.pop_front(), self.queue.pop_front()) else {
                break;
            };
            self.start_match(ctx, [a, b], out);
            made += 1;
        }
    }

    fn start_match(&mut self, ctx: &Ctx, players: [PlayerId; 2], out: &mut Outbox<NoRemote>) {
        let id = self.shard_id(self.next_match);
        self.next_match += 1;
        self.stats.matches_started += 1;
        for (seat, &p) in players.iter().enumerate() {
            let other = self.players.get(&players[1 - seat]);
            let start = pb::MatchStart {
                match_id: id,
                you: side(seat) as i32,
                opponent: other.map(|o| o.profile.name.clone()).unwrap_or_default(),
                opponent_rating: other.map_or(0, |o| o.profile.rating),
            };
            out.frames.push((p, frame(Msg::MatchStart(start))));
        }
        for &p in &players {
            if let Some(player) = self.players.get_mut(&p) {
                player.seating = Seating::Playing(id);
            }
        }
        self.matches.insert(
            id,
            Match {
                id,
                players,
                board: Board::default(),
                to_move: 0,
                turn_since_ms: ctx.now_ms,
                forfeit_at: [None, None],
            },
        );
    }

    // ----- play --------------------------------------------------------

    fn drop_disc(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        seq: u32,
        d: pb::DropDisc,
        out: &mut Outbox<NoRemote>,
    ) {
        let Some(m) = self.playing(player, seq, d.match_id, out) else {
            return;
        };
        let Some(seat) = self.seat_in(m, player) else {
            return self.error(out, player, seq, ErrorCode::NotInMatch);
        };
        if self
            .matches
            .get(&m)
            .is_some_and(|mtch| mtch.to_move != seat)
        {
            return self.error(out, player, seq, ErrorCode::NotYourTurn);
        }
        let column = usize::try_from(d.column).unwrap_or(usize::MAX);
        let Some(mtch) = self.matches.get_mut(&m) else {
            return;
        };
        let landed = match mtch.board.drop_disc(seat, column) {
            Ok(landed) => landed,
            Err(DropRefused::NoSuchColumn) => {
                return self.error(out, player, seq, ErrorCode::NoSuchColumn)
            }
            Err(DropRefused::ColumnFull) => {
                return self.error(out, player, seq, ErrorCode::ColumnFull)
            }
        };
        self.stats.moves += 1;
        let over = landed.won || landed.full;
        let f = frame(Msg::Dropped(pb::DiscDropped {
            match_id: m,
            side: side(seat) as i32,
            column: d.column,
            row: landed.row as u32,
            move_no: mtch.board.moves(),
            over,
        }));
        for p in mtch.players {
            out.frames.push((p, f.clone()));
        }
        if over {
            let ending = Ending {
                winner: landed.won.then_some(seat),
                reason: if landed.won {
                    pb::EndReason::Connect
                } else {
                    pb::EndReason::BoardFull
                },
            };
            self.finish(m, ending, out);
        } else {
            mtch.to_move = 1 - seat;
            mtch.turn_since_ms = ctx.now_ms;
        }
    }

    /// The match `player` plays, if it is `match_id`; else answers the
    /// input with the reason it cannot apply.
    fn playing(
        &mut self,
        player: PlayerId,
        seq: u32,
        match_id: u64,
        out: &mut Outbox<NoRemote>,
    ) -> Option<u64> {
        match self.players.get(&player).map(|p| p.seating) {
            Some(Seating::Playing(m)) if m == match_id => Some(m),
            Some(Seating::Playing(_)) => {
                self.error(out, player, seq, ErrorCode::WrongMatch);
                None
            }
            _ => {
                self.error(out, player, seq, ErrorCode::NotInMatch);
                None
            }
        }
    }

    /// Ends a match: both players' standings change, and each gets a
    /// durable transaction (its record and its side of the result). They
    /// are told in [`Game::committed`], once storage holds it.
    fn finish(&mut self, match_id: u64, ending: Ending, out: &mut Outbox<NoRemote>) {
        let Some(m) = self.matches.remove(&match_id) else {
            return;
        };
        self.stats.matches_finished += 1;
        let names = m
            .players
            .map(|p| self.players.get(&p).map(|p| p.profile.name.clone()));
        let ratings = m.players.map(|p| {
            self.players
                .get(&p)
                .map_or(START_RATING, |p| p.profile.rating)
        });
        for seat in 0..2 {
            let Some(player) = self.players.get_mut(&m.players[seat]) else {
                continue;
            };
            let (outcome, score) = match ending.winner {
                None => (pb::Outcome::Draw, 0.5),
                Some(w) if w == seat => (pb::Outcome::Win, 1.0),
                Some(_) => (pb::Outcome::Loss, 0.0),
            };
            let p = &mut player.profile;
            let before = p.rating;
            p.rating = rate(before, ratings[1 - seat], score);
            match outcome {
                pb::Outcome::Win => p.wins = p.wins.saturating_add(1),
                pb::Outcome::Loss => p.losses = p.losses.saturating_add(1),
                _ => p.draws = p.draws.saturating_add(1),
            }
            player.seating = Seating::Idle;
            let tx_id = (u64::from(self.shard) << ID_SHARD_SHIFT) | self.next_tx;
            self.next_tx += 1;
            let entry = pb::MatchResult {
                tx_id,
                match_id,
                player: p.name.clone(),
                opponent: names[1 - seat].clone().unwrap_or_default(),
                outcome: outcome as i32,
                reason: ending.reason as i32,
                rating_before: before,
                rating_after: p.rating,
                moves: m.board.moves(),
                wins: p.wins,
                losses: p.losses,
                draws: p.draws,
            };
            out.commits.push(Tx {
                tx_id,
                record: encode_record(p),
                entry: Bytes::from(entry.encode_to_vec()),
            });
        }
    }

    /// Ends every match whose turn or forfeit timer ran out.
    fn run_timers(&mut self, ctx: &Ctx, out: &mut Outbox<NoRemote>) {
        let now = ctx.now_ms;
        let turn = self.cfg.turn_timeout_ms;
        let mut ended = Vec::new();
        for m in self.matches.values() {
            let due = |seat: Seat| m.forfeit_at[seat].filter(|&t| now >= t);
            let ending = match (due(0), due(1)) {
                // Both away past the limit: the one who left first loses.
                (Some(a), Some(b)) if a == b => Some(None),
                (Some(a), Some(b)) => Some(Some(if a < b { 1 } else { 0 })),
                (Some(_), None) => Some(Some(1)),
                (None, Some(_)) => Some(Some(0)),
                (None, None) => None,
            };
            if let Some(winner) = ending {
                ended.push((
                    m.id,
                    Ending {
                        winner,
                        reason: pb::EndReason::Forfeit,
                    },
                ));
            } else if m.forfeit_at[m.to_move].is_none()
                && now.saturating_sub(m.turn_since_ms) >= turn
            {
                ended.push((
                    m.id,
                    Ending {
                        winner: Some(1 - m.to_move),
                        reason: pb::EndReason::TurnTimeout,
                    },
                ));
            }
        }
        for (id, ending) in ended {
            self.finish(id, ending, out);
        }
    }
}

impl Game for Arena {
    const NAME: &'static str = "arena";
    type Input = Cmd;
    type Remote = NoRemote;

    fn decode_input(payload: &[u8]) -> Result<Option<Cmd>, BadInput> {
        let msg = pb::ClientMessage::decode(payload).map_err(|e| BadInput(e.to_string()))?;
        match msg.msg {
            Some(client_message::Msg::Input(input)) => Ok(input.cmd),
            _ => Err(BadInput("not an Input".into())),
        }
    }

    fn welcome_info(&self) -> Bytes {
        self.welcome.clone()
    }

    fn join(
        &mut self,
        ctx: &Ctx,
        account: &str,
        record: Option<Record>,
        out: &mut Outbox<NoRemote>,
    ) -> Result<PlayerId, BadRecord> {
        let is_new = record.is_none();
        let mut profile = match record {
            Some(r) => decode_record(&r)?,
            None => Profile::new(account),
        };
        profile.name = account.to_string();
        if is_new {
            // The player exists from its first login on, rating and all.
            out.saves.push(encode_record(&profile));
        }
        let id = self.next_player;
        self.next_player += 1;
        self.players.insert(
            id,
            Player {
                profile,
                seating: Seating::Idle,
                link_dead: false,
            },
        );
        self.by_account.insert(account.to_string(), id);
        self.snapshot(ctx, id, out);
        Ok(id)
    }

    fn leave(
        &mut self,
        _ctx: &Ctx,
        player: PlayerId,
        out: &mut Outbox<NoRemote>,
    ) -> Option<Record> {
        match self.players.get(&player)?.seating {
            Seating::Playing(m) => {
                // Leaving the game gives the match up.
                if let Some(seat) = self.seat_in(m, player) {
                    let ending = Ending {
                        winner: Some(1 - seat),
                        reason: pb::EndReason::Forfeit,
                    };
                    self.finish(m, ending, out);
                }
            }
            Seating::Queued => self.unqueue(player),
            Seating::Idle => {}
        }
        let p = self.players.remove(&player)?;
        self.by_account.remove(&p.profile.name);
        Some(encode_record(&p.profile))
    }

    fn link_changed(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        link_dead: bool,
        out: &mut Outbox<NoRemote>,
    ) {
        let Some(p) = self.players.get_mut(&player) else {
            return;
        };
        p.link_dead = link_dead;
        match p.seating {
            Seating::Queued if link_dead => {
                // A player who is away is not matched; it queues again
                // once back (the frame waits for it in the replay buffer).
                p.seating = Seating::Idle;
                self.unqueue(player);
                Self::queue_state(out, player, false);
            }
            Seating::Playing(id) => {
                let forfeit_after = self.cfg.forfeit_after_ms;
                let Some(m) = self.matches.get_mut(&id) else {
                    return;
                };
                let seat = if m.players[0] == player { 0 } else { 1 };
                m.forfeit_at[seat] = link_dead.then(|| ctx.now_ms + forfeit_after);
                if !link_dead && m.to_move == seat {
                    // The turn timer ran not against an absent player: the
                    // turn starts over now.
                    m.turn_since_ms = ctx.now_ms;
                }
                let f = frame(Msg::OpponentLink(pb::OpponentLink {
                    match_id: id,
                    link_dead,
                    forfeit_in_ms: if link_dead {
                        forfeit_after.min(u32::MAX as u64) as u32
                    } else {
                        0
                    },
                }));
                out.frames.push((m.players[1 - seat], f));
            }
            _ => {}
        }
    }

    fn apply(
        &mut self,
        ctx: &Ctx,
        player: PlayerId,
        seq: u32,
        input: Cmd,
        out: &mut Outbox<NoRemote>,
    ) {
        let Some(seating) = self.players.get(&player).map(|p| p.seating) else {
            return;
        };
        match input {
            Cmd::Queue(_) => match seating {
                Seating::Queued => self.error(out, player, seq, ErrorCode::AlreadyQueued),
                Seating::Playing(_) => self.error(out, player, seq, ErrorCode::InMatch),
                // A match that could not be recorded is not started.
                Seating::Idle if !ctx.can_commit => {
                    self.error(out, player, seq, ErrorCode::StorageUnavailable)
                }
                Seating::Idle if self.queue.len() >= self.cfg.max_queue => {
                    self.error(out, player, seq, ErrorCode::QueueFull)
                }
                Seating::Idle => {
                    self.queue.push_back(player);
                    if let Some(p) = self.players.get_mut(&player) {
                        p.seating = Seating::Queued;
                    }
                    Self::queue_state(out, player, true);
                }
            },
            Cmd::LeaveQueue(_) => {
                if seating == Seating::Queued {
                    self.unqueue(player);
                    if let Some(p) = self.players.get_mut(&player) {
                        p.seating = Seating::Idle;
                    }
                    Self::queue_state(out, player, false);
                } else {
                    self.error(out, player, seq, ErrorCode::NotQueued);
                }
            }
            Cmd::Drop(d) => self.drop_disc(ctx, player, seq, d, out),
            Cmd::Resign(r) => {
                let m = self.playing(player, seq, r.match_id, out);
                if let Some((m, seat)) = m.and_then(|m| Some((m, self.seat_in(m, player)?))) {
                    let ending = Ending {
                        winner: Some(1 - seat),
                        reason: pb::EndReason::Resign,
                    };
                    self.finish(m, ending, out);
                }
            }
            Cmd::Ping(p) => {
                let f = frame(Msg::Pong(pb::Pong {
                    client_time: p.client_time,
                }));
                out.frames.push((player, f));
            }
        }
    }

    fn tick(&mut self, ctx: &Ctx, out: &mut Outbox<NoRemote>) {
        self.run_timers(ctx, out);
        self.matchmake(ctx, out);
    }

    fn snapshot(&mut self, _ctx: &Ctx, player: PlayerId, out: &mut Outbox<NoRemote>) {
        let Some(p) = self.players.get(&player) else {
            return;
        };
        out.frames
            .push((player, frame(Msg::Profile(p.profile.to_pb()))));
        match p.seating {
            Seating::Queued => Self::queue_state(out, player, true),
            Seating::Playing(id) => {
                if let Some(m) = self.matches.get(&id) {
                    let seat = if m.players[0] == player { 0 } else { 1 };
                    let board = self.board_of(m, seat);
                    out.frames.push((player, frame(Msg::Board(board))));
                }
            }
            Seating::Idle => {}
        }
        out.frames
            .push((player, frame(Msg::SnapshotEnd(pb::SnapshotEnd {}))));
    }

    fn take_dirty(&mut self, _out: &mut Vec<Record>) {
        // Nothing changes between transactions: every change to a
        // player's record is a match result, committed with its ledger
        // entry.
    }

    fn committed(&mut self, _ctx: &Ctx, tx: &Tx, out: &mut Outbox<NoRemote>) {
        self.stats.results_committed += 1;
        let Some(&player) = self.by_account.get(tx.account()) else {
            return; // left meanwhile: the result is in its record all the same
        };
        let Ok(result) = pb::MatchResult::decode(&tx.entry[..]) else {
            return; // every entry this build commits decodes
        };
        out.frames.push((player, frame(Msg::Result(result))));
    }

    fn rejected(&mut self, _ctx: &Ctx, _tx: &Tx, _out: &mut Outbox<NoRemote>) {
        self.stats.results_rejected += 1;
    }

    fn on_remote(&mut self, _: &Ctx, _: u16, msg: NoRemote, _: &mut Outbox<NoRemote>) {
        match msg {}
    }

    fn undeliverable(
        &mut self,
        _: &Ctx,
        msg: NoRemote,
        _: Undeliverable,
        _: &mut Outbox<NoRemote>,
    ) {
        match msg {}
    }
}
