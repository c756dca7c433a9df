//! Small charts as inline SVG, rendered on the server with the same templates as the
//! pages: no JavaScript, no chart library, nothing fetched. Each mark carries a `<title>`
//! (read out by screen readers, shown on hover) and `data-` attributes with its figures.

use maud::{html, Markup};

/// Colours for series, in order (each ≥ 4.5:1 against white); the last is for "other".
const PALETTE: [&str; 6] = [
    "#1b7f3b", "#b3261e", "#8a5a00", "#5b3fa0", "#0b5394", "#4a4a4a",
];

const W: u64 = 600;
const H: u64 = 180;
const LEFT: u64 = 40;
const BOTTOM: u64 = 22;

/// One bar: its label and one value per series.
pub struct Bar {
    pub label: String,
    pub values: Vec<u64>,
}

/// The colour of series `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i.min(PALETTE.len() - 1)]
}

/// The smallest of 1, 2, 5 × 10^k at or above `max` (at least 1).
fn nice_ceiling(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let v = step.saturating_mul(m);
            if v >= max {
                return v;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// One mark: a bar's part for one series.
struct Mark<'a> {
    x: u64,
    y: u64,
    height: u64,
    series: usize,
    bar: &'a str,
    value: u64,
}

/// Stacked bars, one per entry of `bars`, series in the order of `series`, with a legend.
pub fn stacked_bars(id: &str, title: &str, series: &[String], bars: &[Bar]) -> Markup {
    let top = nice_ceiling(
        bars.iter()
            .map(|b| b.values.iter().sum::<u64>())
            .max()
            .unwrap_or(0),
    );
    let n = u64::try_from(bars.len()).unwrap_or(1).max(1);
    let slot = (W - LEFT) / n;
    let plot = H - BOTTOM;
    let y = |v: u64| plot - v.min(top).saturating_mul(plot - 8) / top;
    let mut marks = Vec::new();
    let mut labels = Vec::new();
    for (i, b) in bars.iter().enumerate() {
        let x = LEFT + u64::try_from(i).unwrap_or(0) * slot + 1;
        if i == 0 || i + 1 == bars.len() || i % 10 == 0 {
            labels.push((x, b.label.as_str()));
        }
        let mut base = 0u64;
        for (s, v) in b.values.iter().enumerate().filter(|(_, v)| **v > 0) {
            let (y0, y1) = (y(base), y(base.saturating_add(*v)));
            base = base.saturating_add(*v);
            marks.push(Mark {
                x,
                y: y1,
                height: y0 - y1,
                series: s,
                bar: &b.label,
                value: *v,
            });
        }
    }
    let name = |s: usize| series.get(s).map_or("", String::as_str);
    html! {
        figure.chart {
            svg id=(id) viewBox={ "0 0 " (W) " " (H) } role="img" aria-labelledby={ (id) "-title" } {
                title id={ (id) "-title" } { (title) }
                line x1=(LEFT) y1=(plot) x2=(W) y2=(plot) stroke="#4a4a4a" {}
                line x1=(LEFT) y1=(y(top)) x2=(W) y2=(y(top)) stroke="#c8c8c8" {}
                text x=(LEFT - 4) y=(y(top) + 4) text-anchor="end" font-size="11" fill="#4a4a4a" { (top) }
                text x=(LEFT - 4) y=(plot) text-anchor="end" font-size="11" fill="#4a4a4a" { "0" }
                @for m in &marks {
                    rect x=(m.x) y=(m.y) width=(slot.saturating_sub(2).max(1)) height=(m.height)
                         fill=(colour(m.series)) data-bar=(m.bar) data-series=(name(m.series)) data-count=(m.value) {
                        title { (m.bar) " · " (name(m.series)) ": " (m.value) }
                    }
                }
                @for (x, l) in &labels {
                    text x=(x) y=(H - 6) font-size="11" fill="#4a4a4a" { (l) }
                }
            }
            figcaption {
                (title) ": "
                @for (i, s) in series.iter().enumerate() {
                    span.key { svg width="12" height="12" aria-hidden="true" { rect width="12" height="12" fill=(colour(i)) {} } " " (s) }
                    " "
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        let got: Vec<u64> = [0, 1, 3, 7, 10, 11, 49, 51, 999].map(nice_ceiling).to_vec();
        assert_eq!(got, [1, 1, 5, 10, 10, 20, 50, 100, 1000]);
    }

    #[test]
    fn bars_stack_to_their_totals_and_escape_labels() {
        let bars = [
            Bar {
                label: "10:00".into(),
                values: vec![3, 1],
            },
            Bar {
                label: "<b>".into(),
                values: vec![0, 5],
            },
        ];
        let svg = stacked_bars("c", "Requests", &["ok".into(), "BAD".into()], &bars).into_string();
        // top = 5: the plot is 158 high, 150 of it for values (30 per request)
        assert!(svg.contains(r##"y="68" width="278" height="90" fill="#1b7f3b" data-bar="10:00" data-series="ok" data-count="3""##), "{svg}");
        assert!(svg.contains(r##"y="38" width="278" height="30" fill="#b3261e" data-bar="10:00" data-series="BAD" data-count="1""##), "{svg}");
        assert!(
            svg.contains(r#"data-bar="&lt;b&gt;" data-series="BAD" data-count="5""#),
            "{svg}"
        );
        assert!(!svg.contains(r#"data-series="ok" data-count="0""#));
        assert!(!svg.contains("<b>"));
    }
}
