//! Area of interest: turning position changes into the `EntityAppear`,
//! `EntityMove` and `EntityDisappear` frames that keep every player's view
//! equal to the set of entities within its view radius.
//!
//! Views are not stored. Visibility is a pure function of two positions
//! ([`within`]), and every position change goes through this module, which
//! compares each nearby entity's distance to the old and to the new position:
//!
//! ```text
//!   was in view | is in view | the other player gets | the mover (if a player) gets
//!   ------------+------------+-----------------------+-----------------------------
//!       no      |    yes     | EntityAppear(mover)   | EntityAppear(other)
//!       yes     |    yes     | EntityMove(mover)     | -
//!       yes     |    no      | EntityDisappear(mover)| EntityDisappear(other)
//! ```
//!
//! Because the rule is symmetric and evaluated on the positions everyone was
//! told about, "after every call, each player's view equals the entities within
//! its radius" holds by induction; the property test in `tests/aoi.rs` checks
//! it against a brute-force scan. Each of the mover's three frames is encoded
//! at most once, lazily, and shared by all its recipients.

use bytes::Bytes;

use crate::frames::{appear_frame, disappear_frame, move_frame, send};
use crate::grid::{within, Handle};
use crate::{EntityId, Outbox, World};

impl World {
    /// The id and position of an entity.
    pub(crate) fn position(&self, h: Handle) -> (EntityId, f32, f32) {
        match h {
            Handle::Player(s) => {
                let p = self.players[s as usize]
                    .as_ref()
                    .expect("handles point at live slots");
                (p.id, p.x, p.y)
            }
            Handle::Monster(i) => {
                let m = &self.monsters[i as usize];
                (m.id, m.x, m.y)
            }
        }
    }

    fn set_position(&mut self, h: Handle, x: f32, y: f32) {
        match h {
            Handle::Player(s) => {
                let p = self.player_mut(s);
                p.x = x;
                p.y = y;
            }
            Handle::Monster(i) => {
                let m = &mut self.monsters[i as usize];
                m.x = x;
                m.y = y;
            }
        }
    }

    /// Moves an entity that is in the grid to `(nx, ny)` and tells every
    /// player concerned. Meant for walking-sized steps: the cells walked are
    /// those around both positions (a teleport is `vanish` + `materialize`).
    pub(crate) fn relocate(&mut self, h: Handle, nx: f32, ny: f32, out: &mut Outbox) {
        let (id, ox, oy) = self.position(h);
        if (ox, oy) == (nx, ny) {
            return;
        }
        // The entity struct moves first (its EntityAppear must show the new
        // position); its grid entry keeps the old one until the scan is over,
        // and is skipped by id.
        self.set_position(h, nx, ny);
        let r = self.config.view_radius;
        let r2 = self.view_r2;
        let mover_sees = matches!(h, Handle::Player(_));
        let World {
            grid,
            players,
            monsters,
            appear_scratch,
            ..
        } = self;
        let rect = grid.rect(
            ox.min(nx) - r,
            oy.min(ny) - r,
            ox.max(nx) + r,
            oy.max(ny) + r,
        );
        let mut moved: Option<Bytes> = None;
        let mut appeared: Option<Bytes> = None;
        let mut gone: Option<Bytes> = None;
        for cell in grid.cells(rect) {
            for e in cell {
                if e.id == id {
                    continue;
                }
                let was = within(r2, e.x, e.y, ox, oy);
                let now = within(r2, e.x, e.y, nx, ny);
                let other_sees = matches!(e.handle, Handle::Player(_));
                match (was, now) {
                    (false, false) => {}
                    (true, true) => {
                        if other_sees {
                            let f = moved.get_or_insert_with(|| move_frame(id, nx, ny));
                            send(out, e.id, f);
                        }
                    }
                    (false, true) => {
                        if other_sees {
                            let f = appeared.get_or_insert_with(|| {
                                appear_frame(appear_scratch, players, monsters, h)
                            });
                            send(out, e.id, f);
                        }
                        if mover_sees {
                            let f = appear_frame(appear_scratch, players, monsters, e.handle);
                            out.frames.push((id, f));
                        }
                    }
                    (true, false) => {
                        if other_sees {
                            let f = gone.get_or_insert_with(|| disappear_frame(id));
                            send(out, e.id, f);
                        }
                        if mover_sees {
                            out.frames.push((id, disappear_frame(e.id)));
                        }
                    }
                }
            }
        }
        grid.relocate(h, nx, ny);
    }

    /// Puts an entity into the grid at its current position: players in
    /// range get its EntityAppear; if it is a player, it gets theirs.
    pub(crate) fn materialize(&mut self, h: Handle, out: &mut Outbox) {
        let (id, x, y) = self.position(h);
        let r = self.config.view_radius;
        let r2 = self.view_r2;
        let sees = matches!(h, Handle::Player(_));
        let World {
            grid,
            players,
            monsters,
            appear_scratch,
            ..
        } = self;
        let mut appeared: Option<Bytes> = None;
        for e in grid.entries(grid.around(x, y, r)) {
            if e.id == id || !within(r2, e.x, e.y, x, y) {
                continue;
            }
            if matches!(e.handle, Handle::Player(_)) {
                let f = appeared
                    .get_or_insert_with(|| appear_frame(appear_scratch, players, monsters, h));
                send(out, e.id, f);
            }
            if sees {
                let f = appear_frame(appear_scratch, players, monsters, e.handle);
                out.frames.push((id, f));
            }
        }
        grid.insert(h, id, x, y);
    }

    /// Takes an entity out of the grid: players in range get its
    /// EntityDisappear; with `tell_self`, a player also gets one for every
    /// entity it saw (its view empties).
    pub(crate) fn vanish(&mut self, h: Handle, tell_self: bool, out: &mut Outbox) {
        let (id, x, y) = self.position(h);
        let r = self.config.view_radius;
        let r2 = self.view_r2;
        let sees = tell_self && matches!(h, Handle::Player(_));
        let grid = &mut self.grid;
        let mut gone: Option<Bytes> = None;
        for e in grid.entries(grid.around(x, y, r)) {
            if e.id == id || !within(r2, e.x, e.y, x, y) {
                continue;
            }
            if matches!(e.handle, Handle::Player(_)) {
                send(out, e.id, gone.get_or_insert_with(|| disappear_frame(id)));
            }
            if sees {
                out.frames.push((id, disappear_frame(e.id)));
            }
        }
        grid.remove(h);
    }

    /// Sends `frame` to every player within the view radius of `(x, y)`
    /// (a player standing there included), except `exclude`.
    pub(crate) fn broadcast(
        &self,
        x: f32,
        y: f32,
        exclude: Option<EntityId>,
        frame: &Bytes,
        out: &mut Outbox,
    ) {
        let rect = self.grid.around(x, y, self.config.view_radius);
        for e in self.grid.entries(rect) {
            if matches!(e.handle, Handle::Player(_))
                && Some(e.id) != exclude
                && within(self.view_r2, e.x, e.y, x, y)
            {
                send(out, e.id, frame);
            }
        }
    }
}
