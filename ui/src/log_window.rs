//! Virtual scrolling of a log: which rows exist, where each one is, and
//! which are close enough to the viewport to be in the DOM.
//!
//! Every row has the same height. The rows are, per section (step), one
//! header row and — unless the section is folded — one row per line. Rows
//! are addressed by a flat index; [`RowIndex`] maps between that index and
//! (section, line) with a binary search over the sections' first rows.

use std::ops::Range;

/// What a row shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// The header of a section (by index).
    Header(usize),
    /// A line: section index, 0-based line in it.
    Line(usize, usize),
}

/// The shape of one section for the index: its line count and whether it
/// is folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionShape {
    /// Lines in the section.
    pub lines: usize,
    /// Folded: only the header row shows.
    pub collapsed: bool,
}

/// Flat row numbering over sections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowIndex {
    /// Row of each section's header.
    starts: Vec<usize>,
    /// Shown line rows of each section.
    shown: Vec<usize>,
    total: usize,
}

impl RowIndex {
    /// The index of `sections`, in order.
    pub fn new(sections: impl IntoIterator<Item = SectionShape>) -> Self {
        let mut index = RowIndex::default();
        for s in sections {
            let shown = if s.collapsed { 0 } else { s.lines };
            index.starts.push(index.total);
            index.shown.push(shown);
            index.total = index.total.saturating_add(1).saturating_add(shown);
        }
        index
    }

    /// Number of rows.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The row of section `s`'s header.
    pub fn header_row(&self, s: usize) -> Option<usize> {
        self.starts.get(s).copied()
    }

    /// The row of line `line` of section `s` (`None` when folded or out of
    /// range).
    pub fn line_row(&self, s: usize, line: usize) -> Option<usize> {
        let start = *self.starts.get(s)?;
        (line < *self.shown.get(s)?).then(|| start + 1 + line)
    }

    /// What row `row` shows.
    pub fn locate(&self, row: usize) -> Option<Row> {
        if row >= self.total {
            return None;
        }
        // The last section whose header row is at or before `row`.
        let s = self.starts.partition_point(|&start| start <= row).checked_sub(1)?;
        let start = self.starts[s];
        if row == start { Some(Row::Header(s)) } else { Some(Row::Line(s, row - start - 1)) }
    }
}

/// Geometry of the scrolled viewport, in CSS pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Viewport {
    /// `scrollTop` of the scroller.
    pub scroll_top: f64,
    /// Visible height (`clientHeight`).
    pub height: f64,
}

/// The rows to put in the DOM: the visible ones plus `margin` rows either
/// side, with both ends rounded outwards to a multiple of `quantum` so that
/// small scrolls do not change the range (and re-render nothing).
pub fn window(view: Viewport, row_height: f64, total: usize, margin: usize, quantum: usize) -> Range<usize> {
    if total == 0 || row_height <= 0.0 || !row_height.is_finite() {
        return 0..0;
    }
    let quantum = quantum.max(1);
    let top = if view.scroll_top.is_finite() { view.scroll_top.max(0.0) } else { 0.0 };
    let height = if view.height.is_finite() { view.height.max(0.0) } else { 0.0 };
    let first = (top / row_height).floor() as usize;
    let last = ((top + height) / row_height).ceil() as usize;
    let start = first.saturating_sub(margin) / quantum * quantum;
    let end = last.saturating_add(margin).div_ceil(quantum).saturating_mul(quantum);
    let end = end.min(total);
    start.min(end)..end
}

/// The `scrollTop` that shows `row` a third of the way down the viewport.
pub fn scroll_to_row(row: usize, row_height: f64, viewport_height: f64) -> f64 {
    (row as f64 * row_height - viewport_height / 3.0).max(0.0)
}

/// The `scrollTop` that shows `row` if it is off screen, or `None` when it
/// is already fully visible (so stepping through matches does not jump).
pub fn reveal_row(row: usize, row_height: f64, view: Viewport) -> Option<f64> {
    let top = row as f64 * row_height;
    let bottom = top + row_height;
    if top >= view.scroll_top && bottom <= view.scroll_top + view.height {
        None
    } else {
        Some(scroll_to_row(row, row_height, view.height))
    }
}

/// True when the viewport is at (or within `slack` pixels of) the bottom:
/// the viewer follows new lines only then.
pub fn at_bottom(view: Viewport, scroll_height: f64, slack: f64) -> bool {
    view.scroll_top + view.height >= scroll_height - slack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(v: &[(usize, bool)]) -> RowIndex {
        RowIndex::new(v.iter().map(|&(lines, collapsed)| SectionShape { lines, collapsed }))
    }

    #[test]
    fn maps_rows_both_ways() {
        let idx = shapes(&[(2, false), (3, true), (1, false), (0, false)]);
        // H0 L0.0 L0.1 H1 H2 L2.0 H3
        assert_eq!(idx.total(), 7);
        assert_eq!(idx.locate(0), Some(Row::Header(0)));
        assert_eq!(idx.locate(2), Some(Row::Line(0, 1)));
        assert_eq!(idx.locate(3), Some(Row::Header(1)));
        assert_eq!(idx.locate(4), Some(Row::Header(2)));
        assert_eq!(idx.locate(5), Some(Row::Line(2, 0)));
        assert_eq!(idx.locate(6), Some(Row::Header(3)));
        assert_eq!(idx.locate(7), None);
        assert_eq!(idx.line_row(0, 1), Some(2));
        assert_eq!(idx.line_row(1, 0), None);
        assert_eq!(idx.line_row(2, 0), Some(5));
        assert_eq!(idx.line_row(2, 1), None);
        assert_eq!(idx.line_row(9, 0), None);
        assert_eq!(idx.header_row(3), Some(6));
        for row in 0..idx.total() {
            match idx.locate(row) {
                Some(Row::Header(s)) => assert_eq!(idx.header_row(s), Some(row)),
                Some(Row::Line(s, l)) => assert_eq!(idx.line_row(s, l), Some(row)),
                None => panic!("row {row} unmapped"),
            }
        }
    }

    #[test]
    fn empty_index() {
        let idx = RowIndex::new([]);
        assert_eq!(idx.total(), 0);
        assert_eq!(idx.locate(0), None);
    }

    #[test]
    fn large_logs_locate_quickly() {
        let idx = RowIndex::new((0..1000).map(|_| SectionShape { lines: 100, collapsed: false }));
        assert_eq!(idx.total(), 101_000);
        assert_eq!(idx.locate(100_999), Some(Row::Line(999, 99)));
        assert_eq!(idx.locate(50_500), Some(Row::Header(500)));
    }

    #[test]
    fn window_covers_the_viewport_with_margin() {
        let v = Viewport { scroll_top: 2000.0, height: 400.0 };
        let w = window(v, 20.0, 100_000, 10, 1);
        assert_eq!(w, 90..130);
        let w = window(v, 20.0, 100_000, 10, 16);
        assert_eq!(w, 80..144);
        // Near the ends.
        assert_eq!(window(Viewport { scroll_top: 0.0, height: 400.0 }, 20.0, 5, 10, 16), 0..5);
        assert_eq!(window(Viewport { scroll_top: 1e9, height: 400.0 }, 20.0, 50, 10, 16), 50..50);
        // Nonsense geometry never panics.
        assert_eq!(window(v, 0.0, 10, 1, 1), 0..0);
        assert_eq!(window(Viewport { scroll_top: f64::NAN, height: f64::INFINITY }, 20.0, 10, 1, 1), 0..1);
        assert_eq!(window(v, 20.0, 0, 1, 1), 0..0);
    }

    #[test]
    fn small_scrolls_keep_the_window() {
        let a = window(Viewport { scroll_top: 2000.0, height: 400.0 }, 20.0, 1000, 30, 16);
        let b = window(Viewport { scroll_top: 2019.0, height: 400.0 }, 20.0, 1000, 30, 16);
        assert_eq!(a, b);
    }

    #[test]
    fn scroll_targets() {
        assert_eq!(scroll_to_row(0, 20.0, 600.0), 0.0);
        assert_eq!(scroll_to_row(100, 20.0, 600.0), 1800.0);
        let v = Viewport { scroll_top: 1000.0, height: 200.0 };
        assert_eq!(reveal_row(55, 20.0, v), None);
        assert!(reveal_row(10, 20.0, v).is_some());
        assert!(reveal_row(60, 20.0, v).is_some());
        assert!(at_bottom(Viewport { scroll_top: 795.0, height: 200.0 }, 1000.0, 8.0));
        assert!(!at_bottom(Viewport { scroll_top: 700.0, height: 200.0 }, 1000.0, 8.0));
    }
}
