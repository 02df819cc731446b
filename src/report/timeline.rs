//! The drill timeline: answers per second by outcome and p50 / p99 latency per second, the
//! fault window shaded and the moments that matter (revocation, propagation, convergence)
//! marked — one chart per drill, drawn with `plotters` into inline SVG inside one HTML page
//! that needs nothing else (no script, no external file).
//!
//! The input is plain data: a [`Timeline`] per drill, whose per-second [`Bucket`]s are usually
//! made from raw [`Sample`]s by [`buckets`]. Seconds count from the start of the drill's load.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What one request got, as the chart colours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A verified `good` that was the right answer.
    Good,
    /// A verified `revoked` that was the right answer.
    Revoked,
    /// A verified `unknown` that was the right answer.
    Unknown,
    /// No usable answer: a connection error, an HTTP error, tryLater where an answer was due,
    /// a response that did not decode.
    Failed,
    /// An answer that was wrong (e.g. `good` for a certificate revoked longer ago than the
    /// propagation bound, a signature that does not verify).
    Wrong,
    /// Anything else that was fine: a CRL download, a readiness probe, tryLater for a
    /// certificate revoked while no HSM could sign.
    Other,
}

impl Outcome {
    /// Every outcome, in the order they are stacked (bottom first).
    pub const ALL: [Outcome; 6] = [
        Outcome::Good,
        Outcome::Revoked,
        Outcome::Unknown,
        Outcome::Other,
        Outcome::Failed,
        Outcome::Wrong,
    ];

    /// The legend's name.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Good => "good",
            Outcome::Revoked => "revoked",
            Outcome::Unknown => "unknown",
            Outcome::Failed => "failed",
            Outcome::Wrong => "wrong",
            Outcome::Other => "other (CRL, probe, tryLater fresh)",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Outcome::Good => RGBColor(44, 160, 44),
            Outcome::Revoked => RGBColor(31, 119, 180),
            Outcome::Unknown => RGBColor(148, 103, 189),
            Outcome::Other => RGBColor(190, 190, 190),
            Outcome::Failed => RGBColor(255, 127, 14),
            Outcome::Wrong => RGBColor(214, 39, 40),
        }
    }
}

/// One request of a drill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was sent, seconds since the start of the drill's load.
    pub at_secs: f64,
    /// What it got.
    pub outcome: Outcome,
    /// How long it took, milliseconds.
    pub latency_ms: f64,
}

/// One second of a drill.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// Requests sent in this second, by outcome: `good`, `revoked`, `unknown`, `other`,
    /// `failed`, `wrong` (the order of [`Outcome::ALL`]).
    pub counts: [u32; 6],
    /// Median latency of the requests sent in this second, ms (`None`: none were sent).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
}

impl Bucket {
    /// Requests of `outcome` in this second.
    pub fn count(&self, outcome: Outcome) -> u32 {
        self.counts[index(outcome)]
    }

    /// Requests in this second.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }
}

fn index(outcome: Outcome) -> usize {
    Outcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(Outcome::ALL.len() - 1)
}

/// Kinds of mark, each with its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// A revocation written (e.g. `vigil revoke` returned).
    Revocation,
    /// Every replica that was reachable answered the revocation.
    Propagated,
    /// Every replica ready again after the fault.
    Recovered,
    /// Every replica answers the revocation: the cluster has converged.
    Converged,
}

impl MarkKind {
    fn colour(self) -> RGBColor {
        match self {
            MarkKind::Revocation => RGBColor(31, 119, 180),
            MarkKind::Propagated => RGBColor(0, 128, 128),
            MarkKind::Recovered => RGBColor(110, 110, 110),
            MarkKind::Converged => RGBColor(0, 0, 0),
        }
    }
}

/// A moment on the timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mark {
    /// Seconds since the start of the load.
    pub at_secs: f64,
    /// What it is.
    pub kind: MarkKind,
    /// Its text on the chart, e.g. `revoked 3F01`.
    pub label: String,
}

/// One drill's timeline.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    /// The drill's name (the chart's title).
    pub name: String,
    /// One line under the title (the drill's numbers).
    pub summary: String,
    /// One bucket per second from the start of the load: `buckets[i]` covers `[i, i + 1)`.
    pub buckets: Vec<Bucket>,
    /// The fault window, seconds since the start: `(start, end)`.
    pub fault: Option<(f64, f64)>,
    /// Moments marked with a vertical line.
    pub marks: Vec<Mark>,
}

/// Per-second buckets of `samples` (any order; negative times count in the first second).
pub fn buckets(samples: &[Sample]) -> Vec<Bucket> {
    let second = |s: &Sample| s.at_secs.max(0.0).floor() as usize;
    let n = samples.iter().map(|s| second(s) + 1).max().unwrap_or(0);
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut out = vec![Bucket::default(); n];
    for s in samples {
        let i = second(s);
        out[i].counts[index(s.outcome)] += 1;
        latencies[i].push(s.latency_ms);
    }
    for (b, mut l) in out.iter_mut().zip(latencies) {
        l.sort_by(f64::total_cmp);
        b.p50_ms = quantile(&l, 0.50);
        b.p99_ms = quantile(&l, 0.99);
    }
    out
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Width and height of one drill's chart, pixels.
pub const CHART_SIZE: (u32, u32) = (1100, 620);

/// Why a timeline could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// plotters failed to draw a chart (its errors are generic over the backend; kept as text).
    #[error("drawing the timeline of {timeline}: {why}")]
    Draw {
        /// The timeline's name.
        timeline: String,
        /// plotters' error.
        why: String,
    },
}

/// The chart of one timeline as an SVG document.
pub fn svg(t: &Timeline) -> Result<String, ReportError> {
    let mut out = String::new();
    draw(t, &mut out).map_err(|e| ReportError::Draw {
        timeline: t.name.clone(),
        why: e.to_string(),
    })?;
    Ok(out)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Reads one quantile of a bucket.
type Pick = fn(&Bucket) -> Option<f64>;

fn draw(t: &Timeline, out: &mut String) -> DrawResult {
    let end = t
        .marks
        .iter()
        .map(|m| m.at_secs)
        .chain(t.fault.map(|f| f.1))
        .fold(t.buckets.len() as f64, f64::max)
        .max(1.0)
        .ceil();
    let top = t
        .buckets
        .iter()
        .map(Bucket::total)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 2.8; // headroom over the tallest bar for the legend and the marks' labels
    let slowest = t
        .buckets
        .iter()
        .filter_map(|b| b.p99_ms)
        .fold(1.0, f64::max)
        * 3.0;
    let fastest = 0.1;

    let root = SVGBackend::with_string(out, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(CHART_SIZE.1 * 11 / 20);

    // === answers per second, stacked by outcome ===
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            format!("{}: answers per second by outcome", t.name),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("answers / s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    if let Some((from, to)) = t.fault {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(from, 0.0), (to, top)],
                RGBAColor(214, 39, 40, 0.12).filled(),
            )))?
            .label("fault")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 12, y + 5)],
                    RGBAColor(214, 39, 40, 0.25).filled(),
                )
            });
    }
    for (k, outcome) in Outcome::ALL.iter().enumerate() {
        let colour = outcome.colour();
        let bars = t.buckets.iter().enumerate().filter_map(|(i, b)| {
            let below: u32 = b.counts[..k].iter().sum();
            let n = b.counts[k];
            (n > 0).then(|| {
                Rectangle::new(
                    [
                        (i as f64 + 0.08, f64::from(below)),
                        (i as f64 + 0.92, f64::from(below + n)),
                    ],
                    colour.filled(),
                )
            })
        });
        chart
            .draw_series(bars)?
            .label(outcome.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    for m in &t.marks {
        let colour = m.kind.colour();
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(m.at_secs, 0.0), (m.at_secs, top)],
            colour.stroke_width(2),
        )))?;
    }
    // Labels between the bars and the legend, staggered so that marks close in time stay
    // readable.
    for (i, m) in t.marks.iter().enumerate() {
        let y = top * (0.50 - 0.045 * (i % 3) as f64);
        let style = ("sans-serif", 13).into_font().color(&m.kind.colour());
        // In the right half the label goes left of its line, so that it is not cut off.
        let (text, style) = if m.at_secs > end / 2.0 {
            (
                format!("{} ", m.label),
                style.pos(Pos::new(HPos::Right, VPos::Top)),
            )
        } else {
            (format!(" {}", m.label), style)
        };
        chart.draw_series(std::iter::once(Text::new(text, (m.at_secs, y), style)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()?;

    // === latency per second ===
    let mut chart = ChartBuilder::on(&lower)
        .caption("latency per second (ms, log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, (fastest..slowest).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("ms")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        })
        .light_line_style(WHITE)
        .draw()?;
    if let Some((from, to)) = t.fault {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from, fastest), (to, slowest)],
            RGBAColor(214, 39, 40, 0.12).filled(),
        )))?;
    }
    for m in &t.marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(m.at_secs, fastest), (m.at_secs, slowest)],
            m.kind.colour().mix(0.6).stroke_width(1),
        )))?;
    }
    let quantiles: [(&str, Pick, RGBColor); 2] = [
        ("p50", |b| b.p50_ms, RGBColor(31, 119, 180)),
        ("p99", |b| b.p99_ms, RGBColor(214, 39, 40)),
    ];
    for (name, pick, colour) in quantiles {
        let points: Vec<(f64, f64)> = t
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| pick(b).map(|v| (i as f64 + 0.5, v.max(fastest))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 2, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole report: a self-contained HTML page titled `title`, `intro` as its first
/// paragraph, then per timeline its name, summary, chart and marks in words.
pub fn html(title: &str, intro: &str, timelines: &[Timeline]) -> Result<String, ReportError> {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1150px}}\
         section{{margin-bottom:2.5em}}p.summary{{color:#333}}ul.marks{{font-size:90%}}\
         svg{{display:block;border:1px solid #ddd}}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p>{}</p>\n",
        escape(title),
        escape(title),
        escape(intro)
    );
    for t in timelines {
        let chart = svg(t)?;
        // The SVG backend writes an XML prolog-free <svg> element; inline it as is.
        let _ = write!(
            page,
            "<section class=\"drill\" id=\"drill-{}\">\n<h2>{}</h2>\n<p class=\"summary\">{}</p>\n{}\n",
            escape(&t.name),
            escape(&t.name),
            escape(&t.summary),
            chart.trim()
        );
        page.push_str("<ul class=\"marks\">\n");
        if let Some((from, to)) = t.fault {
            let _ = writeln!(
                page,
                "<li>fault from {from:.1} s to {to:.1} s ({:.1} s, shaded)</li>",
                to - from
            );
        }
        for m in &t.marks {
            let _ = writeln!(page, "<li>{:.1} s: {}</li>", m.at_secs, escape(&m.label));
        }
        let total: u32 = t.buckets.iter().map(Bucket::total).sum();
        let by: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| {
                let n: u32 = t.buckets.iter().map(|b| b.count(*o)).sum();
                format!("{} {n}", o.name())
            })
            .collect();
        let _ = writeln!(
            page,
            "<li>{total} requests over {} s: {}</li>\n</ul>\n</section>",
            t.buckets.len(),
            escape(&by.join(", "))
        );
    }
    page.push_str("</body>\n</html>\n");
    Ok(page)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample(at_secs: f64, outcome: Outcome, latency_ms: f64) -> Sample {
        Sample {
            at_secs,
            outcome,
            latency_ms,
        }
    }

    #[test]
    fn samples_fall_into_their_second_with_nearest_rank_quantiles() {
        let mut s: Vec<Sample> = (1..=100)
            .map(|i| sample(1.0 + f64::from(i) / 200.0, Outcome::Good, f64::from(i)))
            .collect();
        s.push(sample(0.2, Outcome::Failed, 300.0));
        s.push(sample(3.999, Outcome::Wrong, 5.0));
        s.push(sample(-0.1, Outcome::Other, 1.0));
        let b = buckets(&s);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].count(Outcome::Failed), 1);
        assert_eq!(b[0].count(Outcome::Other), 1);
        assert_eq!(b[1].count(Outcome::Good), 100);
        assert_eq!(b[1].p50_ms, Some(50.0));
        assert_eq!(b[1].p99_ms, Some(99.0));
        assert_eq!(b[2], Bucket::default());
        assert_eq!(b[3].count(Outcome::Wrong), 1);
        assert!(buckets(&[]).is_empty());
    }

    #[test]
    fn the_page_holds_one_chart_per_timeline_and_the_marks_in_words() {
        let t = Timeline {
            name: "kill <one>".into(),
            summary: "0 failed".into(),
            buckets: buckets(&[
                sample(0.5, Outcome::Good, 2.0),
                sample(2.5, Outcome::Revoked, 9.0),
            ]),
            fault: Some((1.0, 2.0)),
            marks: vec![Mark {
                at_secs: 1.5,
                kind: MarkKind::Converged,
                label: "converged".into(),
            }],
        };
        let empty = Timeline {
            name: "empty".into(),
            ..Timeline::default()
        };
        let page = html("report", "intro", &[t, empty]).unwrap();
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("kill &lt;one&gt;"));
        assert!(page.contains("1.5 s: converged"));
        assert!(page.contains("fault from 1.0 s to 2.0 s"));
    }
}
