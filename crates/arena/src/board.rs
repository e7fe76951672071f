//! The four-in-a-row board: where a disc lands, and whether it won.

/// Columns of the board.
pub const COLUMNS: usize = 7;
/// Rows of the board.
pub const ROWS: usize = 6;
/// Discs in a line that win.
pub const CONNECT: usize = 4;
/// Discs a match holds at most: the board's cells. This is also the bound
/// on moves per match; a full board ends the match as a draw.
pub const CELLS: usize = COLUMNS * ROWS;

/// One of the two players of a match, by seat: 0 moves first.
pub type Seat = usize;

/// Why a disc could not be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropRefused {
    /// There is no such column.
    NoSuchColumn,
    /// The column is full.
    ColumnFull,
}

/// Where a dropped disc landed and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// The row it landed in (0 = bottom).
    pub row: usize,
    /// It completed a line of [`CONNECT`].
    pub won: bool,
    /// The board is full after it (and it did not win): a draw.
    pub full: bool,
}

/// A board of [`COLUMNS`] x [`ROWS`] cells, filled from the bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// `cells[row * COLUMNS + column]`, row 0 at the bottom.
    cells: [Option<Seat>; CELLS],
    /// Discs per column.
    heights: [u8; COLUMNS],
    moves: u32,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            cells: [None; CELLS],
            heights: [0; COLUMNS],
            moves: 0,
        }
    }
}

impl Board {
    /// The seat whose disc is at (column, row), if any.
    pub fn at(&self, column: usize, row: usize) -> Option<Seat> {
        if column >= COLUMNS || row >= ROWS {
            return None;
        }
        self.cells[row * COLUMNS + column]
    }

    /// Every cell, row by row from the bottom.
    pub fn cells(&self) -> &[Option<Seat>; CELLS] {
        &self.cells
    }

    /// Discs dropped so far.
    pub fn moves(&self) -> u32 {
        self.moves
    }

    /// Whether a disc can go into `column`.
    pub fn can_drop(&self, column: usize) -> bool {
        column < COLUMNS && (self.heights[column] as usize) < ROWS
    }

    /// Drops a disc of `seat` into `column`.
    pub fn drop_disc(&mut self, seat: Seat, column: usize) -> Result<Landed, DropRefused> {
        if column >= COLUMNS {
            return Err(DropRefused::NoSuchColumn);
        }
        let row = self.heights[column] as usize;
        if row >= ROWS {
            return Err(DropRefused::ColumnFull);
        }
        self.cells[row * COLUMNS + column] = Some(seat);
        self.heights[column] += 1;
        self.moves += 1;
        let won = self.line_through(column, row, seat);
        Ok(Landed {
            row,
            won,
            full: !won && self.moves as usize == CELLS,
        })
    }

    /// Whether the disc at (column, row) is part of a line of [`CONNECT`]:
    /// only lines through the last disc can be new.
    fn line_through(&self, column: usize, row: usize, seat: Seat) -> bool {
        const DIRECTIONS: [(isize, isize); 4] = [(1, 0), (0, 1), (1, 1), (1, -1)];
        DIRECTIONS.iter().any(|&(dc, dr)| {
            let run = |sign: isize| {
                let mut n = 0;
                let (mut c, mut r) = (column as isize, row as isize);
                loop {
                    c += sign * dc;
                    r += sign * dr;
                    if c < 0 || r < 0 || self.at(c as usize, r as usize) != Some(seat) {
                        return n;
                    }
                    n += 1;
                }
            };
            1 + run(1) + run(-1) >= CONNECT
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(board: &mut Board, moves: &[(Seat, usize)]) -> Landed {
        let mut last = None;
        for &(seat, column) in moves {
            last = Some(board.drop_disc(seat, column).expect("a legal move"));
        }
        last.expect("at least one move")
    }

    #[test]
    fn discs_stack_from_the_bottom() {
        let mut b = Board::default();
        assert_eq!(b.drop_disc(0, 3).unwrap().row, 0);
        assert_eq!(b.drop_disc(1, 3).unwrap().row, 1);
        assert_eq!(b.at(3, 0), Some(0));
        assert_eq!(b.at(3, 1), Some(1));
        assert_eq!(b.at(3, 2), None);
        assert_eq!(b.moves(), 2);
    }

    #[test]
    fn lines_win_in_every_direction() {
        // Across.
        let mut b = Board::default();
        assert!(play(&mut b, &[(0, 0), (0, 1), (0, 2), (0, 3)]).won);
        // Down.
        let mut b = Board::default();
        assert!(!play(&mut b, &[(1, 6), (1, 6), (1, 6)]).won);
        assert!(play(&mut b, &[(1, 6)]).won);
        // Rising diagonal, closed in the middle.
        let mut b = Board::default();
        let l = play(
            &mut b,
            &[
                (1, 1),
                (1, 2),
                (1, 2),
                (1, 3),
                (1, 3),
                (1, 3),
                (0, 0),
                (0, 1),
                (0, 3),
                (0, 2),
            ],
        );
        assert!(l.won);
        // Falling diagonal: (0, 3), (1, 2), (2, 1), (3, 0).
        let mut b = Board::default();
        let l = play(
            &mut b,
            &[
                (1, 0),
                (1, 0),
                (1, 0),
                (1, 1),
                (1, 1),
                (1, 2),
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
            ],
        );
        assert!(l.won);
        // Three and a gap is no line.
        let mut b = Board::default();
        assert!(!play(&mut b, &[(0, 0), (0, 1), (0, 2), (0, 4)]).won);
        // The other seat's discs break a line.
        let mut b = Board::default();
        assert!(!play(&mut b, &[(0, 0), (0, 1), (1, 2), (0, 3)]).won);
    }

    #[test]
    fn bad_columns_and_full_columns_are_refused() {
        let mut b = Board::default();
        assert_eq!(b.drop_disc(0, COLUMNS), Err(DropRefused::NoSuchColumn));
        assert_eq!(b.drop_disc(0, usize::MAX), Err(DropRefused::NoSuchColumn));
        for i in 0..ROWS {
            b.drop_disc(i % 2, 0).unwrap();
        }
        assert!(!b.can_drop(0));
        assert_eq!(b.drop_disc(0, 0), Err(DropRefused::ColumnFull));
        assert_eq!(b.moves() as usize, ROWS, "a refused move changes nothing");
    }

    #[test]
    fn a_full_board_without_a_line_is_a_draw() {
        // Rows alternate; every other pair of columns is flipped, so no
        // four line up in any direction.
        let mut b = Board::default();
        let seat_of = |c: usize, r: usize| (r % 2) ^ ((c / 2) % 2);
        let mut last = None;
        for c in 0..COLUMNS {
            for r in 0..ROWS {
                last = Some(b.drop_disc(seat_of(c, r), c).unwrap());
                assert!(!last.unwrap().won, "no line at ({c}, {r})");
            }
        }
        assert!(last.unwrap().full);
        assert_eq!(b.moves() as usize, CELLS);
    }
}
