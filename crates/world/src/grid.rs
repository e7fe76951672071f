//! The interest grid: a uniform grid of cells over the map, each listing the
//! entities inside it with their positions.
//!
//! Area-of-interest queries ("who is within the view radius of this point")
//! walk the few cells that overlap the query's bounding square and test the
//! distance of each entry. Entries carry the position and the id, so a query
//! reads a handful of small contiguous arrays and never touches the entity
//! structs: that is what keeps the move hot path cache-friendly.
//!
//! The grid does not decide visibility; it only narrows the candidates. The
//! rule itself is [`within`], and it alone.

use crate::EntityId;

/// Cell side as a fraction of the view radius. With radius-sized cells a view
/// query walks 3x3 cells (2x2 to 4x4 at the extremes) holding about three
/// times the view circle's entities. Half-radius cells cut the candidates to
/// twice the circle but walk 25 mostly empty cells, and the world as a whole
/// ran about a third slower with them (best of six runs each of
/// `cargo run --release -p tether-world --example shard_load`, 10,000 players).
pub const CELL_SIZE_VIEW_RADII: f32 = 1.0;

/// Cap on the number of cells, whatever the map size: the grid's memory is
/// bounded by the configuration (a huge map gets coarser cells instead).
pub const MAX_GRID_CELLS: usize = 1 << 20;

/// Where an entity lives in the world's storage: a player slot or a monster
/// index. Cheap to copy, meaningful only inside one [`crate::World`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Player(u32),
    Monster(u32),
}

/// One entity in a cell.
#[derive(Debug, Clone, Copy)]
pub struct CellEntry {
    pub id: EntityId,
    pub x: f32,
    pub y: f32,
    pub handle: Handle,
}

/// Where an entry sits: its cell and its index in the cell's list.
#[derive(Debug, Clone, Copy)]
struct Loc {
    cell: u32,
    idx: u32,
}

/// The inclusive range of cells a query walks.
#[derive(Debug, Clone, Copy)]
pub struct CellRect {
    cx0: u32,
    cx1: u32,
    cy0: u32,
    cy1: u32,
}

/// Whether `a` and `b` see each other: distance <= radius, inclusive. The
/// formula is symmetric bit for bit (the differences only change sign), so
/// visibility is always mutual.
#[inline]
pub fn within(r2: f32, ax: f32, ay: f32, bx: f32, by: f32) -> bool {
    let dx = ax - bx;
    let dy = ay - by;
    dx * dx + dy * dy <= r2
}

/// Uniform grid of cells over the map.
pub struct InterestGrid {
    inv_cell: f32,
    cols: u32,
    rows: u32,
    cells: Vec<Vec<CellEntry>>,
    player_locs: Vec<Loc>,
    monster_locs: Vec<Loc>,
}

impl InterestGrid {
    pub fn new(width: f32, height: f32, view_radius: f32) -> Self {
        let mut cell = view_radius * CELL_SIZE_VIEW_RADII;
        let count = |cell: f32| {
            let cols = (width / cell).ceil().max(1.0) as usize;
            let rows = (height / cell).ceil().max(1.0) as usize;
            (cols, rows)
        };
        while {
            let (c, r) = count(cell);
            c.saturating_mul(r) > MAX_GRID_CELLS
        } {
            cell *= 2.0;
        }
        let (cols, rows) = count(cell);
        InterestGrid {
            inv_cell: 1.0 / cell,
            cols: cols as u32,
            rows: rows as u32,
            cells: (0..cols * rows).map(|_| Vec::new()).collect(),
            player_locs: Vec::new(),
            monster_locs: Vec::new(),
        }
    }

    /// Cell coordinates of a point, clamped onto the grid (queries may reach
    /// past the map's edge).
    #[inline]
    fn cell_xy(&self, x: f32, y: f32) -> (u32, u32) {
        // `as` saturates: negative and NaN become 0, huge becomes u32::MAX.
        let cx = ((x * self.inv_cell) as u32).min(self.cols - 1);
        let cy = ((y * self.inv_cell) as u32).min(self.rows - 1);
        (cx, cy)
    }

    #[inline]
    fn cell_index(&self, x: f32, y: f32) -> u32 {
        let (cx, cy) = self.cell_xy(x, y);
        cy * self.cols + cx
    }

    fn locs(&mut self, h: Handle) -> (&mut Vec<Loc>, usize) {
        match h {
            Handle::Player(i) => (&mut self.player_locs, i as usize),
            Handle::Monster(i) => (&mut self.monster_locs, i as usize),
        }
    }

    fn loc(&self, h: Handle) -> Loc {
        match h {
            Handle::Player(i) => self.player_locs[i as usize],
            Handle::Monster(i) => self.monster_locs[i as usize],
        }
    }

    pub fn insert(&mut self, h: Handle, id: EntityId, x: f32, y: f32) {
        let cell = self.cell_index(x, y);
        let list = &mut self.cells[cell as usize];
        let idx = list.len() as u32;
        list.push(CellEntry {
            id,
            x,
            y,
            handle: h,
        });
        let (locs, i) = self.locs(h);
        if locs.len() <= i {
            locs.resize(i + 1, Loc { cell: 0, idx: 0 });
        }
        locs[i] = Loc { cell, idx };
    }

    pub fn remove(&mut self, h: Handle) {
        let Loc { cell, idx } = self.loc(h);
        let list = &mut self.cells[cell as usize];
        list.swap_remove(idx as usize);
        if let Some(moved) = list.get(idx as usize).map(|e| e.handle) {
            let (locs, i) = self.locs(moved);
            locs[i].idx = idx;
        }
    }

    /// Moves an entry to a new position, changing cells when needed.
    pub fn relocate(&mut self, h: Handle, x: f32, y: f32) {
        let loc = self.loc(h);
        let cell = self.cell_index(x, y);
        if cell == loc.cell {
            let e = &mut self.cells[cell as usize][loc.idx as usize];
            e.x = x;
            e.y = y;
        } else {
            let id = self.cells[loc.cell as usize][loc.idx as usize].id;
            self.remove(h);
            self.insert(h, id, x, y);
        }
    }

    /// The cells overlapping the square `[x0, x1] x [y0, y1]`.
    pub fn rect(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> CellRect {
        let (cx0, cy0) = self.cell_xy(x0, y0);
        let (cx1, cy1) = self.cell_xy(x1, y1);
        CellRect { cx0, cx1, cy0, cy1 }
    }

    /// The cells a query of `radius` around `(x, y)` has to walk.
    pub fn around(&self, x: f32, y: f32, radius: f32) -> CellRect {
        self.rect(x - radius, y - radius, x + radius, y + radius)
    }

    /// The cells of `rect`, row by row. Hot loops iterate these and then
    /// each cell's slice: two plain nested loops, which compile tighter than
    /// one flattened iterator.
    pub fn cells(&self, rect: CellRect) -> impl Iterator<Item = &[CellEntry]> + '_ {
        let cols = self.cols as usize;
        (rect.cy0..=rect.cy1).flat_map(move |cy| {
            let row = cy as usize * cols;
            self.cells[row + rect.cx0 as usize..=row + rect.cx1 as usize]
                .iter()
                .map(Vec::as_slice)
        })
    }

    /// Every entry in the cells of `rect`.
    pub fn entries(&self, rect: CellRect) -> impl Iterator<Item = &CellEntry> + '_ {
        self.cells(rect).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_inserts_moves_and_removals() {
        let mut g = InterestGrid::new(100.0, 100.0, 10.0);
        g.insert(Handle::Player(0), 1, 1.0, 1.0);
        g.insert(Handle::Player(1), 2, 2.0, 2.0);
        g.insert(Handle::Monster(0), 3, 3.0, 3.0);
        g.relocate(Handle::Player(0), 90.0, 90.0);
        g.remove(Handle::Player(1));
        g.relocate(Handle::Monster(0), 3.5, 3.5);
        let ids = |x, y| {
            let mut v: Vec<_> = g.entries(g.around(x, y, 5.0)).map(|e| e.id).collect();
            v.sort();
            v
        };
        assert_eq!(ids(2.0, 2.0), vec![3]);
        assert_eq!(ids(90.0, 90.0), vec![1]);
        let all: Vec<_> = g
            .entries(g.rect(-1e9, -1e9, 1e9, 1e9))
            .map(|e| e.id)
            .collect();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn huge_maps_get_coarser_cells_not_more_memory() {
        let g = InterestGrid::new(1e7, 1e7, 1.0);
        assert!(g.cells.len() <= MAX_GRID_CELLS);
    }
}
