//! The overview's charts: changes per store and lag over the last 24 h,
//! server-rendered SVG (`plotters`' SVG backend, which escapes every text
//! and attribute it writes: a store name is text in the legend), from the
//! run history the state database keeps ([`contact_sync_state::HistoryBucket`]).

use contact_sync_core::Timestamp;
use contact_sync_state::{HistoryBucket, BUCKET_SECS};
use plotters::prelude::*;
use serde::Serialize;

/// Hours the overview's charts cover.
pub const CHART_HOURS: i64 = 24;

const SIZE: (u32, u32) = (640, 260);

/// One line of a chart: a store and its points (hours before now, value).
#[derive(Debug, Clone, Serialize)]
pub struct ChartSeries {
    pub store: String,
    pub points: Vec<(f64, f64)>,
}

/// The overview's two charts, as SVG documents to put in the page.
#[derive(Debug, Clone)]
pub struct Charts {
    pub changes_svg: String,
    pub lag_svg: String,
    /// Whether any cycle was recorded in the window.
    pub empty: bool,
}

/// Per store (in `stores`' order, then any other store in the history), the
/// points of `value` for each bucket with runs.
fn series(
    history: &[HistoryBucket],
    stores: &[String],
    now: &Timestamp,
    value: impl Fn(&HistoryBucket) -> Option<f64>,
) -> Vec<ChartSeries> {
    let mut names: Vec<String> = stores.to_vec();
    for b in history {
        if !names.contains(&b.store) {
            names.push(b.store.clone());
        }
    }
    let now_secs = now.timestamp() as f64;
    names
        .into_iter()
        .map(|store| {
            let points = history
                .iter()
                .filter(|b| b.store == store)
                .filter_map(|b| {
                    // The bucket's middle, in hours before now.
                    let mid = b.bucket as f64 + BUCKET_SECS as f64 / 2.0;
                    let hours = ((mid - now_secs) / 3600.0).clamp(-(CHART_HOURS as f64), 0.0);
                    value(b).map(|v| (hours, v))
                })
                .collect();
            ChartSeries { store, points }
        })
        .collect()
}

/// A line chart over the last [`CHART_HOURS`] hours, one line per store.
fn line_chart(title: &str, y_desc: &str, lines: &[ChartSeries]) -> Result<String, String> {
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing the chart {title:?}: {e}");
    let top = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if top <= 0.0 { 1.0 } else { top * 1.15 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(-(CHART_HOURS as f64)..0.0, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(9)
            .y_labels(5)
            .x_desc("hours ago")
            .y_desc(y_desc)
            .x_label_formatter(&|x| {
                if x.abs() < 0.5 {
                    "now".to_string()
                } else {
                    format!("{:.0}", -x)
                }
            })
            .y_label_formatter(&|y| {
                if *y >= 100.0 || y.fract() == 0.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            // No minor grid lines: they made most of the page's bytes.
            .max_light_lines(0)
            .draw()
            .map_err(err)?;
        for (i, s) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let style = color.stroke_width(2);
            let drawn = chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(err)?;
            drawn
                .label(s.store.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            // A line of one or two points is hard to see: mark them.
            if s.points.len() <= 2 {
                chart
                    .draw_series(s.points.iter().map(|p| Circle::new(*p, 2, color.filled())))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(221, 225, 231))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The overview's charts from the run history since 24 h before `now`.
pub fn render(
    history: &[HistoryBucket],
    stores: &[String],
    now: &Timestamp,
) -> Result<Charts, String> {
    let changes = series(history, stores, now, |b| {
        Some(b.captured.saturating_add(b.written) as f64)
    });
    // Lag in the unit that reads best for the largest value.
    let top = history
        .iter()
        .filter_map(|b| b.max_lag_secs)
        .fold(0.0f64, f64::max);
    let (unit, per) = if top < 120.0 {
        ("seconds", 1.0)
    } else if top < 3.0 * 3600.0 {
        ("minutes", 60.0)
    } else {
        ("hours", 3600.0)
    };
    let lag = series(history, stores, now, |b| b.max_lag_secs.map(|l| l / per));
    Ok(Charts {
        changes_svg: line_chart(
            "Changes per store (captured + written, per 5 min)",
            "changes",
            &changes,
        )?,
        lag_svg: line_chart("Lag per store (since last success)", unit, &lag)?,
        empty: history.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_core::model::now;

    fn bucket(store: &str, at: i64, n: u64, lag: Option<f64>) -> HistoryBucket {
        HistoryBucket {
            store: store.into(),
            bucket: at,
            runs: 1,
            captured: n,
            applied: n,
            written: n,
            errors: 0,
            max_lag_secs: lag,
        }
    }

    #[test]
    fn every_text_is_escaped_and_each_store_has_its_line() {
        let t = now();
        let b0 = contact_sync_state::bucket_of(&t);
        let evil = "<script>alert(1)</script>&\"'";
        let history = vec![
            bucket("canonical", b0 - 600, 3, Some(0.0)),
            bucket("canonical", b0, 5, Some(30.0)),
            bucket(evil, b0, 1, None),
        ];
        let c = render(&history, &["canonical".into()], &t).unwrap();
        for svg in [&c.changes_svg, &c.lag_svg] {
            assert!(svg.starts_with("<svg"), "{svg}");
            assert!(!svg.contains("<script"), "{svg}");
            assert!(
                svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;"),
                "{svg}"
            );
            assert!(svg.contains("canonical"));
        }
        assert!(!c.empty);
        let empty = render(&[], &["canonical".into()], &t).unwrap();
        assert!(empty.empty && empty.changes_svg.starts_with("<svg"));
    }
}
