//! Scenario `standard`, the headline load (docs/BENCHMARKS.md).
//!
//! Every player, with random phase: moves `--move-hz` times a second to a
//! nearby point at legal speed (towards the nearest visible monster if there
//! is one, else a random walk that stays on the map), attacks the nearest
//! visible monster every 2 s, says a local chat line every 60 s, pings every
//! second, and respawns when dead.

use std::f32::consts::PI;
use std::sync::Arc;
use std::time::Duration;

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tether_client::{pb, Client, Command, GameEvent};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{client_config, mix, start_time};
use crate::bot::{run_bot, Brain, Outbox, Script, Shared};
use crate::cli::Args;
use crate::stats::Tally;
use crate::view::View;

/// Fraction of the legal distance a move covers: the server measures speed
/// on its own clock, so a move must stay legal when it arrives a little
/// early.
const SPEED_MARGIN: f32 = 0.9;

/// The most walking time one move may cover: the server's move budget holds
/// one second's worth (PROTOCOL.md 11.1), so below 1 Hz a move covers at
/// most that, not the whole period.
const MOVE_BUDGET_SECS: f32 = 1.0;

/// How close to a monster a bot walks, as a fraction of the attack range.
const APPROACH: f32 = 0.6;

/// Keep this far from the map's edges (units), when the map is large
/// enough.
const EDGE_MARGIN: f32 = 1.0;

/// Random-walk heading change per move, at most (radians).
const WANDER: f32 = 0.6;

/// The standard schedule.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub move_period: Duration,
    pub attack_period: Duration,
    pub chat_period: Duration,
    pub ping_period: Duration,
    /// After sending `Respawn`, wait this long before sending another.
    pub respawn_retry: Duration,
}

impl Plan {
    pub fn new(move_hz: f64) -> Plan {
        Plan {
            move_period: Duration::from_secs_f64(1.0 / move_hz),
            attack_period: Duration::from_secs(2),
            chat_period: Duration::from_secs(60),
            ping_period: Duration::from_secs(1),
            respawn_retry: Duration::from_secs(2),
        }
    }

    fn move_hz(&self) -> f32 {
        1.0 / self.move_period.as_secs_f32()
    }
}

/// One standard player.
pub struct StandardBot {
    plan: Plan,
    index: usize,
    rng: SmallRng,
    view: View,
    world: pb::WorldInfo,
    heading: f32,
    next_move: Instant,
    next_attack: Instant,
    next_chat: Instant,
    next_ping: Instant,
    next_respawn: Instant,
    chats: u32,
}

impl StandardBot {
    pub fn new(plan: Plan, index: usize, rng: SmallRng) -> StandardBot {
        let now = Instant::now();
        StandardBot {
            plan,
            index,
            rng,
            view: View::default(),
            world: pb::WorldInfo::default(),
            heading: 0.0,
            next_move: now,
            next_attack: now,
            next_chat: now,
            next_ping: now,
            next_respawn: now,
            chats: 0,
        }
    }

    /// Starts playing as entity `me` in `world`; every action gets a random
    /// phase within its period. Returns the first wake.
    pub fn start(&mut self, me: u64, world: pb::WorldInfo, now: Instant) -> Instant {
        self.view = View::new(me);
        self.world = world;
        self.heading = self.rng.random_range(0.0..2.0 * PI);
        let mut phase = |p: Duration| now + p.mul_f64(self.rng.random::<f64>());
        self.next_move = phase(self.plan.move_period);
        self.next_attack = phase(self.plan.attack_period);
        self.next_chat = phase(self.plan.chat_period);
        self.next_ping = phase(self.plan.ping_period);
        self.next_respawn = now;
        self.next_wake()
    }

    fn next_wake(&self) -> Instant {
        let mut t = self
            .next_move
            .min(self.next_attack)
            .min(self.next_chat)
            .min(self.next_ping);
        if self.view.dead {
            t = t.min(self.next_respawn);
        }
        t
    }

    /// Longest legal move per tick.
    pub fn max_step(&self) -> f32 {
        SPEED_MARGIN * self.world.move_speed * (1.0 / self.plan.move_hz()).min(MOVE_BUDGET_SECS)
    }

    /// Where to move next.
    fn pick_move(&mut self) -> (f32, f32) {
        let step = self.max_step();
        let from = (self.view.x, self.view.y);
        let range = self.world.attack_range;
        let target = self.view.nearest_monster().map(|(m, d)| ((m.x, m.y), d));
        let to = match target {
            Some((at, dist)) if dist > APPROACH * range => {
                step_toward(from, at, step, APPROACH * range)
            }
            Some(_) => {
                // In range: shuffle a little so the move cadence holds.
                let a = self.rng.random_range(0.0..2.0 * PI);
                let s = 0.1 * step;
                (from.0 + s * a.cos(), from.1 + s * a.sin())
            }
            None => {
                self.heading += self.rng.random_range(-WANDER..WANDER);
                let (to, heading) = wander(from, self.heading, step, &self.world);
                self.heading = heading;
                to
            }
        };
        clamp_to_map(to, &self.world)
    }
}

impl Brain for StandardBot {
    fn on_login(&mut self, client: &Client, now: Instant) -> Instant {
        self.start(client.entity_id(), client.world(), now)
    }

    fn on_game(&mut self, ev: &GameEvent) {
        self.view.apply(ev);
    }

    fn on_resynced(&mut self) {
        self.view.clear();
    }

    fn on_tick(
        &mut self,
        out: &mut dyn Outbox,
        tally: &mut Tally,
        shared: &Shared,
        now: Instant,
    ) -> Instant {
        if self.view.dead && now >= self.next_respawn {
            if out.send(Command::Respawn).is_ok() {
                tally.respawns += 1;
            }
            self.next_respawn = now + self.plan.respawn_retry;
        }
        if now >= self.next_move {
            if !self.view.dead {
                let (x, y) = self.pick_move();
                if out.send(Command::Move { x, y }).is_ok() {
                    tally.moves += 1;
                    self.view.x = x;
                    self.view.y = y;
                }
            }
            self.next_move = advance(self.next_move, self.plan.move_period, now);
        }
        if now >= self.next_attack {
            if !self.view.dead {
                if let Some((m, _)) = self.view.nearest_monster() {
                    if out.send(Command::Attack { target: m.id }).is_ok() {
                        tally.attacks += 1;
                    }
                }
            }
            self.next_attack = advance(self.next_attack, self.plan.attack_period, now);
        }
        if now >= self.next_chat {
            self.chats += 1;
            let line = format!("bot {} says hello #{}", self.index, self.chats);
            if out.send(Command::say(line)).is_ok() {
                tally.chats += 1;
            }
            self.next_chat = advance(self.next_chat, self.plan.chat_period, now);
        }
        if now >= self.next_ping {
            let client_time = shared.now_us(now);
            if out.send(Command::Ping { client_time }).is_ok() {
                tally.pings += 1;
            }
            self.next_ping = advance(self.next_ping, self.plan.ping_period, now);
        }
        self.next_wake()
    }
}

/// The next due time of a periodic action: one period on, or, when the bot
/// fell behind by more than a period (a stall, a pause), one period from now
/// rather than a burst of catch-up actions.
pub fn advance(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next > now {
        next
    } else {
        now + period
    }
}

/// A step of at most `max_step` from `from` towards `to`, stopping
/// `stop_at` short of it.
pub fn step_toward(from: (f32, f32), to: (f32, f32), max_step: f32, stop_at: f32) -> (f32, f32) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let dist = (dx * dx + dy * dy).sqrt();
    if dist <= stop_at || dist == 0.0 {
        return from;
    }
    let go = max_step.min(dist - stop_at);
    (from.0 + dx / dist * go, from.1 + dy / dist * go)
}

/// A random-walk step along `heading`, turning back off the map's edges.
/// Returns the new point and heading.
pub fn wander(
    from: (f32, f32),
    mut heading: f32,
    step: f32,
    world: &pb::WorldInfo,
) -> ((f32, f32), f32) {
    let (lo_x, hi_x) = bounds(world.width);
    let (lo_y, hi_y) = bounds(world.height);
    let mut x = from.0 + step * heading.cos();
    let mut y = from.1 + step * heading.sin();
    if x < lo_x || x > hi_x {
        heading = PI - heading;
        x = from.0 + step * heading.cos();
    }
    if y < lo_y || y > hi_y {
        heading = -heading;
        y = from.1 + step * heading.sin();
    }
    ((x, y), heading)
}

/// The walkable range on one axis of `size` units: the map is `[0, size)`;
/// keep a margin off the edges when there is room for one.
fn bounds(size: f32) -> (f32, f32) {
    if size <= 0.0 {
        // Unknown size: only the lower edge is certain.
        return (0.0, f32::MAX);
    }
    if size > 4.0 * EDGE_MARGIN {
        (EDGE_MARGIN, size - EDGE_MARGIN)
    } else {
        (0.0, size * 0.999)
    }
}

/// `p` pulled inside the map.
pub fn clamp_to_map(p: (f32, f32), world: &pb::WorldInfo) -> (f32, f32) {
    let (lo_x, hi_x) = bounds(world.width);
    let (lo_y, hi_y) = bounds(world.height);
    (p.0.clamp(lo_x, hi_x), p.1.clamp(lo_y, hi_y))
}

/// Spawns the run's players: player `i` logs in at its slot of the ramp and
/// follows `script`.
pub fn spawn(
    args: &Args,
    seed: u64,
    shared: &Arc<Shared>,
    t0: Instant,
    set: &mut JoinSet<()>,
    script: &Script,
) {
    let plan = Plan::new(args.move_hz);
    let drain = Duration::from_secs_f64(args.drain);
    for i in 0..args.clients {
        let index = args.first_index + i;
        let brain = StandardBot::new(
            plan,
            index,
            SmallRng::seed_from_u64(mix(seed, index as u64, 1)),
        );
        let cfg = client_config(args, index, seed);
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
    use tether_client::SendError;

    #[derive(Default)]
    struct Recorder(Vec<Command>);

    impl Outbox for Recorder {
        fn send(&mut self, cmd: Command) -> Result<u32, SendError> {
            self.0.push(cmd);
            Ok(self.0.len() as u32)
        }
    }

    fn world() -> pb::WorldInfo {
        pb::WorldInfo {
            width: 100.0,
            height: 80.0,
            view_radius: 30.0,
            move_speed: 5.0,
            attack_range: 3.0,
            attack_cooldown_ms: 1000,
            pvp: false,
        }
    }

    fn bot(seed: u64) -> StandardBot {
        StandardBot::new(Plan::new(5.0), 7, SmallRng::seed_from_u64(seed))
    }

    /// Runs a bot's schedule for `secs` seconds of virtual time.
    fn play(b: &mut StandardBot, at: (f32, f32), secs: u64, out: &mut Recorder, tally: &mut Tally) {
        let shared = Shared::default();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut wake = b.start(1, world(), t0);
        (b.view.x, b.view.y) = at;
        while wake < end {
            wake = b.on_tick(out, tally, &shared, wake);
        }
    }

    #[test]
    fn schedule_over_two_minutes() {
        let mut b = bot(1);
        let mut out = Recorder::default();
        let mut t = Tally::default();
        play(&mut b, (50.0, 40.0), 120, &mut out, &mut t);
        // 5 Hz moves, a ping a second, a chat a minute; no monster, no attack.
        assert!((599..=600).contains(&t.moves), "{t:?}");
        assert!((119..=120).contains(&t.pings), "{t:?}");
        assert_eq!(t.chats, 2, "{t:?}");
        assert_eq!(t.attacks, 0);
        let sent = |f: fn(&Command) -> bool| out.0.iter().filter(|c| f(c)).count() as u64;
        assert_eq!(sent(|c| matches!(c, Command::Move { .. })), t.moves);
        assert_eq!(sent(|c| matches!(c, Command::Chat { .. })), 2);
    }

    #[test]
    fn moves_are_legal_and_stay_on_the_map() {
        let mut b = bot(2);
        let mut out = Recorder::default();
        let mut t = Tally::default();
        // Start in a corner, heading anywhere.
        play(&mut b, (1.5, 78.0), 300, &mut out, &mut t);
        let max = b.max_step() * 1.0001;
        let mut prev = (1.5f32, 78.0f32);
        for c in &out.0 {
            if let Command::Move { x, y } = *c {
                let d = ((x - prev.0).powi(2) + (y - prev.1).powi(2)).sqrt();
                assert!(d <= max, "step {d} over {max}");
                assert!(
                    (0.0..100.0).contains(&x) && (0.0..80.0).contains(&y),
                    "{x},{y}"
                );
                prev = (x, y);
            }
        }
        assert!(b.max_step() <= 0.9 * 5.0 / 5.0 + 1e-6);
    }

    #[test]
    fn below_one_hertz_a_move_covers_at_most_the_servers_budget() {
        let slow = Plan::new(0.5);
        let fast = Plan::new(5.0);
        let mut b = bot(4);
        b.start(1, world(), Instant::now());
        b.plan = slow;
        // One second of walking at most (the server's budget), with the margin.
        assert!((b.max_step() - 0.9 * 5.0).abs() < 1e-5, "{}", b.max_step());
        b.plan = fast;
        assert!(
            (b.max_step() - 0.9 * 5.0 / 5.0).abs() < 1e-5,
            "{}",
            b.max_step()
        );
    }

    #[test]
    fn walks_to_the_nearest_monster_and_attacks_it() {
        let mut b = bot(3);
        let t0 = Instant::now();
        let shared = Shared::default();
        let mut wake = b.start(1, world(), t0);
        b.view.apply(&GameEvent::SelfState(pb::SelfState {
            entity_id: 1,
            x: 10.0,
            y: 10.0,
            ..Default::default()
        }));
        b.view.apply(&GameEvent::Appear(pb::EntityAppear {
            id: 99,
            kind: pb::EntityKind::Monster as i32,
            x: 30.0,
            y: 10.0,
            ..Default::default()
        }));
        let mut out = Recorder::default();
        let mut t = Tally::default();
        let end = t0 + Duration::from_secs(10);
        while wake < end {
            wake = b.on_tick(&mut out, &mut t, &shared, wake);
        }
        // 20 units at 4.5 units/s: there within 10 s, never past it.
        let (m, d) = b.view.nearest_monster().unwrap();
        assert_eq!(m.id, 99);
        assert!(d <= 3.0, "still {d} away");
        assert!((4..=5).contains(&t.attacks), "{t:?}");
        assert!(out
            .0
            .iter()
            .any(|c| matches!(c, Command::Attack { target: 99 })));
    }

    #[test]
    fn dead_bots_respawn_and_do_not_walk() {
        let mut b = bot(4);
        let t0 = Instant::now();
        let shared = Shared::default();
        b.start(1, world(), t0);
        b.view
            .apply(&GameEvent::Death(pb::Death { id: 1, killer: 50 }));
        let mut out = Recorder::default();
        let mut t = Tally::default();
        let mut wake = t0;
        let end = t0 + Duration::from_secs(5);
        while wake < end {
            wake = b.on_tick(&mut out, &mut t, &shared, wake);
        }
        assert_eq!(t.moves, 0);
        // Once at once, then every respawn_retry while still dead.
        assert_eq!(t.respawns, 3, "{t:?}");
        b.view.apply(&GameEvent::SelfState(pb::SelfState {
            entity_id: 1,
            dead: false,
            ..Default::default()
        }));
        let end = wake + Duration::from_secs(2);
        while wake < end {
            wake = b.on_tick(&mut out, &mut t, &shared, wake);
        }
        assert!(t.moves >= 9);
        assert_eq!(t.respawns, 3);
    }

    #[test]
    fn stalls_do_not_cause_bursts() {
        let t0 = Instant::now();
        let p = Duration::from_millis(200);
        assert_eq!(advance(t0, p, t0), t0 + p);
        let late = t0 + Duration::from_secs(3);
        assert_eq!(advance(t0, p, late), late + p);
    }

    #[test]
    fn steps() {
        assert_eq!(step_toward((0.0, 0.0), (10.0, 0.0), 1.0, 2.0), (1.0, 0.0));
        assert_eq!(step_toward((0.0, 0.0), (2.5, 0.0), 1.0, 2.0), (0.5, 0.0));
        assert_eq!(step_toward((0.0, 0.0), (1.0, 0.0), 1.0, 2.0), (0.0, 0.0));
        let w = world();
        assert_eq!(clamp_to_map((-5.0, 500.0), &w).0, 1.0);
        assert!(clamp_to_map((-5.0, 500.0), &w).1 < 80.0);
    }
}
