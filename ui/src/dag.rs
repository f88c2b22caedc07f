//! The job graph of a run laid out in columns: a job's column is the length
//! of the longest chain of `needs` leading to it, so every job sits right
//! of everything it waits for. Matrix expansions of one job key in a
//! column form a group. Positions are computed here (fixed sizes), so the
//! view only draws boxes and the edges between groups.
//!
//! Server data may be odd — needs naming unknown jobs, cycles, duplicate
//! ids — and the layout never panics on it: unknown needs are ignored and
//! jobs on a cycle go in a column after everything else.

use std::collections::HashMap;

/// What the layout needs to know of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInput {
    /// Job id ("42.1").
    pub id: String,
    /// Key in the pipeline file (shared by matrix expansions).
    pub key: String,
    /// Ids of the jobs it needs.
    pub needs: Vec<String>,
}

/// Width of a column, in px.
pub const COLUMN_WIDTH: f64 = 230.0;
/// Horizontal gap between columns (room for edges).
pub const COLUMN_GAP: f64 = 56.0;
/// Height of one job box.
pub const NODE_HEIGHT: f64 = 40.0;
/// Vertical gap between job boxes in a group.
pub const NODE_GAP: f64 = 6.0;
/// Height of a matrix group's title.
pub const GROUP_HEADER: f64 = 26.0;
/// Vertical gap between groups.
pub const GROUP_GAP: f64 = 16.0;
/// Padding inside a matrix group's frame.
pub const GROUP_PAD: f64 = 6.0;

/// A group of jobs in one column: a single job, or a job key's matrix
/// expansions.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Column (0 = jobs that need nothing).
    pub column: usize,
    /// The job key.
    pub key: String,
    /// True for a matrix group (drawn with a frame and title).
    pub matrix: bool,
    /// Indices (into the input) of its jobs, in input order.
    pub jobs: Vec<usize>,
    /// Top-left corner and size of the group's box.
    pub x: f64,
    /// Top of the box.
    pub y: f64,
    /// Height of the box.
    pub height: f64,
}

impl Group {
    /// Top of the `i`-th job box of the group.
    pub fn job_y(&self, i: usize) -> f64 {
        let top = if self.matrix { self.y + GROUP_HEADER } else { self.y };
        top + i as f64 * (NODE_HEIGHT + NODE_GAP)
    }
}

/// An edge between two groups, as an SVG cubic path from the right middle
/// of one to the left middle of the other.
#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    /// Index of the group needed.
    pub from: usize,
    /// Index of the group that needs it.
    pub to: usize,
    /// SVG path data.
    pub path: String,
}

/// The whole picture.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    /// Groups, column by column, top to bottom.
    pub groups: Vec<Group>,
    /// Edges between groups.
    pub edges: Vec<Edge>,
    /// Size of the drawing.
    pub width: f64,
    /// Height of the drawing.
    pub height: f64,
    /// Number of columns.
    pub columns: usize,
}

/// The column of every job (see the module doc).
pub fn columns(jobs: &[JobInput]) -> Vec<usize> {
    let n = jobs.len();
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, j) in jobs.iter().enumerate() {
        by_id.entry(j.id.as_str()).or_insert(i);
    }
    // Needs as indices, without self-loops and unknown ids, deduplicated.
    let needs: Vec<Vec<usize>> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let mut v: Vec<usize> =
                j.needs.iter().filter_map(|id| by_id.get(id.as_str()).copied()).filter(|&k| k != i).collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (i, ns) in needs.iter().enumerate() {
        waiting[i] = ns.len();
        for &k in ns {
            dependants[k].push(i);
        }
    }
    // Kahn's algorithm, taking the longest path.
    let mut col = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = vec![false; n];
    while let Some(i) = ready.pop() {
        done[i] = true;
        for &d in &dependants[i] {
            col[d] = col[d].max(col[i] + 1);
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    // Jobs on a cycle (never ready): one column after the rest.
    let last = (0..n).filter(|&i| done[i]).map(|i| col[i]).max().map_or(0, |m| m + 1);
    for i in 0..n {
        if !done[i] {
            col[i] = last;
        }
    }
    col
}

/// Lays out `jobs` (see the module doc).
pub fn layout(jobs: &[JobInput]) -> Layout {
    let cols = columns(jobs);
    let ncols = cols.iter().max().map_or(0, |m| m + 1);
    // How many jobs share each key (over the run): more than one = matrix.
    let mut key_count: HashMap<&str, usize> = HashMap::new();
    for j in jobs {
        *key_count.entry(j.key.as_str()).or_default() += 1;
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of = vec![0usize; jobs.len()];
    let mut height: f64 = 0.0;
    for c in 0..ncols {
        let first = groups.len();
        for (i, j) in jobs.iter().enumerate().filter(|(i, _)| cols[*i] == c) {
            let matrix = key_count.get(j.key.as_str()).copied().unwrap_or(0) > 1;
            let existing = matrix.then(|| groups[first..].iter().position(|g| g.matrix && g.key == j.key)).flatten();
            match existing {
                Some(g) => {
                    groups[first + g].jobs.push(i);
                    group_of[i] = first + g;
                }
                None => {
                    group_of[i] = groups.len();
                    groups.push(Group {
                        column: c,
                        key: j.key.clone(),
                        matrix,
                        jobs: vec![i],
                        x: c as f64 * (COLUMN_WIDTH + COLUMN_GAP),
                        y: 0.0,
                        height: 0.0,
                    });
                }
            }
        }
        let mut y = 0.0;
        for g in &mut groups[first..] {
            let n = g.jobs.len() as f64;
            let body = n * NODE_HEIGHT + (n - 1.0).max(0.0) * NODE_GAP;
            g.y = y;
            g.height = if g.matrix { GROUP_HEADER + body + GROUP_PAD } else { body };
            y += g.height + GROUP_GAP;
        }
        height = height.max(y - GROUP_GAP);
    }
    let mut edges: Vec<Edge> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        by_id.entry(j.id.as_str()).or_insert(i);
    }
    for (i, j) in jobs.iter().enumerate() {
        for need in &j.needs {
            let Some(&k) = by_id.get(need.as_str()) else { continue };
            let (from, to) = (group_of[k], group_of[i]);
            if from == to
                || groups[from].column >= groups[to].column
                || edges.iter().any(|e| e.from == from && e.to == to)
            {
                continue;
            }
            let (a, b) = (&groups[from], &groups[to]);
            let (x1, y1) = (a.x + COLUMN_WIDTH, a.y + a.height / 2.0);
            let (x2, y2) = (b.x, b.y + b.height / 2.0);
            let mid = (x1 + x2) / 2.0;
            edges.push(Edge { from, to, path: format!("M{x1} {y1}C{mid} {y1} {mid} {y2} {x2} {y2}") });
        }
    }
    let width = if ncols == 0 { 0.0 } else { ncols as f64 * COLUMN_WIDTH + (ncols - 1) as f64 * COLUMN_GAP };
    Layout { groups, edges, width, height: height.max(0.0), columns: ncols }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, key: &str, needs: &[&str]) -> JobInput {
        JobInput { id: id.into(), key: key.into(), needs: needs.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn columns_follow_longest_needs_chain() {
        let jobs = [
            job("1.1", "lint", &[]),
            job("1.2", "build", &[]),
            job("1.3", "test", &["1.2"]),
            job("1.4", "deploy", &["1.3", "1.1"]),
            job("1.5", "notify", &["1.1"]),
        ];
        assert_eq!(columns(&jobs), vec![0, 0, 1, 2, 1]);
    }

    #[test]
    fn odd_graphs_do_not_panic() {
        // Unknown needs, self-loop, a cycle, duplicate ids.
        let jobs = [
            job("1.1", "a", &["9.9", "1.1"]),
            job("1.2", "b", &["1.3"]),
            job("1.3", "c", &["1.2"]),
            job("1.1", "d", &[]),
            job("1.4", "e", &["1.1", "1.1"]),
        ];
        let cols = columns(&jobs);
        assert_eq!(cols[0], 0);
        assert_eq!(cols[4], 1);
        assert_eq!(cols[1], 2);
        assert_eq!(cols[2], 2);
        let l = layout(&jobs);
        assert_eq!(l.groups.iter().map(|g| g.jobs.len()).sum::<usize>(), 5);
        assert!(layout(&[]).groups.is_empty());
        assert_eq!(layout(&[]).width, 0.0);
    }

    #[test]
    fn matrix_jobs_group_and_edges_join_groups() {
        let jobs = [
            job("1.1", "build", &[]),
            job("1.2", "test", &["1.1"]),
            job("1.3", "test", &["1.1"]),
            job("1.4", "test", &["1.1"]),
            job("1.5", "deploy", &["1.2", "1.3", "1.4"]),
        ];
        let l = layout(&jobs);
        assert_eq!(l.columns, 3);
        assert_eq!(l.groups.len(), 3);
        let test = &l.groups[1];
        assert!(test.matrix);
        assert_eq!(test.jobs, vec![1, 2, 3]);
        assert_eq!(test.height, GROUP_HEADER + 3.0 * NODE_HEIGHT + 2.0 * NODE_GAP + GROUP_PAD);
        assert_eq!(test.job_y(1), GROUP_HEADER + NODE_HEIGHT + NODE_GAP);
        // One edge per pair of groups, not per pair of jobs.
        assert_eq!(l.edges.len(), 2);
        assert_eq!((l.edges[0].from, l.edges[0].to), (0, 1));
        assert_eq!((l.edges[1].from, l.edges[1].to), (1, 2));
        assert!(l.edges[0].path.starts_with(&format!("M{} ", COLUMN_WIDTH)));
        assert_eq!(l.width, 3.0 * COLUMN_WIDTH + 2.0 * COLUMN_GAP);
        assert_eq!(l.height, test.height);
    }

    #[test]
    fn groups_stack_in_a_column() {
        let jobs = [job("1.1", "a", &[]), job("1.2", "b", &[])];
        let l = layout(&jobs);
        assert_eq!(l.groups[0].y, 0.0);
        assert_eq!(l.groups[1].y, NODE_HEIGHT + GROUP_GAP);
        assert_eq!(l.height, 2.0 * NODE_HEIGHT + GROUP_GAP);
    }
}
