//! Validation of the job dependency graph (`needs`): unknown jobs,
//! self-dependencies and cycles.

use crate::decode::Decoder;
use crate::diag::suggestion;
use crate::spec::Job;

/// Reports unknown `needs`, self-dependencies and every dependency cycle.
pub(crate) fn check_needs(d: &mut Decoder<'_>, jobs: &[Job]) {
    let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    // edges[i]: (target job index, index of the `needs` entry) per job.
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for (n, need) in job.needs.iter().enumerate() {
            if need.value == job.key {
                d.error(need.pos, format!("job `{}` needs itself", job.key));
            } else if let Some(target) = keys.iter().position(|k| *k == need.value) {
                if !edges[i].iter().any(|(t, _)| *t == target) {
                    edges[i].push((target, n));
                }
            } else {
                d.error(
                    need.pos,
                    format!(
                        "job `{}` needs unknown job `{}`{}",
                        job.key,
                        need.value,
                        suggestion(&need.value, keys.iter().copied())
                    ),
                );
            }
        }
    }
    for cycle in find_cycles(&edges) {
        let Some(&(first, _)) = cycle.first() else {
            continue;
        };
        let mut names: Vec<&str> = cycle.iter().map(|&(j, _)| keys[j]).collect();
        names.push(keys[first]);
        let job = &jobs[first];
        let pos = cycle.first().and_then(|&(_, need)| job.needs.get(need)).map_or(job.pos, |n| n.pos);
        d.error(pos, format!("dependency cycle: {}", names.join(" → ")));
    }
}

/// Finds the dependency cycles reachable by depth-first search (iterative,
/// so long chains cannot overflow the stack). Each cycle is a list of
/// `(job, needs-entry leading to the next job)`, rotated to start at the job
/// declared first, and reported once.
fn find_cycles(edges: &[Vec<(usize, usize)>]) -> Vec<Vec<(usize, usize)>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnStack,
        Done,
    }
    let mut state = vec![State::New; edges.len()];
    let mut cycles: Vec<Vec<(usize, usize)>> = Vec::new();
    for root in 0..edges.len() {
        if state[root] != State::New {
            continue;
        }
        // (job, next edge to explore)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        state[root] = State::OnStack;
        while let Some(&mut (job, ref mut next)) = stack.last_mut() {
            let Some(&(target, _)) = edges[job].get(*next) else {
                state[job] = State::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match state[target] {
                State::New => {
                    state[target] = State::OnStack;
                    stack.push((target, 0));
                }
                State::OnStack => {
                    let start = stack.iter().position(|(j, _)| *j == target).unwrap_or(0);
                    let mut cycle: Vec<(usize, usize)> = stack[start..]
                        .iter()
                        .filter_map(|&(j, next)| edges[j].get(next.wrapping_sub(1)).map(|e| (j, e.1)))
                        .collect();
                    let min = (0..cycle.len()).min_by_key(|&i| cycle[i].0).unwrap_or(0);
                    cycle.rotate_left(min);
                    if !cycles.contains(&cycle) {
                        cycles.push(cycle);
                    }
                }
                State::Done => {}
            }
        }
    }
    cycles
}
