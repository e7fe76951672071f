//! Server-authoritative movement: the client proposes positions, the world
//! accepts or refuses them.
//!
//! Each player has a *move budget*, a distance in world units. It fills at
//! `move_speed` per second of real time, up to [`MOVE_BUDGET_MS`] worth; each
//! accepted move spends its straight-line length. A move longer than the
//! budget (plus [`MOVE_TOLERANCE`] for float rounding), off the map, or by a
//! dead character is refused: the mover gets a `Correction` with its
//! authoritative position and nothing else changes. Accepted moves are not
//! echoed to the mover; players who see it get `EntityMove` (see
//! `visibility.rs`).
//!
//! Why a bucket and not "distance <= speed * time since the last move": moves
//! arrive with network jitter. A client walking at exactly `move_speed` whose
//! reports bunch up (one late, the next on time) is never ahead of the
//! bucket by more than `move_speed * jitter`, and the bucket's headroom above
//! one report's worth of walking absorbs that. With a one-second bucket a
//! client reporting at 5 Hz tolerates 800 ms of jitter, one at 2 Hz 500 ms, so
//! anything reporting at 1.25 Hz or faster survives the ~200 ms of jitter we
//! design for. A client walking at twice the speed gains `move_speed` per
//! second on the bucket and empties even a full one within a second. Standing
//! still banks at most one second: no stored-up teleports.

use tether_proto::pb::{self, server_message::Msg};

use crate::frames::{frame, send};
use crate::grid::Handle;
use crate::{Outbox, World};

/// Walking time the move budget holds at most (see the module doc for why one
/// second: it covers 200 ms of jitter at >= 1.25 Hz and catches 2x speed
/// within a second).
pub const MOVE_BUDGET_MS: u64 = 1_000;

/// Distance, in world units, by which a move may exceed the budget: float
/// rounding of positions (f32 has about 1/4000 unit of precision at 4 km),
/// never gameplay.
pub const MOVE_TOLERANCE: f32 = 0.01;

impl World {
    /// The fullest a move budget gets.
    pub(crate) fn move_budget_cap(&self) -> f32 {
        self.config.move_speed * MOVE_BUDGET_MS as f32 / 1000.0
    }

    /// Whether a position is on the map: `[0, width) x [0, height)`.
    pub(crate) fn on_map(&self, x: f32, y: f32) -> bool {
        // NaN fails every comparison, infinities fail the upper bound.
        x >= 0.0 && y >= 0.0 && x < self.config.width && y < self.config.height
    }

    /// A uniformly random point on the map: where new characters and
    /// respawned ones appear, so a population spreads evenly.
    pub(crate) fn spawn_point(&mut self) -> (f32, f32) {
        use rand::Rng;
        let (w, h) = (self.config.width, self.config.height);
        let x = self.rng.random_range(0.0..w);
        let y = self.rng.random_range(0.0..h);
        // Guard against rounding up onto the excluded edge.
        (if x < w { x } else { 0.0 }, if y < h { y } else { 0.0 })
    }

    /// A `Move{x, y}` input of the player in `slot`.
    pub(crate) fn move_player(
        &mut self,
        now_ms: u64,
        slot: u32,
        seq: u32,
        x: f32,
        y: f32,
        out: &mut Outbox,
    ) {
        let speed = self.config.move_speed;
        let cap = self.move_budget_cap();
        let on_map = self.on_map(x, y);
        let p = self.player_mut(slot);
        let elapsed = now_ms.saturating_sub(p.budget_ms);
        p.move_budget = (p.move_budget + speed * elapsed as f32 / 1000.0).min(cap);
        p.budget_ms = p.budget_ms.max(now_ms);

        let refusal = if p.dead {
            Some(pb::CorrectionReason::Dead)
        } else if !on_map {
            Some(pb::CorrectionReason::OffMap)
        } else {
            let (dx, dy) = (x - p.x, y - p.y);
            let dist = (dx * dx + dy * dy).sqrt();
            if dist > p.move_budget + MOVE_TOLERANCE {
                Some(pb::CorrectionReason::TooFast)
            } else {
                // Rounding may leave the budget a hair below zero; that is
                // the tolerance being used, not debt.
                p.move_budget = (p.move_budget - dist).max(0.0);
                None
            }
        };
        if let Some(reason) = refusal {
            let f = frame(Msg::Correction(pb::Correction {
                seq,
                x: p.x,
                y: p.y,
                reason: reason as i32,
            }));
            let id = p.id;
            send(out, id, &f);
            return;
        }
        if (p.x, p.y) != (x, y) {
            self.relocate(Handle::Player(slot), x, y, out);
            self.mark_dirty(slot);
        }
    }
}
