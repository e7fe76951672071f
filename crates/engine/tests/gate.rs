//! The connection gate driven directly, with a fake [`Admission`] and a
//! virtual clock: one test per rule an I/O thread applies before a shard
//! hears of a connection, and per allowance verdict after.

use tether_engine::gate::{
    Admission, AuthRefused, Close, Count, Dropped, FloodAction, Gate, GateConfig, Incoming,
    InputAllowance, InputLimit, InputVerdict, LoginKind, LoginRefused, Misbehaviour, Step, Strike,
    TokenBucket, FLOOD_RETRY_AFTER_MS,
};
use tether_engine::SESSION_SHARD_SHIFT;
use tether_proto::pb::{self, CloseCode};
use tether_proto::PROTOCOL_VERSION;

// ----- a fake admission and a virtual clock ----------------------------------

/// The shared state as a test sets it, recording what the gate asked, in
/// order (the gate must ask the cheapest question first and stop at the
/// first refusal).
struct Fake {
    protect: bool,
    login: Result<(), LoginRefused>,
    auth: Result<&'static str, AuthRefused>,
    route_to: u16,
    shards: usize,
    asked: Vec<&'static str>,
    logins: Vec<LoginKind>,
}

impl Default for Fake {
    fn default() -> Fake {
        Fake {
            protect: false,
            login: Ok(()),
            auth: Ok("alice"),
            route_to: 2,
            shards: 4,
            asked: Vec::new(),
            logins: Vec::new(),
        }
    }
}

impl Admission for Fake {
    fn protecting(&self) -> bool {
        self.protect
    }

    fn admit_login(&mut self, kind: LoginKind, _now: u64) -> Result<(), LoginRefused> {
        self.asked.push("login_rate");
        self.logins.push(kind);
        self.login
    }

    fn authenticate(&mut self, _hello: &pb::Hello) -> Result<String, AuthRefused> {
        self.asked.push("authenticate");
        self.auth.map(str::to_string)
    }

    fn route_login(&mut self, _account: &str) -> u16 {
        self.asked.push("route");
        self.route_to
    }

    fn shards(&self) -> usize {
        self.shards
    }
}

/// Milliseconds since the test's start; the gate never reads a clock.
const T0: u64 = 1_000_000;

const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
const PROTECT_RETRY_MS: u32 = 7_000;

/// 10 messages a second, 3 at once, 2 over the allowance before a flood.
fn cfg(flood_action: FloodAction) -> GateConfig {
    GateConfig {
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        input_limit: InputLimit {
            rate: 10.0,
            burst: 3.0,
            flood_tolerance: 2.0,
        },
        flood_action,
        protect_retry_after_ms: PROTECT_RETRY_MS,
    }
}

fn hello() -> Incoming<u32> {
    Incoming::Hello(pb::Hello {
        protocol_version: PROTOCOL_VERSION,
        auth: Some(pb::hello::Auth::DevName("alice".into())),
        ..Default::default()
    })
}

fn resume_msg(shard: u64) -> pb::Resume {
    pb::Resume {
        session_id: (shard << SESSION_SHARD_SHIFT) | 42,
        token: vec![7; 16],
        frames_received: 5,
        restart_token: Vec::new(),
    }
}

fn resume(shard: u64) -> Incoming<u32> {
    Incoming::Resume(resume_msg(shard))
}

fn input(seq: u32) -> Incoming<u32> {
    Incoming::Input {
        seq,
        ack: 3,
        cmd: Some(100 + seq),
    }
}

fn ack(frames_received: u64) -> Incoming<u32> {
    Incoming::Ack(frames_received)
}

fn logout() -> Incoming<u32> {
    Incoming::Logout
}

/// A gate whose connection resumed a session on shard 1.
fn resumed(cfg: &GateConfig) -> Gate {
    let mut gate = Gate::new(cfg, T0);
    let step = gate.on_message(cfg, resume(1), T0, &mut Fake::default());
    assert!(matches!(step, Step::Resume { shard: 1, .. }), "{step:?}");
    gate
}

fn close(step: Step<u32>) -> Close {
    match step {
        Step::Close(close) => close,
        other => panic!("expected a Close, got {other:?}"),
    }
}

// ----- the first frame -------------------------------------------------------

#[test]
fn input_ack_or_logout_first_is_a_protocol_error_and_a_strike() {
    let cfg = cfg(FloodAction::Zombie);
    for first in [input(1), ack(3), logout()] {
        let mut gate = Gate::new(&cfg, T0);
        let mut adm = Fake::default();
        let c = close(gate.on_message(&cfg, first, T0, &mut adm));
        assert_eq!(c.code, CloseCode::ProtocolError);
        assert_eq!(c.strike, Some(Strike::Protocol));
        assert_eq!(c.message, "expected Hello or Resume first");
        assert_eq!(
            (c.retry_after_ms, c.logout_first, c.count),
            (0, false, None)
        );
        assert!(adm.asked.is_empty(), "refused before any shared state");
        assert!(gate.is_pending(), "still a pending handshake until it goes");
        assert_eq!(gate.shard(), None);
    }
}

#[test]
fn a_second_hello_or_resume_is_a_protocol_error_and_a_strike() {
    let cfg = cfg(FloodAction::Zombie);
    let seconds: [fn() -> Incoming<u32>; 2] = [hello, || resume(1)];
    // Behind a Resume, behind a Hello still waiting for its Welcome, and
    // behind a welcomed Hello.
    for welcomed in [None, Some(false), Some(true)] {
        for again in seconds {
            let mut gate = match welcomed {
                None => resumed(&cfg),
                Some(w) => {
                    let mut gate = Gate::new(&cfg, T0);
                    gate.on_message(&cfg, hello(), T0, &mut Fake::default());
                    if w {
                        assert!(gate.welcomed());
                    }
                    gate
                }
            };
            let mut adm = Fake::default();
            let c = close(gate.on_message(&cfg, again(), T0 + 10, &mut adm));
            assert_eq!(c.code, CloseCode::ProtocolError, "{welcomed:?}");
            assert_eq!(c.strike, Some(Strike::Protocol));
            assert_eq!(c.message, "Hello / Resume only as the first frame");
            assert!(adm.asked.is_empty(), "no second login is counted");
        }
    }
}

#[test]
fn protect_mode_refuses_a_hello_with_a_retry_hint_but_admits_a_resume() {
    let cfg = cfg(FloodAction::Zombie);
    let mut adm = Fake {
        protect: true,
        ..Fake::default()
    };
    let mut gate = Gate::new(&cfg, T0);
    let c = close(gate.on_message(&cfg, hello(), T0, &mut adm));
    assert_eq!(c.code, CloseCode::ServerBusy);
    assert_eq!(c.retry_after_ms, PROTECT_RETRY_MS);
    assert_eq!(c.message, "server busy; retry later");
    assert_eq!(c.strike, None, "an honest client at a bad time");
    assert_eq!(c.count, Some(Count::LoginRefused("protect")));
    assert!(
        adm.asked.is_empty(),
        "protect mode is asked before the rates"
    );

    let mut gate = Gate::new(&cfg, T0);
    let step = gate.on_message(&cfg, resume(3), T0, &mut adm);
    assert_eq!(
        step,
        Step::Resume {
            shard: 3,
            resume: resume_msg(3)
        }
    );
    assert_eq!(adm.logins, vec![LoginKind::Resume]);
    assert!(!gate.is_pending());
}

#[test]
fn over_the_login_rate_is_rate_limited_with_the_wait() {
    let cfg = cfg(FloodAction::Zombie);
    for (first, kind) in [(hello(), LoginKind::Hello), (resume(1), LoginKind::Resume)] {
        let mut adm = Fake {
            login: Err(LoginRefused {
                reason: "rate_ip",
                retry_after_ms: 1_500,
            }),
            ..Fake::default()
        };
        let mut gate = Gate::new(&cfg, T0);
        let c = close(gate.on_message(&cfg, first, T0, &mut adm));
        assert_eq!(c.code, CloseCode::RateLimited);
        assert_eq!(c.retry_after_ms, 1_500);
        assert_eq!(c.message, "too many logins; retry later");
        assert_eq!(c.strike, None);
        assert_eq!(c.count, Some(Count::LoginRefused("rate_ip")));
        assert_eq!(adm.logins, vec![kind]);
        assert_eq!(adm.asked, vec!["login_rate"], "nothing after a refusal");
        assert!(gate.is_pending(), "the rates did not count it in");
    }
    // A refusal by rate always says when to come back, never "now".
    let mut adm = Fake {
        login: Err(LoginRefused {
            reason: "rate_global",
            retry_after_ms: 0,
        }),
        ..Fake::default()
    };
    let c = close(Gate::new(&cfg, T0).on_message(&cfg, hello(), T0, &mut adm));
    assert_eq!(c.retry_after_ms, 1);
    assert_eq!(c.count, Some(Count::LoginRefused("rate_global")));
}

#[test]
fn a_wrong_protocol_version_is_refused_before_credentials_with_a_strike() {
    let cfg = cfg(FloodAction::Zombie);
    let mut adm = Fake::default();
    let mut gate = Gate::new(&cfg, T0);
    let old = Incoming::Hello(pb::Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        ..Default::default()
    });
    let c = close(gate.on_message(&cfg, old, T0, &mut adm));
    assert_eq!(c.code, CloseCode::UnsupportedVersion);
    assert_eq!(c.strike, Some(Strike::AuthFailed));
    assert_eq!(c.message, "protocol_version must be 1");
    assert_eq!(
        adm.asked,
        vec!["login_rate"],
        "no crypto for a wrong version"
    );
    assert!(!gate.is_pending(), "counted as a login by the rates");
}

#[test]
fn bad_credentials_are_struck_but_an_expired_ticket_is_not() {
    let cfg = cfg(FloodAction::Zombie);
    let mut adm = Fake {
        auth: Err(AuthRefused {
            code: CloseCode::AuthFailed,
            message: "no credentials",
        }),
        ..Fake::default()
    };
    let c = close(Gate::new(&cfg, T0).on_message(&cfg, hello(), T0, &mut adm));
    assert_eq!(c.code, CloseCode::AuthFailed);
    assert_eq!(c.strike, Some(Strike::AuthFailed));
    assert_eq!(c.message, "no credentials");
    assert_eq!(adm.asked, vec!["login_rate", "authenticate"], "not routed");

    let mut adm = Fake {
        auth: Err(AuthRefused {
            code: CloseCode::TicketExpired,
            message: "ticket expired",
        }),
        ..Fake::default()
    };
    let c = close(Gate::new(&cfg, T0).on_message(&cfg, hello(), T0, &mut adm));
    assert_eq!(c.code, CloseCode::TicketExpired);
    assert_eq!(c.strike, None, "an honest client with an old ticket");
    assert_eq!(c.message, "ticket expired");
}

#[test]
fn a_hello_goes_to_the_routed_shard_and_holds_what_follows_until_the_welcome() {
    let cfg = cfg(FloodAction::Zombie);
    let mut adm = Fake::default();
    let mut gate = Gate::new(&cfg, T0);
    assert_eq!(
        gate.parse_budget(),
        1,
        "the first frame decides what follows"
    );
    let step = gate.on_message(&cfg, hello(), T0, &mut adm);
    assert_eq!(
        step,
        Step::Login {
            shard: 2,
            account: "alice".into()
        }
    );
    assert_eq!(
        adm.asked,
        vec!["login_rate", "authenticate", "route"],
        "cheapest first"
    );
    assert_eq!(gate.shard(), Some(2));
    assert!(gate.is_welcoming() && !gate.is_bound() && !gate.is_pending());
    assert_eq!(gate.parse_budget(), 0, "pipelined frames wait unparsed");
    assert_eq!(gate.parse_budget(), 0, "for as long as the Welcome takes");

    assert!(gate.welcomed());
    assert!(gate.is_bound() && !gate.is_welcoming());
    assert_eq!(gate.parse_budget(), usize::MAX);
    assert!(!gate.welcomed(), "one Welcome releases the frames, once");
    let step = gate.on_message(&cfg, input(1), T0 + 10, &mut adm);
    assert!(
        matches!(
            step,
            Step::Input {
                shard: 2,
                seq: 1,
                ..
            }
        ),
        "{step:?}"
    );
}

#[test]
fn after_a_resume_frames_flow_at_once() {
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = Gate::new(&cfg, T0);
    assert!(!gate.welcomed(), "no Welcome is awaited before a Hello");
    let gate_step = gate.on_message(&cfg, resume(3), T0, &mut Fake::default());
    assert!(matches!(gate_step, Step::Resume { shard: 3, .. }));
    assert!(gate.is_bound());
    assert_eq!(gate.parse_budget(), usize::MAX);
    assert!(!gate.welcomed(), "a resume waits for no Welcome");
    let mut adm = Fake::default();
    assert_eq!(
        gate.on_message(&cfg, ack(9), T0, &mut adm),
        Step::Ack {
            shard: 3,
            frames_received: 9
        }
    );
    assert_eq!(
        gate.on_message(&cfg, logout(), T0, &mut adm),
        Step::Logout { shard: 3 }
    );
    assert!(adm.asked.is_empty(), "no shared state after the handshake");
}

#[test]
fn a_resume_for_a_shard_out_of_range_is_refused() {
    let cfg = cfg(FloodAction::Zombie);
    let mut adm = Fake {
        shards: 2,
        ..Fake::default()
    };
    let mut gate = Gate::new(&cfg, T0);
    let c = close(gate.on_message(&cfg, resume(2), T0, &mut adm));
    assert_eq!(c.code, CloseCode::ResumeRefused);
    assert_eq!(c.message, "resume refused");
    assert_eq!((c.strike, c.retry_after_ms), (None, 0));
    assert_eq!(c.count, Some(Count::ResumeRefused("unknown_session")));
    assert_eq!(gate.shard(), None);
    // The top byte of the id: the highest shard is in range, not past it.
    let mut gate = Gate::new(&cfg, T0);
    let step = gate.on_message(&cfg, resume(1), T0, &mut adm);
    assert!(matches!(step, Step::Resume { shard: 1, .. }));
    let c = close(Gate::new(&cfg, T0).on_message(&cfg, resume(255), T0, &mut adm));
    assert_eq!(c.code, CloseCode::ResumeRefused);
}

// ----- the handshake deadline and closing ------------------------------------

#[test]
fn no_first_frame_by_the_deadline_closes_with_a_strike() {
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = Gate::new(&cfg, T0);
    let deadline = T0 + HANDSHAKE_TIMEOUT_MS;
    assert_eq!(gate.handshake_deadline(), Some(deadline));
    assert_eq!(gate.handle_timeout(deadline - 1), None);
    let c = gate.handle_timeout(deadline).expect("due");
    assert_eq!(c.code, CloseCode::HandshakeTimeout);
    assert_eq!(c.strike, Some(Strike::HandshakeTimeout));
    assert_eq!(c.message, "no Hello or Resume in time");

    // Once a first frame bound it, the deadline is gone, whether or not the
    // Welcome has come.
    let mut gate = Gate::new(&cfg, T0);
    gate.on_message(&cfg, hello(), T0 + 1, &mut Fake::default());
    assert_eq!(gate.handshake_deadline(), None);
    assert_eq!(gate.handle_timeout(deadline + 1), None);
    let mut gate = resumed(&cfg);
    assert_eq!(gate.handle_timeout(deadline + 1), None);
}

#[test]
fn a_closed_gate_names_its_shard_once_and_ignores_the_rest() {
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = resumed(&cfg);
    assert_eq!(gate.closed(), Some(1), "the shard to tell");
    assert_eq!(gate.closed(), None, "told once");
    assert_eq!(gate.parse_budget(), 0);
    assert_eq!(
        gate.on_message(&cfg, input(1), T0, &mut Fake::default()),
        Step::Ignored
    );
    let mut gate = Gate::new(&cfg, T0);
    assert_eq!(gate.closed(), None, "never bound: no shard to tell");
    assert_eq!(gate.handle_timeout(T0 + HANDSHAKE_TIMEOUT_MS), None);
    assert!(gate.is_pending(), "released as a pending handshake");
}

// ----- the input allowance ---------------------------------------------------

#[test]
fn within_the_allowance_inputs_and_acks_pass() {
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = resumed(&cfg);
    let mut adm = Fake::default();
    // 3 at once, then one every 100 ms for a long while.
    for seq in 1..=3 {
        assert_eq!(
            gate.on_message(&cfg, input(seq), T0, &mut adm),
            Step::Input {
                shard: 1,
                seq,
                ack: 3,
                cmd: Some(100 + seq),
                dropped: None
            }
        );
    }
    for i in 1..=1_000u64 {
        let step = gate.on_message(&cfg, ack(i), T0 + i * 100, &mut adm);
        assert_eq!(
            step,
            Step::Ack {
                shard: 1,
                frames_received: i
            }
        );
    }
}

#[test]
fn over_the_allowance_an_input_keeps_its_number_and_an_ack_is_dropped() {
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = resumed(&cfg);
    let mut adm = Fake::default();
    for seq in 1..=3 {
        gate.on_message(&cfg, input(seq), T0, &mut adm);
    }
    assert_eq!(
        gate.on_message(&cfg, input(4), T0, &mut adm),
        Step::Input {
            shard: 1,
            seq: 4,
            ack: 3,
            cmd: None,
            dropped: Some(Dropped { strike: None })
        },
        "the session's sequence stays whole; the command is lost"
    );
    assert_eq!(
        gate.on_message(&cfg, ack(7), T0, &mut adm),
        Step::Dropped(Dropped { strike: None }),
        "a later ack covers it"
    );
    // A Logout is never over the allowance.
    assert_eq!(
        gate.on_message(&cfg, logout(), T0, &mut adm),
        Step::Logout { shard: 1 }
    );
    // 100 ms later a message's worth has come back.
    assert!(matches!(
        gate.on_message(&cfg, input(5), T0 + 100, &mut adm),
        Step::Input {
            cmd: Some(105),
            dropped: None,
            ..
        }
    ));
}

/// Spends the burst (3) and the flood tolerance (2) at `T0`; the next
/// message is a flood.
fn spend_everything(cfg: &GateConfig, gate: &mut Gate) {
    let mut adm = Fake::default();
    for seq in 1..=5 {
        let step = gate.on_message(cfg, input(seq), T0, &mut adm);
        assert!(matches!(step, Step::Input { .. }), "{step:?}");
    }
}

#[test]
fn a_flood_under_the_drop_action_is_struck_once_and_then_only_dropped() {
    let cfg = cfg(FloodAction::Drop);
    let mut gate = resumed(&cfg);
    spend_everything(&cfg, &mut gate);
    let mut adm = Fake::default();
    assert_eq!(
        gate.on_message(&cfg, input(6), T0, &mut adm),
        Step::Input {
            shard: 1,
            seq: 6,
            ack: 3,
            cmd: None,
            dropped: Some(Dropped {
                strike: Some(Strike::InputFlood)
            })
        }
    );
    for seq in 7..50 {
        assert_eq!(
            gate.on_message(&cfg, input(seq), T0, &mut adm),
            Step::Input {
                shard: 1,
                seq,
                ack: 3,
                cmd: None,
                dropped: Some(Dropped { strike: None })
            },
            "one strike per connection"
        );
    }
    assert_eq!(
        gate.on_message(&cfg, ack(1), T0, &mut adm),
        Step::Dropped(Dropped { strike: None })
    );
}

#[test]
fn a_flood_under_the_zombie_action_closes_rate_limited() {
    let cfg = cfg(FloodAction::Zombie);
    for last in [input(6), ack(6)] {
        let mut gate = resumed(&cfg);
        spend_everything(&cfg, &mut gate);
        let c = close(gate.on_message(&cfg, last, T0, &mut Fake::default()));
        assert_eq!(
            c,
            Close {
                code: CloseCode::RateLimited,
                message: "input over the allowance",
                retry_after_ms: FLOOD_RETRY_AFTER_MS,
                strike: Some(Strike::InputFlood),
                logout_first: false,
                count: Some(Count::InputDropped),
            }
        );
        assert_eq!(gate.shard(), Some(1), "the shard is told of the close");
    }
}

#[test]
fn a_flood_under_the_kick_action_logs_out_first() {
    let cfg = cfg(FloodAction::Kick);
    let mut gate = resumed(&cfg);
    spend_everything(&cfg, &mut gate);
    let c = close(gate.on_message(&cfg, input(6), T0, &mut Fake::default()));
    assert_eq!(c.code, CloseCode::RateLimited);
    assert_eq!(c.strike, Some(Strike::InputFlood));
    assert_eq!(c.retry_after_ms, FLOOD_RETRY_AFTER_MS);
    assert!(c.logout_first, "the session ends instead of turning zombie");
    assert_eq!(c.count, Some(Count::InputDropped));
}

#[test]
fn a_hello_waiting_for_its_welcome_spends_the_same_allowance() {
    // The driver parses nothing in this phase; should it hand the gate a
    // message anyway, the rules of a bound connection apply.
    let cfg = cfg(FloodAction::Zombie);
    let mut gate = Gate::new(&cfg, T0);
    gate.on_message(&cfg, hello(), T0, &mut Fake::default());
    spend_everything(&cfg, &mut gate);
    let c = close(gate.on_message(&cfg, input(6), T0, &mut Fake::default()));
    assert_eq!(c.strike, Some(Strike::InputFlood));
}

// ----- the parts ---------------------------------------------------------------

#[test]
fn every_misbehaviour_has_one_close_code_and_strike() {
    use Misbehaviour as M;
    let table = [
        (
            M::BadFrame(CloseCode::FrameTooLarge),
            CloseCode::FrameTooLarge,
            Some(Strike::Malformed),
        ),
        (
            M::NotAHandshake,
            CloseCode::ProtocolError,
            Some(Strike::Protocol),
        ),
        (
            M::SecondHandshake,
            CloseCode::ProtocolError,
            Some(Strike::Protocol),
        ),
        (
            M::UnsupportedVersion,
            CloseCode::UnsupportedVersion,
            Some(Strike::AuthFailed),
        ),
        (
            M::BadCredentials,
            CloseCode::AuthFailed,
            Some(Strike::AuthFailed),
        ),
        (M::ExpiredTicket, CloseCode::TicketExpired, None),
        (
            M::HandshakeTimeout,
            CloseCode::HandshakeTimeout,
            Some(Strike::HandshakeTimeout),
        ),
        (
            M::InputFlood,
            CloseCode::RateLimited,
            Some(Strike::InputFlood),
        ),
    ];
    for (m, code, strike) in table {
        assert_eq!((m.close_code(), m.strike()), (code, strike), "{m:?}");
    }
    assert!(
        M::InputFlood.retry_after_ms() > 0,
        "a flood is told when to come back"
    );
    assert_eq!(M::NotAHandshake.retry_after_ms(), 0);
}

#[test]
fn token_bucket_refills_at_its_rate_up_to_its_burst() {
    let mut b = TokenBucket::full(2.0, 0);
    assert!(b.take(10.0, 2.0, 0));
    assert!(b.take(10.0, 2.0, 0));
    assert!(!b.take(10.0, 2.0, 0));
    assert_eq!(b.wait_ms(10.0), 100);
    assert!(!b.take(10.0, 2.0, 99));
    assert!(b.take(10.0, 2.0, 100));
    // A long idle period refills to the burst, no more.
    assert!(b.take(10.0, 2.0, 100_000));
    assert!(b.take(10.0, 2.0, 100_000));
    assert!(!b.take(10.0, 2.0, 100_000));
}

#[test]
fn input_allowance_drops_then_flags_a_flood() {
    let limit = InputLimit {
        rate: 10.0,
        burst: 5.0,
        flood_tolerance: 3.0,
    };
    let mut a = InputAllowance::new(&limit, 0);
    for _ in 0..5 {
        assert_eq!(a.check(&limit, 0), InputVerdict::Pass);
    }
    for _ in 0..3 {
        assert_eq!(a.check(&limit, 0), InputVerdict::Drop);
    }
    assert_eq!(a.check(&limit, 0), InputVerdict::Flood);
    // A well-behaved rate passes again.
    assert_eq!(a.check(&limit, 100), InputVerdict::Pass);
    // Just under twice the rate is dropped, never a flood.
    let mut a = InputAllowance::new(&limit, 0);
    let mut verdicts = Vec::new();
    for i in 0..2_000u64 {
        verdicts.push(a.check(&limit, i * 1000 / 19));
    }
    assert!(verdicts.contains(&InputVerdict::Drop));
    assert!(!verdicts.contains(&InputVerdict::Flood));
}

#[test]
fn flood_actions_are_named_as_the_settings_name_them() {
    for action in [FloodAction::Drop, FloodAction::Zombie, FloodAction::Kick] {
        assert_eq!(FloodAction::parse(action.as_str()), Some(action));
    }
    assert_eq!(FloodAction::NAMES, ["drop", "zombie", "kick"]);
    assert_eq!(FloodAction::parse("Drop"), None);
}
