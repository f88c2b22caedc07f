//! Run statistics over time as chart drawings: runs are put in time buckets
//! (an hour to a week wide, so there are at most [`MAX_BUCKETS`]), and each
//! chart is described completely — axes, ticks, paths, bars, points, in SVG
//! user units — for the view to draw as inline SVG.

use viaduct_proto::{StatusWord, v1::Status};

use crate::time_format;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Most buckets a chart shows.
pub const MAX_BUCKETS: usize = 45;

/// What the charts need of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPoint {
    /// When it was created (Unix ms).
    pub created: i64,
    /// Its state.
    pub status: Status,
    /// How long it ran, when it finished.
    pub duration: Option<i64>,
}

/// Runs of one time bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    /// Start (Unix ms).
    pub start: i64,
    /// Runs created in it.
    pub runs: usize,
    /// Of which succeeded.
    pub succeeded: usize,
    /// Of which failed (failure, timed out, runner lost).
    pub failed: usize,
    /// Durations of its finished runs, sorted.
    pub durations: Vec<i64>,
}

impl Bucket {
    /// Succeeded / (succeeded + failed), in 0–1; `None` with neither.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.succeeded + self.failed;
        (decided > 0).then(|| self.succeeded as f64 / decided as f64)
    }

    /// The `p`-th percentile (0–1, nearest rank) of the durations.
    pub fn percentile(&self, p: f64) -> Option<i64> {
        if self.durations.is_empty() {
            return None;
        }
        let rank = (p.clamp(0.0, 1.0) * self.durations.len() as f64).ceil() as usize;
        self.durations.get(rank.saturating_sub(1).min(self.durations.len() - 1)).copied()
    }
}

/// The bucket width for runs spanning `span` ms: the smallest of 1 h, 6 h,
/// 1 d and 7 d giving at most [`MAX_BUCKETS`] buckets.
pub fn bucket_width(span: i64) -> i64 {
    [HOUR, 6 * HOUR, DAY, 7 * DAY].into_iter().find(|w| span / w < MAX_BUCKETS as i64).unwrap_or(7 * DAY)
}

/// Puts `runs` in buckets ending with the one holding `now`; the oldest
/// runs are dropped past [`MAX_BUCKETS`] buckets. Empty buckets are kept
/// (gaps in the charts).
pub fn bucketize(runs: &[RunPoint], now: i64) -> (i64, Vec<Bucket>) {
    let Some(oldest) = runs.iter().map(|r| r.created).min() else { return (HOUR, Vec::new()) };
    let newest = runs.iter().map(|r| r.created).max().unwrap_or(now).max(now);
    let width = bucket_width(newest.saturating_sub(oldest));
    let last = newest.div_euclid(width);
    let first = oldest.div_euclid(width).max(last - MAX_BUCKETS as i64 + 1);
    let mut buckets: Vec<Bucket> =
        (first..=last).map(|b| Bucket { start: b.saturating_mul(width), ..Bucket::default() }).collect();
    for r in runs {
        let b = r.created.div_euclid(width) - first;
        let Some(bucket) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) else { continue };
        bucket.runs += 1;
        if r.status == Status::Success {
            bucket.succeeded += 1;
        } else if r.status.is_failure() {
            bucket.failed += 1;
        }
        if r.status.is_terminal()
            && let Some(d) = r.duration
        {
            bucket.durations.push(d.max(0));
        }
    }
    for b in &mut buckets {
        b.durations.sort_unstable();
    }
    (width, buckets)
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v` (1 for `v` ≤ 0).
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * base >= v * (1.0 - 1e-9) {
            return m * base;
        }
    }
    10.0 * base
}

/// Size and margins of a chart, in SVG user units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    /// Total width.
    pub width: f64,
    /// Total height.
    pub height: f64,
    /// Room left of the plot (y labels).
    pub left: f64,
    /// Room below the plot (x labels).
    pub bottom: f64,
    /// Room above and right.
    pub pad: f64,
}

impl Frame {
    /// The frame the stats page uses.
    pub const STANDARD: Frame = Frame { width: 640.0, height: 220.0, left: 52.0, bottom: 24.0, pad: 10.0 };

    fn plot_width(&self) -> f64 {
        (self.width - self.left - self.pad).max(1.0)
    }

    fn plot_bottom(&self) -> f64 {
        self.height - self.bottom
    }

    fn plot_height(&self) -> f64 {
        (self.plot_bottom() - self.pad).max(1.0)
    }

    /// Centre x of bucket `i` of `n`.
    fn x(&self, i: usize, n: usize) -> f64 {
        self.left + (i as f64 + 0.5) * self.plot_width() / n.max(1) as f64
    }

    /// y of value `v` on a 0..`max` axis.
    fn y(&self, v: f64, max: f64) -> f64 {
        let max = if max > 0.0 { max } else { 1.0 };
        self.plot_bottom() - (v / max).clamp(0.0, 1.0) * self.plot_height()
    }
}

/// A labelled tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    /// Position (y for the value axis, x for the time axis).
    pub at: f64,
    /// Its label.
    pub label: String,
}

/// A line through bucket values; `None` values break it.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// CSS class (its colour).
    pub class: &'static str,
    /// Legend text.
    pub name: &'static str,
    /// SVG path data.
    pub path: String,
    /// Points with their tooltips.
    pub points: Vec<(f64, f64, String)>,
}

/// A bar segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// CSS class (its colour).
    pub class: &'static str,
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// Tooltip.
    pub title: String,
}

/// A complete chart drawing.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Size and margins.
    pub frame: Frame,
    /// Horizontal grid lines with value labels.
    pub y_ticks: Vec<Tick>,
    /// Time labels.
    pub x_ticks: Vec<Tick>,
    /// Lines.
    pub lines: Vec<Line>,
    /// Bars.
    pub bars: Vec<Bar>,
}

/// The label of a bucket start for a bucket width.
pub fn bucket_label(start: i64, width: i64) -> String {
    if width < DAY {
        format!("{} {}", time_format::short_date(start), time_format::clock(start))
    } else {
        time_format::short_date(start)
    }
}

fn x_ticks(frame: &Frame, buckets: &[Bucket], width: i64) -> Vec<Tick> {
    let n = buckets.len();
    // About six labels.
    let every = n.div_ceil(6).max(1);
    buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| (n - 1 - i).is_multiple_of(every))
        .map(|(i, b)| Tick { at: frame.x(i, n), label: bucket_label(b.start, width) })
        .collect()
}

fn line(
    frame: &Frame,
    values: &[Option<f64>],
    max: f64,
    class: &'static str,
    name: &'static str,
    tips: Vec<String>,
) -> Line {
    let n = values.len();
    let mut path = String::new();
    let mut pen_down = false;
    let mut points = Vec::new();
    for (i, (v, tip)) in values.iter().zip(tips).enumerate() {
        match v {
            Some(v) => {
                let (x, y) = (frame.x(i, n), frame.y(*v, max));
                path.push_str(&format!("{}{x:.1} {y:.1}", if pen_down { 'L' } else { 'M' }));
                pen_down = true;
                points.push((x, y, tip));
            }
            None => pen_down = false,
        }
    }
    Line { class, name, path, points }
}

/// Success rate per bucket, 0–100 %.
pub fn success_chart(frame: Frame, buckets: &[Bucket], width: i64) -> Chart {
    let values: Vec<Option<f64>> = buckets.iter().map(|b| b.success_rate().map(|r| r * 100.0)).collect();
    let tips = buckets
        .iter()
        .map(|b| match b.success_rate() {
            Some(r) => format!(
                "{}: {:.0}% succeeded ({} of {} finished)",
                bucket_label(b.start, width),
                r * 100.0,
                b.succeeded,
                b.succeeded + b.failed
            ),
            None => String::new(),
        })
        .collect();
    let y_ticks = [0.0, 25.0, 50.0, 75.0, 100.0]
        .into_iter()
        .map(|v| Tick { at: frame.y(v, 100.0), label: format!("{v:.0}%") })
        .collect();
    Chart {
        frame,
        y_ticks,
        x_ticks: x_ticks(&frame, buckets, width),
        lines: vec![line(&frame, &values, 100.0, "series-success", "success rate", tips)],
        bars: Vec::new(),
    }
}

/// A duration axis: its maximum and a label for a tick value, in the unit
/// that reads best for `max_ms`.
fn duration_axis(max_ms: f64) -> (f64, f64, &'static str) {
    let (unit, suffix) = if max_ms < 120_000.0 {
        (1000.0, "s")
    } else if max_ms < 2.0 * HOUR as f64 {
        (60_000.0, "min")
    } else {
        (HOUR as f64, "h")
    };
    (nice_ceiling(max_ms / unit) * unit, unit, suffix)
}

/// Median and 90th-percentile run duration per bucket.
pub fn duration_chart(frame: Frame, buckets: &[Bucket], width: i64) -> Chart {
    let p50: Vec<Option<f64>> = buckets.iter().map(|b| b.percentile(0.5).map(|d| d as f64)).collect();
    let p90: Vec<Option<f64>> = buckets.iter().map(|b| b.percentile(0.9).map(|d| d as f64)).collect();
    let max = p90.iter().chain(&p50).flatten().copied().fold(0.0, f64::max);
    let (top, unit, suffix) = duration_axis(max);
    let y_ticks = (0..=4)
        .map(|k| {
            let v = top * f64::from(k) / 4.0;
            let n = v / unit;
            let label = if n.fract().abs() < 1e-9 { format!("{n:.0} {suffix}") } else { format!("{n:.1} {suffix}") };
            Tick { at: frame.y(v, top), label }
        })
        .collect();
    let tips = |vals: &[Option<f64>], what: &str| -> Vec<String> {
        buckets
            .iter()
            .zip(vals)
            .map(|(b, v)| match v {
                Some(v) => format!(
                    "{}: {what} {} ({} runs)",
                    bucket_label(b.start, width),
                    time_format::duration(*v as i64),
                    b.durations.len()
                ),
                None => String::new(),
            })
            .collect()
    };
    let lines = vec![
        line(&frame, &p90, top, "series-p90", "90th percentile", tips(&p90, "p90")),
        line(&frame, &p50, top, "series-p50", "median", tips(&p50, "median")),
    ];
    Chart { frame, y_ticks, x_ticks: x_ticks(&frame, buckets, width), lines, bars: Vec::new() }
}

/// A count axis with four whole-number steps: the step (1, 2, 5, 10, 20,
/// …) whose four steps reach `max`.
pub fn count_step(max: usize) -> usize {
    let mut step = 1usize;
    loop {
        for m in [1, 2, 5] {
            let s = step.saturating_mul(m);
            if s.saturating_mul(4) >= max || s == usize::MAX {
                return s;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Widest bar, in SVG units.
const MAX_BAR: f64 = 40.0;

/// Runs per bucket as stacked bars: succeeded, failed, other.
pub fn volume_chart(frame: Frame, buckets: &[Bucket], width: i64) -> Chart {
    let n = buckets.len();
    let step = count_step(buckets.iter().map(|b| b.runs).max().unwrap_or(0));
    let max = (step * 4) as f64;
    let slot = frame.plot_width() / n.max(1) as f64;
    let bar_w = (slot * 0.7).clamp(1.0, MAX_BAR);
    let mut bars = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let x = frame.x(i, n) - bar_w / 2.0;
        let other = b.runs.saturating_sub(b.succeeded + b.failed);
        let mut base = 0usize;
        for (count, class, what) in [
            (b.succeeded, "series-success", "succeeded"),
            (b.failed, "series-failure", "failed"),
            (other, "series-other", "other"),
        ] {
            if count == 0 {
                continue;
            }
            let y0 = frame.y(base as f64, max);
            let y1 = frame.y((base + count) as f64, max);
            bars.push(Bar {
                class,
                x,
                y: y1,
                width: bar_w,
                height: (y0 - y1).max(0.5),
                title: format!("{}: {count} {what} of {} runs", bucket_label(b.start, width), b.runs),
            });
            base += count;
        }
    }
    let y_ticks =
        (0..=4usize).map(|k| Tick { at: frame.y((k * step) as f64, max), label: (k * step).to_string() }).collect();
    Chart { frame, y_ticks, x_ticks: x_ticks(&frame, buckets, width), lines: Vec::new(), bars }
}

/// Word counts of the states of `runs` (for the summary line).
pub fn totals(runs: &[RunPoint]) -> (usize, usize, usize) {
    let succeeded = runs.iter().filter(|r| r.status == Status::Success).count();
    let failed = runs.iter().filter(|r| r.status.is_failure()).count();
    (runs.len(), succeeded, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(created: i64, status: Status, duration: Option<i64>) -> RunPoint {
        RunPoint { created, status, duration }
    }

    #[test]
    fn bucket_widths() {
        assert_eq!(bucket_width(0), HOUR);
        assert_eq!(bucket_width(44 * HOUR), HOUR);
        assert_eq!(bucket_width(45 * HOUR), 6 * HOUR);
        assert_eq!(bucket_width(20 * DAY), DAY);
        assert_eq!(bucket_width(100 * DAY), 7 * DAY);
        assert_eq!(bucket_width(i64::MAX), 7 * DAY);
    }

    #[test]
    fn bucketizes_runs() {
        let now = 100 * DAY;
        let runs = [
            run(now - 3 * DAY, Status::Success, Some(1000)),
            run(now - 3 * DAY + 5, Status::Failure, Some(3000)),
            run(now - 3 * DAY + 9, Status::Cancelled, Some(10)),
            run(now - DAY, Status::Running, None),
            run(now, Status::Success, Some(2000)),
        ];
        let (width, b) = bucketize(&runs, now);
        assert_eq!(width, 6 * HOUR);
        assert_eq!(b.len(), 13);
        assert_eq!(b[0].runs, 3);
        assert_eq!(b[0].succeeded, 1);
        assert_eq!(b[0].failed, 1);
        assert_eq!(b[0].durations, vec![10, 1000, 3000]);
        assert_eq!(b[0].success_rate(), Some(0.5));
        assert_eq!(b[8].runs, 1);
        assert_eq!(b[8].success_rate(), None);
        assert_eq!(b[12].runs, 1);
        assert_eq!(b.iter().map(|b| b.runs).sum::<usize>(), 5);
        assert!(bucketize(&[], now).1.is_empty());
    }

    #[test]
    fn old_runs_beyond_the_window_are_dropped() {
        let now = 1000 * DAY;
        let runs = [run(0, Status::Success, None), run(now, Status::Success, None)];
        let (width, b) = bucketize(&runs, now);
        assert_eq!(width, 7 * DAY);
        assert_eq!(b.len(), MAX_BUCKETS);
        assert_eq!(b.iter().map(|b| b.runs).sum::<usize>(), 1);
    }

    #[test]
    fn percentiles() {
        let b = Bucket { durations: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10], ..Bucket::default() };
        assert_eq!(b.percentile(0.5), Some(5));
        assert_eq!(b.percentile(0.9), Some(9));
        assert_eq!(b.percentile(0.0), Some(1));
        assert_eq!(b.percentile(1.0), Some(10));
        assert_eq!(Bucket::default().percentile(0.5), None);
    }

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(42.0), 50.0);
        assert!((nice_ceiling(0.03) - 0.05).abs() < 1e-12);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
    }

    #[test]
    fn charts_scale_into_the_frame() {
        let now = 10 * DAY;
        let runs: Vec<RunPoint> = (0..50)
            .map(|i| {
                run(now - i * HOUR, if i % 3 == 0 { Status::Failure } else { Status::Success }, Some(60_000 + i * 1000))
            })
            .collect();
        let (width, b) = bucketize(&runs, now);
        let f = Frame::STANDARD;
        for chart in [success_chart(f, &b, width), duration_chart(f, &b, width), volume_chart(f, &b, width)] {
            for t in &chart.y_ticks {
                assert!(t.at >= f.pad - 1e-9 && t.at <= f.height - f.bottom + 1e-9, "{t:?}");
            }
            for l in &chart.lines {
                assert!(l.path.starts_with('M'));
                for (x, y, tip) in &l.points {
                    assert!(*x >= f.left && *x <= f.width - f.pad);
                    assert!(*y >= f.pad - 1e-9 && *y <= f.height - f.bottom + 1e-9);
                    assert!(!tip.is_empty());
                }
            }
            for bar in &chart.bars {
                assert!(bar.y >= f.pad - 1e-9 && bar.y + bar.height <= f.height - f.bottom + 0.6);
            }
            assert!(!chart.x_ticks.is_empty());
        }
        assert_eq!(totals(&runs), (50, 33, 17));
    }

    #[test]
    fn count_axes_use_whole_steps() {
        assert_eq!(count_step(0), 1);
        assert_eq!(count_step(2), 1);
        assert_eq!(count_step(4), 1);
        assert_eq!(count_step(5), 2);
        assert_eq!(count_step(17), 5);
        assert_eq!(count_step(21), 10);
        assert_eq!(count_step(450), 200);
        assert!(count_step(usize::MAX) > 0);
    }

    #[test]
    fn gaps_break_lines() {
        let f = Frame::STANDARD;
        let l = line(&f, &[Some(1.0), None, Some(2.0)], 2.0, "c", "n", vec![String::new(); 3]);
        assert_eq!(l.path.matches('M').count(), 2);
        assert!(!l.path.contains('L'));
    }

    #[test]
    fn duration_axes_pick_units() {
        assert_eq!(duration_axis(45_000.0), (50_000.0, 1000.0, "s"));
        assert_eq!(duration_axis(30.0 * 60_000.0), (50.0 * 60_000.0, 60_000.0, "min"));
        assert_eq!(duration_axis(0.0), (1000.0, 1000.0, "s"));
    }
}
