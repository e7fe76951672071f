//! The arena driven directly, call by call, with a virtual clock: the rules,
//! the matchmaker, the timers, the results and the bounds.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use tether_arena::board::{COLUMNS, ROWS};
use tether_arena::pb::{self, input::Cmd, server_message::Msg, ErrorCode};
use tether_arena::{decode_record, Arena, ArenaConfig, NoRemote};
use tether_engine::{Ctx, Game, Outbox, PlayerId, Tx};
use tether_proto::{split_frame, MAX_PAYLOAD_LEN};

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now_ms,
        shard: 0,
        can_commit: true,
    }
}

fn decode(frame: &Bytes) -> Msg {
    let (payload, used) = split_frame(frame, MAX_PAYLOAD_LEN).unwrap().unwrap();
    assert_eq!(used, frame.len(), "one frame per Bytes");
    pb::ServerMessage::decode(payload).unwrap().msg.unwrap()
}

/// An arena and what it produced, taken per player.
struct Table {
    arena: Arena,
    out: Outbox<NoRemote>,
    now: u64,
}

impl Table {
    fn new(cfg: ArenaConfig) -> Table {
        Table {
            arena: Arena::new(cfg, 0),
            out: Outbox::default(),
            now: 0,
        }
    }

    fn join(&mut self, name: &str) -> PlayerId {
        let id = self
            .arena
            .join(&ctx(self.now), name, None, &mut self.out)
            .unwrap();
        self.take(id);
        id
    }

    fn apply(&mut self, player: PlayerId, seq: u32, cmd: Cmd) {
        self.arena
            .apply(&ctx(self.now), player, seq, cmd, &mut self.out);
    }

    fn tick(&mut self) {
        self.arena.tick(&ctx(self.now), &mut self.out);
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.tick();
    }

    /// The frames pushed for `player` so far, decoded; forgets them.
    fn take(&mut self, player: PlayerId) -> Vec<Msg> {
        let mut mine = Vec::new();
        self.out.frames.retain(|(p, f)| {
            if *p == player {
                mine.push(decode(f));
                false
            } else {
                true
            }
        });
        mine
    }

    fn commits(&mut self) -> Vec<Tx> {
        std::mem::take(&mut self.out.commits)
    }

    /// Queues both, ticks, and returns the match id (a moves first).
    fn pair(&mut self, a: PlayerId, b: PlayerId) -> u64 {
        self.apply(a, 100, queue());
        self.apply(b, 100, queue());
        self.tick();
        let start = self
            .take(a)
            .into_iter()
            .find_map(|m| match m {
                Msg::MatchStart(s) => Some(s),
                _ => None,
            })
            .expect("a match started");
        assert_eq!(start.you, pb::Side::One as i32);
        self.take(b);
        start.match_id
    }
}

fn queue() -> Cmd {
    Cmd::Queue(pb::Queue {})
}

fn drop_in(match_id: u64, column: u32) -> Cmd {
    Cmd::Drop(pb::DropDisc { match_id, column })
}

fn errors(msgs: &[Msg]) -> Vec<ErrorCode> {
    msgs.iter()
        .filter_map(|m| match m {
            Msg::CommandError(e) => Some(ErrorCode::try_from(e.code).unwrap()),
            _ => None,
        })
        .collect()
}

fn result_of(tx: &Tx) -> pb::MatchResult {
    pb::MatchResult::decode(&tx.entry[..]).unwrap()
}

/// A wins with four down column 0 while B plays column 1: seven moves.
fn play_to_a_win(t: &mut Table, a: PlayerId, b: PlayerId, m: u64) {
    for i in 0..3 {
        t.apply(a, 200 + i, drop_in(m, 0));
        t.apply(b, 200 + i, drop_in(m, 1));
    }
    t.apply(a, 299, drop_in(m, 0));
}

#[test]
fn a_new_player_gets_its_profile_and_is_saved_at_once() {
    let mut t = Table::new(ArenaConfig::default());
    let id = t
        .arena
        .join(&ctx(0), "ann", None, &mut t.out)
        .expect("a new player joins");
    let msgs = t.take(id);
    match &msgs[..] {
        [Msg::Profile(p), Msg::SnapshotEnd(_)] => {
            assert_eq!((p.name.as_str(), p.rating, p.wins), ("ann", 1200, 0));
        }
        other => panic!("a snapshot of Profile, SnapshotEnd: {other:?}"),
    }
    assert_eq!(t.out.saves.len(), 1, "the new player is saved at once");
    assert_eq!(decode_record(&t.out.saves[0]).unwrap().rating, 1200);
    let info = pb::ArenaInfo::decode(&t.arena.welcome_info()[..]).unwrap();
    assert_eq!((info.columns, info.rows, info.connect), (7, 6, 4));
}

#[test]
fn the_matchmaker_pairs_oldest_first_on_the_tick() {
    let mut t = Table::new(ArenaConfig::default());
    let [a, b, c] = ["ann", "bob", "cid"].map(|n| t.join(n));
    for (p, seq) in [(a, 1), (b, 1), (c, 1)] {
        t.apply(p, seq, queue());
        assert!(matches!(
            t.take(p)[..],
            [Msg::Queue(pb::QueueState { queued: true })]
        ));
    }
    assert_eq!(t.arena.match_count(), 0, "pairing waits for the tick");
    t.tick();
    let sa = t.take(a);
    let sb = t.take(b);
    let (Msg::MatchStart(sa), Msg::MatchStart(sb)) = (&sa[0], &sb[0]) else {
        panic!("both told: {sa:?} {sb:?}")
    };
    assert_eq!(sa.match_id, sb.match_id);
    assert_eq!(
        (sa.you, sb.you),
        (pb::Side::One as i32, pb::Side::Two as i32)
    );
    assert_eq!((sa.opponent.as_str(), sb.opponent.as_str()), ("bob", "ann"));
    assert!(t.take(c).is_empty(), "the third waits");
    assert_eq!((t.arena.match_count(), t.arena.queue_len()), (1, 1));
    // Leaving the queue, and leaving it twice.
    t.apply(c, 2, Cmd::LeaveQueue(pb::LeaveQueue {}));
    t.apply(c, 3, Cmd::LeaveQueue(pb::LeaveQueue {}));
    let msgs = t.take(c);
    assert!(matches!(
        msgs[0],
        Msg::Queue(pb::QueueState { queued: false })
    ));
    assert_eq!(errors(&msgs), vec![ErrorCode::NotQueued]);
    assert_eq!(t.arena.queue_len(), 0);
}

#[test]
fn a_match_is_played_out_and_its_result_told_only_once_committed() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    play_to_a_win(&mut t, a, b, m);
    // Both saw all seven discs, the last one ending the match...
    for p in [a, b] {
        let drops: Vec<pb::DiscDropped> = t
            .take(p)
            .into_iter()
            .filter_map(|m| match m {
                Msg::Dropped(d) => Some(d),
                Msg::Result(_) => panic!("no result before the commit"),
                _ => None,
            })
            .collect();
        assert_eq!(drops.len(), 7);
        assert_eq!(drops.last().unwrap().move_no, 7);
        assert!(drops.last().unwrap().over);
        assert_eq!(
            (drops.last().unwrap().column, drops.last().unwrap().row),
            (0, 3)
        );
        assert!(drops[..6].iter().all(|d| !d.over));
    }
    // ...and the match is two durable transactions, one per player.
    let txs = t.commits();
    assert_eq!(txs.len(), 2);
    let ra = result_of(&txs[0]);
    let rb = result_of(&txs[1]);
    assert_eq!((txs[0].account(), txs[1].account()), ("ann", "bob"));
    assert_eq!(ra.outcome, pb::Outcome::Win as i32);
    assert_eq!(rb.outcome, pb::Outcome::Loss as i32);
    assert_eq!(ra.reason, pb::EndReason::Connect as i32);
    assert_eq!((ra.rating_before, ra.rating_after), (1200, 1216));
    assert_eq!((rb.rating_before, rb.rating_after), (1200, 1184));
    assert_eq!((ra.match_id, ra.moves, ra.opponent.as_str()), (m, 7, "bob"));
    assert_ne!(txs[0].tx_id, txs[1].tx_id);
    assert_eq!(ra.tx_id, txs[0].tx_id);
    let stored = decode_record(&txs[0].record).unwrap();
    assert_eq!((stored.rating, stored.wins, stored.losses), (1216, 1, 0));
    // Players are free again at once; the result is told on commit.
    assert_eq!(t.arena.match_of("ann"), None);
    t.arena.committed(&ctx(t.now), &txs[1], &mut t.out);
    assert!(t.take(a).is_empty());
    match &t.take(b)[..] {
        [Msg::Result(r)] => assert_eq!(r, &rb),
        other => panic!("bob's result: {other:?}"),
    }
    t.arena.committed(&ctx(t.now), &txs[0], &mut t.out);
    assert!(matches!(&t.take(a)[..], [Msg::Result(r)] if r == &ra));
    assert_eq!(t.arena.stats().results_committed, 2);
    assert_eq!(t.arena.stats().matches_finished, 1);
    // A result storage refused is never told.
    let mut t2 = Table::new(ArenaConfig::default());
    let a2 = t2.join("ann");
    t2.arena.rejected(&ctx(0), &txs[0], &mut t2.out);
    assert!(t2.take(a2).is_empty());
    assert_eq!(t2.arena.stats().results_rejected, 1);
}

#[test]
fn a_full_board_is_a_draw() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    // A column order that fills the board with the pattern
    // (row % 2) ^ (column / 2 % 2), which holds no line of four.
    const COLUMNS_PLAYED: [u32; 42] = [
        0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4,
        5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 5,
    ];
    for (turn, &column) in COLUMNS_PLAYED.iter().enumerate() {
        let p = [a, b][turn % 2];
        t.apply(p, 10 + turn as u32, drop_in(m, column));
        assert!(errors(&t.take(p)).is_empty(), "turn {turn}");
    }
    let txs = t.commits();
    assert_eq!(txs.len(), 2);
    for tx in &txs {
        let r = result_of(tx);
        assert_eq!(r.outcome, pb::Outcome::Draw as i32);
        assert_eq!(r.reason, pb::EndReason::BoardFull as i32);
        assert_eq!(r.moves, 42);
        assert_eq!(r.rating_after, 1200);
    }
}

#[test]
fn bad_moves_are_answered_with_errors_and_change_nothing() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    t.apply(a, 1, drop_in(1, 0));
    t.apply(a, 2, Cmd::Resign(pb::Resign { match_id: 1 }));
    assert_eq!(
        errors(&t.take(a)),
        vec![ErrorCode::NotInMatch, ErrorCode::NotInMatch]
    );
    let m = t.pair(a, b);
    t.apply(a, 3, queue());
    t.apply(b, 3, drop_in(m, 0));
    t.apply(a, 4, drop_in(m + 1, 0));
    t.apply(a, 5, drop_in(m, COLUMNS as u32));
    t.apply(a, 6, drop_in(m, u32::MAX));
    assert_eq!(
        errors(&t.take(a)),
        vec![
            ErrorCode::InMatch,
            ErrorCode::WrongMatch,
            ErrorCode::NoSuchColumn,
            ErrorCode::NoSuchColumn
        ]
    );
    assert_eq!(errors(&t.take(b)), vec![ErrorCode::NotYourTurn]);
    // Fill column 3 (six discs, no line), then try a seventh.
    for i in 0..3 {
        t.apply(a, 10 + i, drop_in(m, 3));
        t.apply(b, 10 + i, drop_in(m, 3));
    }
    t.take(b);
    t.apply(a, 20, drop_in(m, 3));
    let msgs = t.take(a);
    assert_eq!(errors(&msgs), vec![ErrorCode::ColumnFull]);
    assert!(t.commits().is_empty());
    assert_eq!(t.arena.stats().moves, 6, "only the legal moves counted");
    assert_eq!(t.arena.match_of("ann"), Some(m));
    // After an error it is still ann's turn.
    t.apply(a, 21, drop_in(m, 4));
    assert!(errors(&t.take(a)).is_empty());
}

#[test]
fn resigning_gives_the_match_to_the_opponent() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    t.apply(b, 1, Cmd::Resign(pb::Resign { match_id: m }));
    let txs = t.commits();
    assert_eq!(result_of(&txs[0]).outcome, pb::Outcome::Win as i32);
    assert_eq!(result_of(&txs[1]).reason, pb::EndReason::Resign as i32);
    assert_eq!(result_of(&txs[1]).outcome, pb::Outcome::Loss as i32);
}

#[test]
fn the_player_to_move_loses_when_the_turn_timer_runs_out() {
    let cfg = ArenaConfig {
        turn_timeout_ms: 1_000,
        ..ArenaConfig::default()
    };
    let mut t = Table::new(cfg);
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    t.advance(600);
    t.apply(a, 1, drop_in(m, 2));
    t.advance(600);
    assert!(t.commits().is_empty(), "bob's turn started at the move");
    t.advance(400);
    let txs = t.commits();
    assert_eq!(txs.len(), 2);
    let bob = txs.iter().find(|tx| tx.account() == "bob").unwrap();
    assert_eq!(result_of(bob).outcome, pb::Outcome::Loss as i32);
    assert_eq!(result_of(bob).reason, pb::EndReason::TurnTimeout as i32);
}

#[test]
fn a_dropped_player_is_waited_for_and_forfeits_only_past_the_limit() {
    let cfg = ArenaConfig {
        turn_timeout_ms: 1_000,
        forfeit_after_ms: 5_000,
        ..ArenaConfig::default()
    };
    let mut t = Table::new(cfg);
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    // Ann, to move, loses her connection: bob is told, and the turn timer
    // does not run against her while she is away.
    t.arena.link_changed(&ctx(t.now), a, true, &mut t.out);
    match &t.take(b)[..] {
        [Msg::OpponentLink(l)] => {
            assert!(l.link_dead);
            assert_eq!((l.match_id, l.forfeit_in_ms), (m, 5_000));
        }
        other => panic!("bob told: {other:?}"),
    }
    t.advance(4_000);
    assert!(t.commits().is_empty(), "waited for");
    // She is back in time; her turn starts over.
    t.arena.link_changed(&ctx(t.now), a, false, &mut t.out);
    assert!(matches!(&t.take(b)[..], [Msg::OpponentLink(l)] if !l.link_dead));
    t.advance(900);
    assert!(t.commits().is_empty());
    t.apply(a, 1, drop_in(m, 0));
    // Now bob goes away, for good.
    t.arena.link_changed(&ctx(t.now), b, true, &mut t.out);
    t.advance(4_900);
    assert!(t.commits().is_empty());
    t.advance(200);
    let txs = t.commits();
    let bob = txs.iter().find(|tx| tx.account() == "bob").unwrap();
    assert_eq!(result_of(bob).reason, pb::EndReason::Forfeit as i32);
    assert_eq!(result_of(bob).outcome, pb::Outcome::Loss as i32);
    assert_eq!(t.arena.match_count(), 0);
}

#[test]
fn when_both_are_away_the_first_to_leave_loses() {
    let cfg = ArenaConfig {
        forfeit_after_ms: 1_000,
        ..ArenaConfig::default()
    };
    let mut t = Table::new(cfg);
    let a = t.join("ann");
    let b = t.join("bob");
    t.pair(a, b);
    t.arena.link_changed(&ctx(t.now), b, true, &mut t.out);
    t.now += 10;
    t.arena.link_changed(&ctx(t.now), a, true, &mut t.out);
    t.advance(5_000);
    let txs = t.commits();
    let bob = txs.iter().find(|tx| tx.account() == "bob").unwrap();
    assert_eq!(result_of(bob).outcome, pb::Outcome::Loss as i32);
}

#[test]
fn leaving_mid_match_forfeits_and_saves_the_loss() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    t.pair(a, b);
    let record = t.arena.leave(&ctx(t.now), b, &mut t.out).unwrap();
    let saved = decode_record(&record).unwrap();
    assert_eq!((saved.losses, saved.rating), (1, 1184));
    let txs = t.commits();
    assert_eq!(txs.len(), 2, "the leaver's result is committed too");
    assert_eq!(t.arena.player_count(), 1);
    // The leaver's result finds nobody to tell; ann's is told.
    for tx in &txs {
        t.arena.committed(&ctx(t.now), tx, &mut t.out);
    }
    assert!(matches!(&t.take(a)[..], [Msg::Result(r)] if r.outcome == pb::Outcome::Win as i32));
    assert!(t.out.frames.is_empty());
}

#[test]
fn a_queued_player_who_drops_leaves_the_queue() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    t.apply(a, 1, queue());
    t.take(a);
    t.arena.link_changed(&ctx(0), a, true, &mut t.out);
    assert!(matches!(
        &t.take(a)[..],
        [Msg::Queue(pb::QueueState { queued: false })]
    ));
    t.apply(b, 1, queue());
    t.tick();
    assert_eq!(t.arena.match_count(), 0, "nobody to play with bob");
}

#[test]
fn a_snapshot_shows_the_board_as_it_stands() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    let m = t.pair(a, b);
    t.apply(a, 1, drop_in(m, 3));
    t.apply(b, 1, drop_in(m, 3));
    t.apply(a, 2, drop_in(m, 4));
    t.take(b);
    t.arena.snapshot(&ctx(0), b, &mut t.out);
    let msgs = t.take(b);
    let [Msg::Profile(p), Msg::Board(board), Msg::SnapshotEnd(_)] = &msgs[..] else {
        panic!("Profile, Board, SnapshotEnd: {msgs:?}")
    };
    assert_eq!(p.name, "bob");
    assert_eq!(board.match_id, m);
    assert_eq!(board.you, pb::Side::Two as i32);
    assert_eq!(board.opponent, "ann");
    assert_eq!(board.to_move, pb::Side::Two as i32);
    assert_eq!(board.moves, 3);
    assert_eq!(board.cells.len(), COLUMNS * ROWS);
    let cell = |c: usize, r: usize| board.cells[r * COLUMNS + c];
    assert_eq!(cell(3, 0), pb::Side::One as i32);
    assert_eq!(cell(3, 1), pb::Side::Two as i32);
    assert_eq!(cell(4, 0), pb::Side::One as i32);
    assert_eq!(cell(0, 0), pb::Side::None as i32);
}

#[test]
fn the_queue_and_the_matches_are_bounded() {
    let cfg = ArenaConfig {
        max_queue: 3,
        max_matches: 1,
        pairings_per_tick: 1,
        ..ArenaConfig::default()
    };
    let mut t = Table::new(cfg);
    let ps: Vec<PlayerId> = (0..6).map(|i| t.join(&format!("p{i}"))).collect();
    for &p in &ps[..4] {
        t.apply(p, 1, queue());
    }
    assert_eq!(errors(&t.take(ps[3])), vec![ErrorCode::QueueFull]);
    t.tick();
    assert_eq!((t.arena.match_count(), t.arena.queue_len()), (1, 1));
    for &p in &ps[3..6] {
        t.apply(p, 2, queue());
    }
    t.tick();
    assert_eq!(
        (t.arena.match_count(), t.arena.queue_len()),
        (1, 3),
        "full matches: the queue waits"
    );
    // The match ends; the next pairing takes one tick each.
    let m = t.arena.match_of("p0").unwrap();
    t.apply(ps[0], 3, Cmd::Resign(pb::Resign { match_id: m }));
    t.tick();
    assert_eq!((t.arena.match_count(), t.arena.queue_len()), (1, 1));
}

#[test]
fn no_match_starts_while_storage_cannot_commit() {
    let mut t = Table::new(ArenaConfig::default());
    let a = t.join("ann");
    let b = t.join("bob");
    t.apply(a, 1, queue());
    t.apply(b, 1, queue());
    let away = Ctx {
        can_commit: false,
        ..ctx(0)
    };
    t.arena.tick(&away, &mut t.out);
    assert_eq!(t.arena.match_count(), 0, "pairing waits for storage");
    let c = t.join("cid");
    t.arena.apply(&away, c, 1, queue(), &mut t.out);
    assert_eq!(errors(&t.take(c)), vec![ErrorCode::StorageUnavailable]);
    t.tick();
    assert_eq!(t.arena.match_count(), 1, "and resumes once it is back");
}

#[test]
fn a_stored_record_is_read_back_and_a_bad_one_refused() {
    let mut t = Table::new(ArenaConfig::default());
    let stored = tether_arena::encode_record(&tether_arena::Profile {
        name: "ann".into(),
        rating: 1500,
        wins: 9,
        losses: 1,
        draws: 0,
    });
    let id = t
        .arena
        .join(&ctx(0), "ann", Some(stored.clone()), &mut t.out)
        .unwrap();
    assert!(t.out.saves.is_empty(), "a known player is not re-saved");
    assert!(matches!(&t.take(id)[0], Msg::Profile(p) if p.rating == 1500 && p.wins == 9));
    let bad = tether_engine::Record {
        version: 99,
        ..stored
    };
    assert!(t.arena.join(&ctx(0), "bob", Some(bad), &mut t.out).is_err());
    assert_eq!(t.arena.player_count(), 1);
}

// ----- properties -------------------------------------------------------

proptest! {
    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decode_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Arena::decode_input(&bytes);
    }

    /// Whatever four players do, in whatever order, with whatever clock:
    /// nothing panics, the bounds hold, and every match that ended became
    /// exactly two transactions.
    #[test]
    fn any_play_keeps_the_arena_consistent(
        steps in proptest::collection::vec((0usize..4, 0u8..8, 0u32..9, 0u64..3_000), 1..300)
    ) {
        let cfg = ArenaConfig {
            turn_timeout_ms: 2_000,
            forfeit_after_ms: 3_000,
            max_queue: 3,
            max_matches: 1,
            pairings_per_tick: 1,
        };
        let mut t = Table::new(cfg.clone());
        let mut ids: Vec<Option<PlayerId>> = (0..4).map(|i| Some(t.join(&format!("p{i}")))).collect();
        let mut commits = 0;
        let mut seq = 0;
        for (who, what, arg, dt) in steps {
            seq += 1;
            let name = format!("p{who}");
            let Some(p) = ids[who] else {
                ids[who] = Some(t.join(&name));
                continue;
            };
            let m = t.arena.match_of(&name).unwrap_or(u64::from(arg));
            match what {
                0 => t.apply(p, seq, queue()),
                1 => t.apply(p, seq, Cmd::LeaveQueue(pb::LeaveQueue {})),
                2 | 3 => t.apply(p, seq, drop_in(m, arg)),
                4 => t.apply(p, seq, Cmd::Resign(pb::Resign { match_id: m })),
                5 => t.arena.link_changed(&ctx(t.now), p, arg % 2 == 0, &mut t.out),
                6 => {
                    t.arena.leave(&ctx(t.now), p, &mut t.out);
                    ids[who] = None;
                }
                _ => t.advance(dt),
            }
            prop_assert!(t.arena.queue_len() <= cfg.max_queue);
            prop_assert!(t.arena.match_count() <= cfg.max_matches);
            commits += t.commits().len();
            t.out.frames.clear();
            t.out.saves.clear();
        }
        prop_assert_eq!(commits as u64, 2 * t.arena.stats().matches_finished);
        prop_assert_eq!(
            t.arena.stats().matches_started,
            t.arena.stats().matches_finished + t.arena.match_count() as u64
        );
    }
}
