//! Scenario `arena`: players of the arena (`tether --game arena`), the
//! second game on the engine.
//!
//! Each player queues, plays its match to the end, waits for the durable
//! result, and queues again. On its turn it drops a disc into a random
//! column that has room, after a think time of about `1 / --move-hz`
//! (uniformly 0.5x to 1.5x). It pings once a second for the round trip.
//! Everything goes through the client's path for games other than the
//! MMO (`raw_frames`): the same login, acks, resume and exactly-once
//! inputs, so `--chaos` drops land mid-match and the match carries on.
//!
//! The summary adds `matches_played` (matches finished, each counted once)
//! and `results_committed` (durable results received, one per player per
//! match); `moves` counts the discs dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tether_arena::pb::{self, input::Cmd, server_message::Msg};
use tether_client::{Client, GameEvent};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bot::{run_bot, Brain, FrameNote, Outbox, Script, Shared};
use crate::cli::Args;
use crate::scenario::{client_config, mix, start_time};
use crate::stats::Tally;

/// Pings per second per player: enough for a round-trip histogram, little
/// next to the moves.
const PING_EVERY: Duration = Duration::from_secs(1);

/// While waiting on the server (queued, the opponent's turn, a result), the
/// brain looks again this often.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// A player whose match ended and whose result has not come within this
/// long queues again anyway (storage may be slow; the result still counts
/// when it comes).
const RESULT_PATIENCE: Duration = Duration::from_secs(10);

/// After the queue was refused (full, storage away), wait this long.
const REQUEUE_AFTER: Duration = Duration::from_secs(1);

/// Where the player stands, as far as it knows.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Not queued, not playing: queue at the next tick.
    Idle,
    /// `Queue` sent or acknowledged; waiting for a match.
    Queued,
    Playing(Play),
    /// The match ended; waiting for its result (or `RESULT_PATIENCE`).
    Settling {
        match_id: u64,
        since: Instant,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Play {
    match_id: u64,
    /// The seat this player moves as (1 moves first).
    me: i32,
    to_move: i32,
    /// Discs per column.
    heights: Vec<u32>,
    /// A move is on its way; wait for it to come back.
    pending: bool,
    /// When to move, once it is this player's turn.
    move_at: Instant,
}

/// One arena player.
pub struct ArenaBot {
    rng: SmallRng,
    /// Mean think time before a move.
    think: Duration,
    columns: u32,
    rows: u32,
    stage: Stage,
    /// A snapshot is arriving: the stage is rebuilt from it.
    in_snapshot: bool,
    /// Matches this player moved first in, for counting each match once.
    first_in: Vec<u64>,
    not_before: Instant,
    next_ping: Instant,
}

impl ArenaBot {
    pub fn new(move_hz: f64, rng: SmallRng) -> ArenaBot {
        let now = Instant::now();
        ArenaBot {
            rng,
            think: Duration::from_secs_f64(1.0 / move_hz),
            columns: 7,
            rows: 6,
            stage: Stage::Idle,
            in_snapshot: false,
            first_in: Vec::new(),
            not_before: now,
            next_ping: now,
        }
    }

    fn think_time(&mut self) -> Duration {
        self.think.mul_f64(self.rng.random_range(0.5..1.5))
    }

    fn start_play(&mut self, match_id: u64, me: i32) {
        if me == pb::Side::One as i32 && !self.first_in.contains(&match_id) {
            // Only the last few matter; keep the list short.
            if self.first_in.len() >= 8 {
                self.first_in.remove(0);
            }
            self.first_in.push(match_id);
        }
        let move_at = Instant::now() + self.think_time();
        self.stage = Stage::Playing(Play {
            match_id,
            me,
            to_move: pb::Side::One as i32,
            heights: vec![0; self.columns as usize],
            pending: false,
            move_at,
        });
    }

    /// The column to play: a random one with room.
    fn pick(&mut self, heights: &[u32]) -> Option<u32> {
        let open: Vec<u32> = (0..self.columns)
            .filter(|&c| heights.get(c as usize).is_some_and(|&h| h < self.rows))
            .collect();
        if open.is_empty() {
            return None;
        }
        Some(open[self.rng.random_range(0..open.len())])
    }

    fn on_msg(&mut self, msg: Msg, note: &mut FrameNote) {
        match msg {
            Msg::Pong(p) => note.pong = Some(p.client_time),
            // An operators' notice: nothing for a bot to do.
            Msg::Notice(_) => {}
            Msg::Profile(_) => {
                // The first frame of a snapshot: forget what was known.
                self.in_snapshot = true;
                self.stage = Stage::Idle;
            }
            Msg::SnapshotEnd(_) => self.in_snapshot = false,
            Msg::Queue(q) => {
                if q.queued {
                    if self.stage == Stage::Idle {
                        self.stage = Stage::Queued;
                    }
                } else if self.stage == Stage::Queued {
                    self.stage = Stage::Idle;
                }
            }
            Msg::MatchStart(s) => self.start_play(s.match_id, s.you),
            Msg::Board(b) => {
                self.start_play(b.match_id, b.you);
                if let Stage::Playing(p) = &mut self.stage {
                    p.to_move = b.to_move;
                    for (i, cell) in b.cells.iter().enumerate() {
                        if *cell != pb::Side::None as i32 {
                            if let Some(h) = p.heights.get_mut(i % self.columns as usize) {
                                *h += 1;
                            }
                        }
                    }
                }
            }
            Msg::Dropped(d) => {
                let think = self.think_time();
                if let Stage::Playing(p) = &mut self.stage {
                    if p.match_id == d.match_id {
                        if let Some(h) = p.heights.get_mut(d.column as usize) {
                            *h += 1;
                        }
                        if d.side == p.me {
                            p.pending = false;
                        }
                        p.to_move = if d.side == pb::Side::One as i32 {
                            pb::Side::Two as i32
                        } else {
                            pb::Side::One as i32
                        };
                        p.move_at = Instant::now() + think;
                        if d.over {
                            self.stage = Stage::Settling {
                                match_id: d.match_id,
                                since: Instant::now(),
                            };
                        }
                    }
                }
            }
            Msg::Result(r) => {
                note.result_committed = true;
                note.match_played = self.first_in.contains(&r.match_id);
                let ours = match &self.stage {
                    Stage::Playing(p) => p.match_id == r.match_id,
                    Stage::Settling { match_id, .. } => *match_id == r.match_id,
                    _ => false,
                };
                if ours {
                    // Ended by the last disc, a resign, a timer or a forfeit.
                    self.stage = Stage::Idle;
                }
            }
            Msg::CommandError(e) => {
                note.command_error = true;
                let code = pb::ErrorCode::try_from(e.code).unwrap_or_default();
                match code {
                    pb::ErrorCode::QueueFull | pb::ErrorCode::StorageUnavailable => {
                        self.stage = Stage::Idle;
                        self.not_before = Instant::now() + REQUEUE_AFTER;
                    }
                    pb::ErrorCode::NotInMatch | pb::ErrorCode::WrongMatch => {
                        // The match ended meanwhile (a timer): its result
                        // is on its way.
                        if let Stage::Playing(p) = &self.stage {
                            self.stage = Stage::Settling {
                                match_id: p.match_id,
                                since: Instant::now(),
                            };
                        }
                    }
                    _ => {
                        if let Stage::Playing(p) = &mut self.stage {
                            p.pending = false;
                        }
                    }
                }
            }
            Msg::OpponentLink(_) => {}
            Msg::Welcome(_) | Msg::Resumed(_) | Msg::Close(_) | Msg::InputAck(_) => {}
        }
    }
}

/// An arena command as `send_raw` takes it.
fn encode(cmd: Cmd) -> Bytes {
    Bytes::from(
        pb::Input {
            seq: 0,
            ack: 0,
            cmd: Some(cmd),
        }
        .encode_to_vec(),
    )
}

impl Brain for ArenaBot {
    fn on_login(&mut self, client: &Client, now: Instant) -> Instant {
        if let Ok(info) = pb::ArenaInfo::decode(client.game_info()) {
            if info.columns > 0 && info.rows > 0 {
                self.columns = info.columns.min(64);
                self.rows = info.rows;
            }
        }
        self.stage = Stage::Idle;
        self.in_snapshot = true;
        self.next_ping = now + PING_EVERY.mul_f64(self.rng.random::<f64>());
        now
    }

    fn on_game(&mut self, _ev: &GameEvent) {}

    fn on_frame(&mut self, payload: &Bytes) -> FrameNote {
        let mut note = FrameNote::default();
        // A frame this build cannot read has nothing to act on.
        if let Ok(pb::ServerMessage { msg: Some(msg) }) = pb::ServerMessage::decode(&payload[..]) {
            self.on_msg(msg, &mut note);
        }
        note
    }

    fn on_resynced(&mut self) {
        self.in_snapshot = true;
        self.stage = Stage::Idle;
    }

    fn resume_probe(&self, client_time: u64) -> Option<Bytes> {
        Some(encode(Cmd::Ping(pb::Ping { client_time })))
    }

    fn on_tick(
        &mut self,
        out: &mut dyn Outbox,
        tally: &mut Tally,
        shared: &Shared,
        now: Instant,
    ) -> Instant {
        if now >= self.next_ping {
            let client_time = shared.now_us(now);
            if out
                .send_raw(encode(Cmd::Ping(pb::Ping { client_time })), true)
                .is_ok()
            {
                tally.pings += 1;
            }
            self.next_ping = now + PING_EVERY;
        }
        let mut wake = (now + IDLE_POLL).min(self.next_ping);
        if self.in_snapshot || now < self.not_before {
            return wake;
        }
        match &mut self.stage {
            Stage::Idle => {
                if out
                    .send_raw(encode(Cmd::Queue(pb::Queue {})), false)
                    .is_ok()
                {
                    self.stage = Stage::Queued;
                }
            }
            Stage::Queued => {}
            Stage::Settling { since, .. } => {
                if now.saturating_duration_since(*since) >= RESULT_PATIENCE {
                    self.stage = Stage::Idle;
                }
            }
            Stage::Playing(p) => {
                if p.to_move == p.me && !p.pending {
                    if now >= p.move_at {
                        let heights = p.heights.clone();
                        let match_id = p.match_id;
                        if let Some(column) = self.pick(&heights) {
                            let cmd = Cmd::Drop(pb::DropDisc { match_id, column });
                            if out.send_raw(encode(cmd), false).is_ok() {
                                tally.moves += 1;
                                if let Stage::Playing(p) = &mut self.stage {
                                    p.pending = true;
                                }
                            }
                        }
                    } else {
                        wake = wake.min(p.move_at);
                    }
                }
            }
        }
        wake
    }
}

/// Spawns the arena players.
pub fn spawn(
    args: &Args,
    seed: u64,
    shared: &Arc<Shared>,
    t0: Instant,
    set: &mut JoinSet<()>,
    script: &Script,
) {
    let drain = Duration::from_secs_f64(args.drain);
    for i in 0..args.clients {
        let index = args.first_index + i;
        let brain = ArenaBot::new(
            args.move_hz,
            SmallRng::seed_from_u64(mix(seed, index as u64, 1)),
        );
        let mut cfg = client_config(args, index, seed);
        cfg.raw_frames = true;
        let rng = SmallRng::seed_from_u64(mix(seed, index as u64, 2));
        set.spawn(run_bot(
            index,
            start_time(t0, args.ramp, i, args.clients),
            cfg,
            brain,
            shared.clone(),
            drain,
            rng,
            script.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<Cmd>);

    impl Outbox for Recorder {
        fn send(&mut self, _cmd: tether_client::Command) -> Result<u32, tether_client::SendError> {
            panic!("an arena bot sends no MMO command")
        }

        fn send_raw(&mut self, cmd: Bytes, _ping: bool) -> Result<u32, tether_client::SendError> {
            let input = pb::Input::decode(&cmd[..]).expect("an arena input");
            assert_eq!((input.seq, input.ack), (0, 0), "the client numbers it");
            self.0.push(input.cmd.expect("a command"));
            Ok(self.0.len() as u32)
        }
    }

    fn frame(msg: Msg) -> Bytes {
        Bytes::from(pb::ServerMessage { msg: Some(msg) }.encode_to_vec())
    }

    #[test]
    fn queues_plays_its_turns_and_queues_again_after_the_result() {
        let shared = Arc::new(Shared::default());
        let mut bot = ArenaBot::new(1000.0, SmallRng::seed_from_u64(1));
        let mut out = Recorder::default();
        let mut tally = Tally::default();
        bot.in_snapshot = false;
        let mut now = Instant::now() + Duration::from_secs(2);
        bot.next_ping = now + Duration::from_secs(60);
        bot.on_tick(&mut out, &mut tally, &shared, now);
        assert!(matches!(out.0[..], [Cmd::Queue(_)]));
        bot.on_frame(&frame(Msg::MatchStart(pb::MatchStart {
            match_id: 9,
            you: pb::Side::One as i32,
            ..Default::default()
        })));
        now += Duration::from_millis(10);
        bot.on_tick(&mut out, &mut tally, &shared, now);
        let Cmd::Drop(d) = out.0[1] else {
            panic!("a move: {:?}", out.0)
        };
        assert_eq!(d.match_id, 9);
        assert!(d.column < 7);
        assert_eq!(tally.moves, 1);
        // Not again until the move came back and the opponent moved.
        bot.on_tick(&mut out, &mut tally, &shared, now);
        assert_eq!(out.0.len(), 2);
        let column = d.column;
        for side in [pb::Side::One, pb::Side::Two] {
            bot.on_frame(&frame(Msg::Dropped(pb::DiscDropped {
                match_id: 9,
                side: side as i32,
                column,
                ..Default::default()
            })));
        }
        now += Duration::from_millis(10);
        bot.on_tick(&mut out, &mut tally, &shared, now);
        assert!(matches!(out.0[2], Cmd::Drop(_)));
        // The match ends; the result is noted and counted once (as the
        // first mover), then the bot queues again.
        bot.on_frame(&frame(Msg::Dropped(pb::DiscDropped {
            match_id: 9,
            side: pb::Side::One as i32,
            column: 0,
            over: true,
            ..Default::default()
        })));
        bot.on_tick(&mut out, &mut tally, &shared, now);
        assert_eq!(out.0.len(), 3, "waits for the result");
        let note = bot.on_frame(&frame(Msg::Result(pb::MatchResult {
            match_id: 9,
            ..Default::default()
        })));
        assert!(note.result_committed && note.match_played);
        bot.on_tick(&mut out, &mut tally, &shared, now);
        assert!(matches!(out.0[3], Cmd::Queue(_)));
        // Pongs are reported for the round trip; garbage is ignored.
        let note = bot.on_frame(&frame(Msg::Pong(pb::Pong { client_time: 5 })));
        assert_eq!(note.pong, Some(5));
        assert_eq!(
            bot.on_frame(&Bytes::from_static(b"\xff")),
            FrameNote::default()
        );
    }

    #[test]
    fn a_snapshot_rebuilds_the_board() {
        let mut bot = ArenaBot::new(5.0, SmallRng::seed_from_u64(2));
        bot.on_frame(&frame(Msg::Profile(pb::Profile::default())));
        assert!(bot.in_snapshot);
        let mut cells = vec![pb::Side::None as i32; 42];
        for r in 0..6 {
            cells[r * 7 + 2] = pb::Side::One as i32;
        }
        bot.on_frame(&frame(Msg::Board(pb::Board {
            match_id: 4,
            you: pb::Side::Two as i32,
            cells,
            to_move: pb::Side::Two as i32,
            moves: 6,
            ..Default::default()
        })));
        bot.on_frame(&frame(Msg::SnapshotEnd(pb::SnapshotEnd {})));
        assert!(!bot.in_snapshot);
        let Stage::Playing(p) = &bot.stage else {
            panic!("playing")
        };
        assert_eq!(p.heights[2], 6);
        assert_eq!(p.to_move, p.me);
        // The full column is never picked.
        let heights = p.heights.clone();
        for _ in 0..100 {
            assert_ne!(bot.pick(&heights), Some(2));
        }
    }
}
