//! World configuration: map size, view radius, speeds and timers, and how a
//! map is sized for a target population.

use std::f32::consts::PI;

/// Default radius of a player's view, in world units (1 unit ~ 1 metre). Forty
/// metres is "across the street": far enough to see a fight coming, near enough
/// that a crowded town does not flood every client with everyone in it.
pub const DEFAULT_VIEW_RADIUS: f32 = 40.0;

/// Default walking speed, units per second (a brisk jog).
pub const DEFAULT_MOVE_SPEED: f32 = 6.0;

/// Default reach of a basic attack. Below the view radius, so an attacker
/// always sees its target and the Damage frames about it.
pub const DEFAULT_ATTACK_RANGE: f32 = 12.0;

/// Default time between two attacks of one player.
pub const DEFAULT_ATTACK_COOLDOWN_MS: u64 = 1_000;

/// Default interval of [`crate::World::tick`]: 10 Hz is fine enough for monster
/// AI (which acts at most twice a second) and regeneration.
pub const DEFAULT_TICK_MS: u64 = 100;

/// Default time a dead monster stays a corpse before it respawns at home.
pub const DEFAULT_MONSTER_RESPAWN_MS: u64 = 10_000;

/// Players each player sees on average when the population is spread
/// uniformly (docs/BENCHMARKS.md, `--density 8`).
pub const DEFAULT_DENSITY: f32 = 8.0;

/// Population [`WorldConfig::default`] is sized for: the headline load.
pub const DEFAULT_POPULATION: usize = 10_000;

/// Monsters per view-circle of map area: enough that a player usually has a
/// few in sight to fight, few enough that their wandering stays a small share
/// of the traffic (see `monsters.rs`).
pub const MONSTERS_PER_VIEW_AREA: f32 = 3.0;

/// A map always has at least this many monsters, so tiny test worlds still
/// have something to fight.
pub const MIN_MONSTERS: usize = 8;

/// Monster cap: memory and per-tick AI work stay bounded whatever the
/// configuration asks for (fifty times the headline map's ~3,750).
pub const MAX_MONSTERS: usize = 200_000;

/// The smallest map side, in view radii. Below about four radii every player
/// would see the whole map and the interest grid would have nothing to cut.
pub const MIN_MAP_VIEW_RADII: f32 = 4.0;

/// Seed of the default configuration (ASCII "TETHER"); the shard index is
/// mixed in, so shards of one server do not mirror each other.
pub const DEFAULT_SEED: u64 = 0x5445_5448_4552;

/// Smallest accepted map side, view radius, speed or range: guards against
/// zero or negative values that would make divisions or the grid degenerate.
const MIN_POSITIVE: f32 = 0.5;

/// How one shard's map and rules are set up.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Map width; positions are in `[0, width)`.
    pub width: f32,
    /// Map height; positions are in `[0, height)`.
    pub height: f32,
    /// A player sees exactly the entities within this distance (inclusive).
    pub view_radius: f32,
    /// Player walking speed, units per second.
    pub move_speed: f32,
    /// Reach of a player's basic attack (at most `view_radius`: an attacker
    /// always sees its target).
    pub attack_range: f32,
    /// Time between two attacks of one player.
    pub attack_cooldown_ms: u64,
    /// Whether players may attack players.
    pub pvp: bool,
    /// Monsters on the map (they respawn at home after death).
    pub monsters: usize,
    /// Time a dead monster stays a corpse before it respawns at home.
    pub monster_respawn_ms: u64,
    /// Interval of `tick` (monster AI, respawns, regeneration).
    pub tick_ms: u64,
    /// Seed of the world's random numbers (spawn points, damage, loot, AI);
    /// the shard index is mixed in.
    pub seed: u64,
}

impl WorldConfig {
    /// A map sized so that, with `players` spread uniformly, each sees about
    /// `density` other players inside its view radius (docs/BENCHMARKS.md, `--density`).
    ///
    /// Area = players * PI * r^2 / density on a square map, at least
    /// [`MIN_MAP_VIEW_RADII`] view radii a side; [`MONSTERS_PER_VIEW_AREA`]
    /// monsters per view circle of area, at least [`MIN_MONSTERS`]. A density
    /// that is not a positive number falls back to [`DEFAULT_DENSITY`].
    pub fn for_population(players: usize, density: f32) -> Self {
        let r = DEFAULT_VIEW_RADIUS as f64;
        let density = if density.is_finite() && density > 0.0 {
            density as f64
        } else {
            DEFAULT_DENSITY as f64
        };
        let view_area = std::f64::consts::PI * r * r;
        let area = players as f64 * view_area / density;
        let side = area.sqrt().max(MIN_MAP_VIEW_RADII as f64 * r);
        let monsters = ((side * side) / view_area * MONSTERS_PER_VIEW_AREA as f64).round() as usize;
        WorldConfig {
            width: side as f32,
            height: side as f32,
            view_radius: DEFAULT_VIEW_RADIUS,
            move_speed: DEFAULT_MOVE_SPEED,
            attack_range: DEFAULT_ATTACK_RANGE,
            attack_cooldown_ms: DEFAULT_ATTACK_COOLDOWN_MS,
            pvp: false,
            monsters: monsters.clamp(MIN_MONSTERS, MAX_MONSTERS),
            monster_respawn_ms: DEFAULT_MONSTER_RESPAWN_MS,
            tick_ms: DEFAULT_TICK_MS,
            seed: DEFAULT_SEED,
        }
    }

    /// Area of one view circle.
    pub fn view_area(&self) -> f32 {
        PI * self.view_radius * self.view_radius
    }

    /// The same configuration with nonsense values (zero, negative, NaN,
    /// over the caps) replaced by the nearest sane ones, so the world never
    /// divides by zero or allocates without bound.
    pub(crate) fn sanitized(mut self) -> Self {
        fn positive(v: f32, fallback: f32) -> f32 {
            if v.is_finite() && v >= MIN_POSITIVE {
                v
            } else {
                fallback
            }
        }
        self.view_radius = positive(self.view_radius, DEFAULT_VIEW_RADIUS);
        self.width = positive(self.width, MIN_MAP_VIEW_RADII * self.view_radius);
        self.height = positive(self.height, MIN_MAP_VIEW_RADII * self.view_radius);
        self.move_speed = positive(self.move_speed, DEFAULT_MOVE_SPEED);
        // An attacker must see its target (and the Damage frames about it).
        self.attack_range = positive(self.attack_range, DEFAULT_ATTACK_RANGE).min(self.view_radius);
        self.monsters = self.monsters.min(MAX_MONSTERS);
        self
    }
}

impl Default for WorldConfig {
    /// The headline load: [`DEFAULT_POPULATION`] players at [`DEFAULT_DENSITY`].
    fn default() -> Self {
        Self::for_population(DEFAULT_POPULATION, DEFAULT_DENSITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_sizing_gives_the_asked_density() {
        let c = WorldConfig::for_population(10_000, 8.0);
        let seen = 10_000.0 * c.view_area() / (c.width * c.height);
        assert!((seen - 8.0).abs() < 0.01, "{seen}");
        // ~1250 view circles of area, 3 monsters each.
        assert!((3_700..=3_800).contains(&c.monsters), "{}", c.monsters);
        assert_eq!(c.view_radius, 40.0);
        assert_eq!(c.move_speed, 6.0);
        assert!(!c.pvp);
    }

    #[test]
    fn tiny_and_silly_populations_still_make_a_playable_map() {
        for (players, density) in [(0, 8.0), (1, 8.0), (10, f32::NAN), (10, -1.0)] {
            let c = WorldConfig::for_population(players, density);
            assert!(c.width >= MIN_MAP_VIEW_RADII * c.view_radius);
            assert!(c.monsters >= MIN_MONSTERS);
        }
        let c = WorldConfig {
            width: f32::NAN,
            view_radius: 0.0,
            monsters: usize::MAX,
            ..WorldConfig::default()
        }
        .sanitized();
        assert_eq!(c.view_radius, DEFAULT_VIEW_RADIUS);
        assert!(c.width > 0.0);
        assert_eq!(c.monsters, MAX_MONSTERS);
    }
}
