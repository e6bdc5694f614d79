//! Tables for the terminal: columns sized to their content (`comfy-table`), no borders, two
//! spaces between columns, numbers right-aligned. Printing only; callers pass strings.

use comfy_table::{CellAlignment, Table, presets};

/// A table with `header`; the columns whose index is in `right` are right-aligned.
pub fn new(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, 2));
        if right.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Prints the table to stdout, without trailing spaces.
pub fn print(t: &Table) {
    for line in t.lines() {
        println!("{}", line.trim_end());
    }
}

/// Prints `key  value` lines, the keys in one column (a value may span lines).
pub fn print_pairs(rows: Vec<(&str, String)>) {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    for col in t.column_iter_mut() {
        col.set_padding((0, 2));
    }
    print(&t);
}
