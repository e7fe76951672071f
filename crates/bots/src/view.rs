//! What one bot knows of the world: its own character and the entities in
//! its view, kept from `SelfState`, `EntityAppear` / `Move` / `Disappear`,
//! `Correction` and `Death`.

use tether_client::pb::EntityKind;
use tether_client::GameEvent;

/// Most entities a bot tracks. A view holds a few dozen at the load's
/// density; past the cap new arrivals are ignored (the bot just does not
/// see them), so a crowded spot cannot grow a bot's memory.
pub const MAX_SEEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub id: u64,
    pub x: f32,
    pub y: f32,
    pub monster: bool,
    pub dead: bool,
}

#[derive(Debug, Clone, Default)]
pub struct View {
    pub me: u64,
    pub x: f32,
    pub y: f32,
    pub dead: bool,
    seen: Vec<Seen>,
}

impl View {
    pub fn new(me: u64) -> View {
        View {
            me,
            ..View::default()
        }
    }

    /// Forget every other entity (a snapshot follows).
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn find(&mut self, id: u64) -> Option<&mut Seen> {
        self.seen.iter_mut().find(|s| s.id == id)
    }

    pub fn apply(&mut self, ev: &GameEvent) {
        match ev {
            GameEvent::SelfState(s) => {
                if s.entity_id != 0 {
                    self.me = s.entity_id;
                }
                self.x = s.x;
                self.y = s.y;
                self.dead = s.dead;
            }
            GameEvent::Appear(a) => {
                if a.id == self.me {
                    self.x = a.x;
                    self.y = a.y;
                    self.dead = a.dead;
                    return;
                }
                let seen = Seen {
                    id: a.id,
                    x: a.x,
                    y: a.y,
                    monster: a.kind == EntityKind::Monster as i32,
                    dead: a.dead,
                };
                if let Some(s) = self.find(a.id) {
                    *s = seen;
                } else if self.seen.len() < MAX_SEEN {
                    self.seen.push(seen);
                }
            }
            GameEvent::Move(m) => {
                if m.id == self.me {
                    self.x = m.x;
                    self.y = m.y;
                } else if let Some(s) = self.find(m.id) {
                    s.x = m.x;
                    s.y = m.y;
                }
            }
            GameEvent::Disappear(d) => {
                if let Some(i) = self.seen.iter().position(|s| s.id == d.id) {
                    self.seen.swap_remove(i);
                }
            }
            GameEvent::Correction(c) => {
                self.x = c.x;
                self.y = c.y;
            }
            GameEvent::Death(d) => {
                if d.id == self.me {
                    self.dead = true;
                } else if let Some(s) = self.find(d.id) {
                    s.dead = true;
                }
            }
            GameEvent::Stats(s) if s.hp > 0 => self.dead = false,
            _ => {}
        }
    }

    /// The nearest living monster, and its distance.
    pub fn nearest_monster(&self) -> Option<(&Seen, f32)> {
        self.seen
            .iter()
            .filter(|s| s.monster && !s.dead)
            .map(|s| (s, ((s.x - self.x).powi(2) + (s.y - self.y).powi(2)).sqrt()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_client::pb;

    fn appear(id: u64, kind: EntityKind, x: f32, y: f32) -> GameEvent {
        GameEvent::Appear(pb::EntityAppear {
            id,
            kind: kind as i32,
            x,
            y,
            ..Default::default()
        })
    }

    #[test]
    fn tracks_entities_and_picks_the_nearest_live_monster() {
        let mut v = View::new(1);
        v.apply(&GameEvent::SelfState(pb::SelfState {
            entity_id: 1,
            x: 10.0,
            y: 10.0,
            ..Default::default()
        }));
        v.apply(&appear(2, EntityKind::Monster, 20.0, 10.0));
        v.apply(&appear(3, EntityKind::Monster, 13.0, 10.0));
        v.apply(&appear(4, EntityKind::Player, 10.5, 10.0));
        assert_eq!(v.len(), 3);
        assert_eq!(v.nearest_monster().unwrap().0.id, 3);

        v.apply(&GameEvent::Death(pb::Death { id: 3, killer: 1 }));
        assert_eq!(v.nearest_monster().unwrap().0.id, 2);

        v.apply(&GameEvent::Move(pb::EntityMove {
            id: 2,
            x: 11.0,
            y: 10.0,
        }));
        let (m, d) = v.nearest_monster().unwrap();
        assert_eq!(m.id, 2);
        assert!((d - 1.0).abs() < 1e-6);

        v.apply(&GameEvent::Disappear(pb::EntityDisappear { id: 2 }));
        assert!(v.nearest_monster().is_none());

        v.apply(&GameEvent::Correction(pb::Correction {
            seq: 5,
            x: 3.0,
            y: 4.0,
            reason: 0,
        }));
        assert_eq!((v.x, v.y), (3.0, 4.0));

        v.apply(&GameEvent::Death(pb::Death { id: 1, killer: 9 }));
        assert!(v.dead);
        v.clear();
        assert!(v.is_empty());
    }

    #[test]
    fn the_view_is_capped() {
        let mut v = View::new(1);
        for id in 0..(MAX_SEEN as u64 + 50) {
            v.apply(&appear(id + 10, EntityKind::Player, 0.0, 0.0));
        }
        assert_eq!(v.len(), MAX_SEEN);
    }
}
