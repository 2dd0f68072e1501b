//! A 2-D grid of ranks split into row and column communicators: the first
//! rank of each row broadcasts a vector along its row, every rank scales
//! it by its column, and each column sums what its ranks hold down to the
//! column's first rank. Rank 0 gathers the column sums and checks them
//! against the same computation done sequentially.
//!
//! Run: `spmdrun -n 6 target/release/examples/grid [columns]` (the ranks
//! form rows of `columns` ranks; the default is the largest divisor of the
//! size up to its square root).

mod common;

use spmd::op;

/// The vector row `row` starts with.
fn row_vector(row: usize, len: usize) -> Vec<i64> {
    (0..len).map(|i| (row * 100 + i) as i64).collect()
}

fn main() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let size = world.size();
    let default = (1..=size).filter(|c| size % c == 0 && c * c <= size).max().unwrap_or(1);
    let columns: usize = common::arg(&world, 1, "columns", default);
    if columns == 0 || size % columns != 0 {
        if world.rank() == 0 {
            eprintln!("grid: {columns} columns do not divide {size} ranks");
        }
        world.abort(2);
    }
    let rows = size / columns;
    let (row, column) = (world.rank() / columns, world.rank() % columns);
    const LEN: usize = 8;

    // Ranks of one row share a color; within it they keep their order, so
    // a rank's rank in its row is its column (and in its column, its row).
    let row_comm = world.split(Some(row as u32), spmd::KEEP_ORDER)?.expect("a color");
    let column_comm = world.split(Some(column as u32), spmd::KEEP_ORDER)?.expect("a color");
    assert_eq!((row_comm.rank(), column_comm.rank()), (column, row));

    let mut v = if column == 0 {
        row_vector(row, LEN)
    } else {
        vec![0; LEN]
    };
    row_comm.broadcast(&mut v, 0)?;
    let scaled: Vec<i64> = v.iter().map(|x| x * (column as i64 + 1)).collect();
    let mut sums = vec![0i64; LEN];
    column_comm.reduce_into(&scaled, &mut sums, &op::Sum, 0)?;

    // The first row holds every column's sums; rank 0 gathers them.
    if row == 0 {
        let mut all = vec![0i64; LEN * columns];
        row_comm.gather_into(&sums, &mut all, 0)?;
        if column == 0 {
            let expected: Vec<i64> = (0..columns)
                .flat_map(|c| {
                    (0..LEN).map(move |i| (0..rows).map(|r| row_vector(r, LEN)[i] * (c as i64 + 1)).sum::<i64>())
                })
                .collect();
            assert_eq!(all, expected, "the column sums differ from the sequential ones");
            println!("grid of {rows} x {columns}: row broadcasts and column sums match the sequential result");
        }
    }
    world.finalize()
}
