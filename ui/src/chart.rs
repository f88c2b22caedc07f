//! Run statistics over time as chart drawings: the buckets of a
//! `Stats.Get` report (aggregated on the server), each chart described
//! completely — axes, ticks, paths, bars, points, in SVG user units — for
//! the view to draw as inline SVG.

use viaduct_proto::v1::{StatsReport, StatsSummary};

use crate::time_format;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Runs of one time bucket.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    /// Start (Unix ms).
    pub start: i64,
    /// Runs accepted in it.
    pub runs: u64,
    /// Of which succeeded.
    pub succeeded: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which ended with a duration.
    pub ended: u64,
    /// Median duration of those, ms.
    pub p50: Option<i64>,
    /// 90th percentile, ms.
    pub p90: Option<i64>,
}

impl Bucket {
    /// Succeeded / (succeeded + failed), in 0–1; `None` with neither.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.succeeded + self.failed;
        (decided > 0).then(|| self.succeeded as f64 / decided as f64)
    }
}

/// A bucket starting at `start` from the server's summary of it.
pub fn bucket(start: i64, s: &StatsSummary) -> Bucket {
    let d = s.run_duration.unwrap_or_default();
    let ms = |v: u64| (d.count > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
    Bucket {
        start,
        runs: s.runs,
        succeeded: s.succeeded,
        failed: s.failed,
        ended: d.count,
        p50: ms(d.p50_ms),
        p90: ms(d.p90_ms),
    }
}

/// The report's buckets, oldest first, and their width (ms).
pub fn buckets(report: &StatsReport) -> (i64, Vec<Bucket>) {
    let width = i64::from(report.bucket_seconds.max(1)) * 1000;
    let buckets = report
        .buckets
        .iter()
        .map(|b| {
            let start = b.start.map_or(0, |t| t.seconds.saturating_mul(1000));
            bucket(start, &b.summary.unwrap_or_default())
        })
        .collect();
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
    let p50: Vec<Option<f64>> = buckets.iter().map(|b| b.p50.map(|d| d as f64)).collect();
    let p90: Vec<Option<f64>> = buckets.iter().map(|b| b.p90.map(|d| d as f64)).collect();
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
                    b.ended
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
    let step = count_step(buckets.iter().map(|b| usize::try_from(b.runs).unwrap_or(usize::MAX)).max().unwrap_or(0));
    let max = (step * 4) as f64;
    let slot = frame.plot_width() / n.max(1) as f64;
    let bar_w = (slot * 0.7).clamp(1.0, MAX_BAR);
    let mut bars = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let x = frame.x(i, n) - bar_w / 2.0;
        let other = b.runs.saturating_sub(b.succeeded + b.failed);
        let mut base = 0u64;
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

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::{Percentiles, StatsBucket};

    use super::*;

    fn summary(runs: u64, succeeded: u64, failed: u64, p50: u64, p90: u64) -> StatsSummary {
        let d = Percentiles { count: succeeded + failed, p50_ms: p50, p90_ms: p90, p99_ms: p90 };
        StatsSummary { runs, succeeded, failed, run_duration: Some(d), ..StatsSummary::default() }
    }

    fn report(summaries: Vec<StatsSummary>, bucket_seconds: u32) -> StatsReport {
        let buckets = summaries
            .into_iter()
            .enumerate()
            .map(|(i, s)| StatsBucket {
                start: Some(prost_types::Timestamp {
                    seconds: 86_400 * 10 + i as i64 * i64::from(bucket_seconds),
                    nanos: 0,
                }),
                summary: Some(s),
            })
            .collect();
        StatsReport { bucket_seconds, buckets, ..StatsReport::default() }
    }

    #[test]
    fn buckets_come_from_the_report() {
        let (width, b) = buckets(&report(vec![summary(3, 1, 1, 1000, 3000), StatsSummary::default()], 86_400));
        assert_eq!(width, DAY);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start, b[0].runs, b[0].ended, b[0].p50, b[0].p90), (10 * DAY, 3, 2, Some(1000), Some(3000)));
        assert_eq!(b[0].success_rate(), Some(0.5));
        assert_eq!((b[1].start, b[1].success_rate(), b[1].p50), (11 * DAY, None, None));
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
        let summaries = (0..45u64)
            .map(|i| summary(i % 7, (i % 7) / 2, (i % 7) / 3, 60_000 + i * 1000, 90_000 + i * 2000))
            .collect();
        let (width, b) = buckets(&report(summaries, 3600));
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
