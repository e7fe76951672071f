//! Deterministic simulations of the engine and a client session against each
//! other, with a virtual clock and injected faults (see `harness`).
//!
//! What every run checks at the end (`Sim::finish`): every input applied
//! exactly once and in order, the client's view equal to the server's state,
//! no protocol error on either side, and after logout no session, connection,
//! replay page, account claim or player left behind, and the character saved.

mod harness;

use harness::{CutKind, Fault, Sim, SimConfig, CUT_KINDS};
use proptest::prelude::*;
use tether_engine::RefusedResume;
use tether_proto::pb;
use tether_session::{ClientSessionConfig, SessionConfig, SessionState};

/// Steps a run without faults takes until the script and the world are done.
fn exchange_steps(cfg: &SimConfig) -> u64 {
    let mut sim = Sim::new(cfg.clone());
    let end = sim.active_end();
    sim.run_until(end);
    sim.steps
}

fn small_replay() -> SimConfig {
    SimConfig {
        server: SessionConfig {
            replay_cap_frames: 32,
            zombie_replay_cap_frames: usize::MAX,
            ..SessionConfig::default()
        },
        tick_every_ms: 20,
        ..SimConfig::default()
    }
}

/// Lost acks, a tiny input queue, and jitter larger than the reconnect delay:
/// what an abandoned connection had sent races the client's resume and its
/// re-sent inputs.
fn lossy() -> SimConfig {
    SimConfig {
        ack_loss: 0.5,
        jitter_ms: 60,
        reconnect_ms: 5,
        client: ClientSessionConfig {
            max_unacked_inputs: 4,
            ack_every_frames: 4,
            ..ClientSessionConfig::default()
        },
        seed: 7,
        ..SimConfig::default()
    }
}

/// Every login waits for its character: cuts land while it loads.
fn slow_storage() -> SimConfig {
    SimConfig {
        load_delay_ms: 150,
        ..SimConfig::default()
    }
}

#[test]
fn clean_run_needs_no_resume() {
    let mut sim = Sim::new(SimConfig::default());
    sim.finish();
    assert_eq!(sim.client.log.welcomes, 1);
    assert!(sim.client.log.resumes.is_empty());
    assert_eq!(sim.server.stats().logins, 1);
}

#[derive(Default, Debug)]
struct Tally {
    runs: u32,
    replays: u32,
    snapshots: u32,
    take_overs: u64,
    resent: u32,
    /// Inputs a replaced connection still had in flight when the engine
    /// closed it.
    inputs_lost_with_replaced: u32,
    lost_while_loading: u32,
}

impl Tally {
    fn add(&mut self, sim: &Sim) {
        self.runs += 1;
        for mode in &sim.client.log.resumes {
            match mode {
                pb::ResumeMode::Replay => self.replays += 1,
                pb::ResumeMode::Snapshot => self.snapshots += 1,
            }
        }
        self.take_overs += sim.server.stats().takeovers;
        self.resent += sim.client.log.resent;
        self.inputs_lost_with_replaced += sim.server.log.inputs_lost_with_replaced;
        self.lost_while_loading += sim.server.log.lost_while_loading;
    }
}

/// The core check: for every step of a scripted exchange, cut the
/// connection right there (each kind of cut), let the client resume, finish.
#[test]
fn a_cut_at_every_step_of_the_exchange() {
    for (name, cfg) in [
        ("default", SimConfig::default()),
        ("small replay", small_replay()),
        ("lossy", lossy()),
        ("slow storage", slow_storage()),
    ] {
        let steps = exchange_steps(&cfg);
        assert!(steps > 50, "{name}: the exchange is too short to mean much");
        let mut tally = Tally::default();
        for k in 0..=steps {
            for kind in CUT_KINDS {
                let mut sim = Sim::new(cfg.clone()).cut_at_step(k, kind);
                sim.finish();
                tally.add(&sim);
            }
        }
        eprintln!("{name}: {steps} steps, {tally:?}");
        assert!(tally.replays > 0, "{name}: no resume replayed");
        assert!(tally.resent > 0, "{name}: no input was ever re-sent");
        assert!(tally.take_overs > 0, "{name}: no cut during the login");
        if name == "lossy" {
            // What an abandoned connection had sent raced the resume: the
            // engine closed it with inputs still in flight, which the client
            // re-sent (every run checks that none reached the server twice).
            assert!(
                tally.inputs_lost_with_replaced > 0,
                "{name}: no input of a replaced connection raced the resume"
            );
        }
        if name == "slow storage" {
            assert!(
                tally.lost_while_loading > 0,
                "{name}: no connection was lost while its login loaded"
            );
        }
        if name == "small replay" {
            assert!(
                tally.snapshots > 0,
                "{name}: no resume fell back to a snapshot"
            );
        }
    }
}

/// A second cut while the first is being recovered from: during the
/// reconnect, the resume handshake (a lost `Resumed` leaves the client with
/// the previous token) and the replay.
#[test]
fn a_second_cut_during_recovery() {
    for cfg in [SimConfig::default(), small_replay()] {
        let steps = exchange_steps(&cfg);
        let mut tally = Tally::default();
        for first in (5..steps).step_by(9) {
            for gap in 1..40 {
                for (a, b) in [
                    (CutKind::Reset, CutKind::Reset),
                    (CutKind::HalfOpen, CutKind::Blackhole),
                    (CutKind::ClientAbandons, CutKind::HalfOpen),
                ] {
                    let mut sim = Sim::new(cfg.clone())
                        .cut_at_step(first, a)
                        .cut_at_step(first + gap, b);
                    sim.finish();
                    tally.add(&sim);
                }
            }
        }
        eprintln!("two cuts: {tally:?}");
        assert!(tally.replays > tally.runs, "second resumes happened");
    }
}

#[test]
fn lost_acks_cost_replay_memory_not_correctness() {
    let cfg = SimConfig {
        server: SessionConfig {
            replay_cap_frames: 64,
            zombie_replay_cap_frames: usize::MAX,
            ..SessionConfig::default()
        },
        tick_every_ms: 10,
        ticks_until_ms: 3_000,
        lose_all_acks_until: 2_000,
        ack_loss: 0.3,
        inputs: 60,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).cut_at_time(2_500, CutKind::Reset);
    sim.run_until(1_990);
    {
        let entry = sim.server.only();
        assert_eq!(entry.view.frames_acked, 0, "every ack was lost so far");
        assert!(entry.view.replay_len <= 64);
        assert!(entry.view.replay_evicted > 0, "the cap was hit while Live");
        assert!(sim.server.engine.pool_pages_in_use() <= 64 / tether_session::FRAMES_PER_PAGE + 1);
    }
    sim.finish();
    assert!(sim.net.acks_lost > 0);
    assert_eq!(sim.client.log.resumes.len(), 1);
}

#[test]
fn replay_cap_exceeded_while_zombie_resumes_with_a_snapshot() {
    let cfg = SimConfig {
        server: SessionConfig {
            replay_cap_frames: 64,
            zombie_replay_cap_frames: usize::MAX,
            ..SessionConfig::default()
        },
        tick_every_ms: 10,
        ticks_until_ms: 3_000,
        reconnect_ms: 1_500,
        inputs: 40,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).cut_at_time(500, CutKind::Reset);
    sim.run_until(1_900);
    {
        let entry = sim.server.only();
        assert!(matches!(entry.view.state, SessionState::Zombie { .. }));
        assert!(entry.view.replay_evicted > 0);
        assert!(entry.view.replay_len <= 64);
    }
    sim.finish();
    assert_eq!(sim.client.log.resumes, vec![pb::ResumeMode::Snapshot]);
    let stats = sim.server.stats();
    assert_eq!((stats.resumes_replay, stats.resumes_snapshot), (0, 1));
}

#[test]
fn a_short_outage_resumes_with_a_replay() {
    let mut sim = Sim::new(SimConfig::default()).cut_at_time(400, CutKind::Reset);
    sim.finish();
    assert_eq!(sim.client.log.resumes, vec![pb::ResumeMode::Replay]);
}

#[test]
fn resume_after_the_grace_period_is_refused_and_nothing_is_left() {
    let cfg = SimConfig {
        server: SessionConfig {
            zombie_grace_ms: 1_000,
            ..SessionConfig::default()
        },
        reconnect_ms: 2_000,
        inputs: 120,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).cut_at_time(300, CutKind::Reset);
    sim.expect_no_loss = false;
    sim.run_until(1_299);
    assert_eq!(sim.server.engine.session_count(), 1);
    sim.run_until(1_300);
    assert_eq!(
        sim.server.engine.session_count(),
        0,
        "expired at 300 + 1000"
    );
    assert_eq!(sim.server.stats().zombie_expiries, 1);
    assert_eq!(
        sim.server.engine.pool_pages_in_use(),
        0,
        "expiry gave the pages back"
    );
    let old_id = sim.client.session.session_id();

    sim.run_until(2_400);
    let stats = sim.server.stats();
    assert_eq!(stats.refused(RefusedResume::UnknownSession), 1);
    assert_eq!(stats.resumes_refused.iter().sum::<u64>(), 1);
    assert!(sim
        .client
        .log
        .closes
        .contains(&pb::CloseCode::ResumeRefused));
    // The client logs in again: a new session, a new numbering.
    sim.finish();
    assert_eq!(sim.client.log.welcomes, 2);
    assert_ne!(sim.client.session.session_id(), old_id);
    assert!(sim.client.inputs_this_session > 0);
}

#[test]
fn a_wrong_resume_changes_nothing() {
    let mut sim = Sim::new(SimConfig::default()).cut_at_time(400, CutKind::Reset);
    sim.run_until(450);
    let good = sim
        .client
        .session
        .resume_message()
        .expect("a session to resume");
    let pb::ClientMessage {
        msg: Some(pb::client_message::Msg::Resume(good)),
    } = good
    else {
        unreachable!()
    };
    // The session as the engine shows it, and when its next timer falls due.
    let state = |sim: &Sim| {
        let entry = sim.server.only();
        (
            format!("{:?}", entry.view),
            sim.server.engine.poll_timeout(),
        )
    };
    let before = state(&sim);
    let sent = {
        let entry = sim.server.only();
        assert!(matches!(entry.view.state, SessionState::Zombie { .. }));
        entry.view.frames_sent
    };
    let mut one_bit = good.clone();
    one_bit.token[3] ^= 0x10;
    let mut short = good.clone();
    short.token.pop();
    let mut future = good.clone();
    future.frames_received = sent + 1;
    let mut stranger = good.clone();
    stranger.session_id += 1;
    for (bad, why) in [
        (one_bit, RefusedResume::BadToken),
        (short, RefusedResume::BadToken),
        (future, RefusedResume::BadFrameCount),
        (stranger, RefusedResume::UnknownSession),
    ] {
        let refused = sim.server.stats().refused(why);
        let reply = sim.stranger(pb::ClientMessage {
            msg: Some(pb::client_message::Msg::Resume(bad)),
        });
        let closes: Vec<_> = reply
            .iter()
            .filter_map(|m| match &m.msg {
                Some(pb::server_message::Msg::Close(c)) => Some(c.code),
                _ => None,
            })
            .collect();
        assert_eq!(closes, vec![pb::CloseCode::ResumeRefused as i32]);
        assert_eq!(reply.len(), 1, "nothing but the Close");
        assert_eq!(sim.server.stats().refused(why), refused + 1, "{why:?}");
        assert_eq!(state(&sim), before);
    }
    let stats = sim.server.stats();
    assert_eq!(
        [
            RefusedResume::BadToken,
            RefusedResume::BadFrameCount,
            RefusedResume::UnknownSession
        ]
        .map(|why| stats.refused(why)),
        [2, 1, 1]
    );
    // The token is unchanged: the client, which never resumed before (so the
    // session accepts no previous token), resumes with the one it holds.
    sim.finish();
    assert_eq!(sim.client.log.resumes, vec![pb::ResumeMode::Replay]);
}

#[test]
fn protect_mode_freezes_the_grace_period() {
    let cfg = SimConfig {
        server: SessionConfig {
            zombie_grace_ms: 1_000,
            ..SessionConfig::default()
        },
        reconnect_ms: 5_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg).cut_at_time(300, CutKind::Reset);
    sim.run_until(200);
    sim.server.set_protect(true, 200);
    sim.run_until(5_000);
    assert_eq!(sim.server.engine.session_count(), 1, "frozen: not expired");
    sim.finish();
    assert_eq!(sim.client.log.resumes.len(), 1);
    assert_eq!(sim.server.stats().zombie_expiries, 0);
}

#[test]
fn a_login_from_a_new_client_takes_the_session_over() {
    let cfg = SimConfig {
        inputs: 30,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg);
    // The new process numbers its own inputs; the old one's unapplied ones are gone.
    sim.expect_no_loss = false;
    sim.run_until(500);
    let old = sim.new_client_process();
    let old_resume = old
        .session
        .resume_message()
        .expect("the old client had a session");
    sim.run_until(700);
    assert_eq!(sim.server.stats().takeovers, 1);
    // The old client's token died with the take-over.
    let reply = sim.stranger(old_resume);
    assert!(matches!(
        reply.as_slice(),
        [pb::ServerMessage { msg: Some(pb::server_message::Msg::Close(c)) }]
            if c.code == pb::CloseCode::ResumeRefused as i32
    ));
    sim.finish();
    // The character continued: the new client sees everything that happened
    // to it, including the old client's inputs.
    let entries = &sim.client.view;
    assert!(entries.iter().filter(|&&v| v < harness::TICK_BASE).count() > 30);
}

#[test]
fn stalls_longer_than_the_heartbeat_end_in_a_resume() {
    let mut sim = Sim::new(SimConfig {
        inputs: 40,
        ..SimConfig::default()
    })
    .fault_at_time(300, Fault::Stall(20_000));
    sim.finish();
    assert!(
        sim.server
            .stats()
            .closed_with(pb::CloseCode::HeartbeatTimeout)
            > 0
    );
    assert_eq!(sim.client.log.silences, 1);
    assert_eq!(sim.client.log.resumes.len(), 1);
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => prop::sample::select(CUT_KINDS.to_vec()).prop_map(Fault::Cut),
        1 => (1u64..20_000).prop_map(Fault::Stall),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // A fixed seed keeps CI repeatable; PROPTEST_RNG_SEED=N explores
        // other schedules. Known limitation (a protocol one, not the
        // engine's): a Hello stalled on a link the client gave up on, and
        // delivered after the client logged in again elsewhere, looks like
        // a new login and takes the session over; the client's inputs in
        // flight then are lost (seed 0, inputs 9, faults [(713, Cut
        // ClientAbandons), (1, Stall 2313), (2365, Cut Reset)], latency 38,
        // jitter 4, replay cap 8, max unacked 2, reconnect 608). Telling a
        // stale Hello from a new login needs a client instance id in Hello.
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            ProptestConfig::default().rng_seed
        } else {
            proptest::test_runner::RngSeed::Fixed(0x7e7e_2026)
        },
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/simulation.proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Random fault schedules (cuts of every kind, stalls, lost acks, jitter,
    /// small or large replay caps and input queues): the end state is always
    /// the same as without faults.
    #[test]
    fn random_fault_schedules_converge(
        seed in any::<u64>(),
        inputs in 1u32..40,
        input_every_ms in 5u64..120,
        faults in prop::collection::vec((0u64..5_000, fault()), 0..6),
        latency_ms in 1u64..60,
        jitter_ms in 0u64..40,
        ack_loss in 0.0f64..0.6,
        replay_cap_frames in prop::sample::select(vec![8usize, 32, 64, 4096]),
        max_unacked_inputs in prop::sample::select(vec![2usize, 8, 1024]),
        reconnect_ms in 1u64..2_000,
        tick_every_ms in prop::sample::select(vec![0u64, 15, 100]),
    ) {
        let cfg = SimConfig {
            server: SessionConfig { replay_cap_frames, ..SessionConfig::default() },
            client: ClientSessionConfig { max_unacked_inputs, ..ClientSessionConfig::default() },
            latency_ms,
            jitter_ms,
            ack_loss,
            reconnect_ms,
            inputs,
            input_every_ms,
            tick_every_ms,
            ticks_until_ms: 3_000,
            seed,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(cfg);
        for (at, fault) in faults {
            sim = sim.fault_at_time(at, fault);
        }
        sim.finish();
    }
}
