//! Line charts as inline SVG, drawn on the server from the monitor's readings: they show
//! without JavaScript, the script only swaps in a newer one, and a reload draws the same
//! history. Series names are escaped (group and projection names come from users).

use std::fmt::Write;

/// One line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// (unix milliseconds, value), oldest first.
    pub points: Vec<(i64, f64)>,
}

/// A chart: its element id, the unit of its values, its lines.
#[derive(Debug, Clone)]
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;
/// Lines get classes `s0` to `s5` (colours in keel.css), then repeat.
const COLOURS: usize = 6;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// A value on the axis: `0`, `12`, `3.5k`, `1.2M`.
fn short(v: f64) -> String {
    let (n, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = if n.fract() == 0.0 || n.abs() >= 100.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    };
    format!("{text}{suffix}")
}

impl Chart {
    pub fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// The SVG, with `data-points` (how many points it draws) for tests and scripts.
    pub fn render(&self) -> String {
        let all = || self.series.iter().flat_map(|s| s.points.iter());
        let t0 = all().map(|p| p.0).min().unwrap_or(0);
        let t1 = all().map(|p| p.0).max().unwrap_or(0).max(t0 + 1);
        let top = all().map(|p| p.1).fold(0.0_f64, f64::max);
        let top = if top <= 0.0 { 1.0 } else { top * 1.1 };
        let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let x = |t: i64| LEFT + (t - t0) as f64 / (t1 - t0) as f64 * w;
        let y = |v: f64| TOP + h - (v / top) * h;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg class="chart" id="{id}" data-points="{n}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}">"#,
            id = self.id,
            n = self.points(),
            title = escape(self.title),
        );
        // Grid: the bottom, the middle and the top value.
        for frac in [0.0, 0.5, 1.0] {
            let gy = y(top * frac);
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" x2="{r}" y1="{gy:.1}" y2="{gy:.1}"/><text class="axis" x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
                r = WIDTH - RIGHT,
                lx = LEFT - 6.0,
                ty = gy + 4.0,
                label = escape(&format!("{}{}", short(top * frac), self.unit)),
            );
        }
        if self.points() == 0 {
            let _ = write!(
                svg,
                r#"<text class="empty" x="{cx}" y="{cy}" text-anchor="middle">no readings yet</text>"#,
                cx = LEFT + w / 2.0,
                cy = TOP + h / 2.0,
            );
        } else if t1 - t0 >= 1000 {
            let span_s = (t1 - t0) / 1000;
            let _ = write!(
                svg,
                r#"<text class="axis" x="{LEFT}" y="{by}">{ago}</text><text class="axis" x="{r}" y="{by}" text-anchor="end">now</text>"#,
                by = HEIGHT - 6.0,
                r = WIDTH - RIGHT,
                ago = escape(&format!("−{}", super::format::duration(span_s as f64))),
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let line: Vec<String> = s
                .points
                .iter()
                .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline class="line s{c}" points="{pts}"><title>{name}</title></polyline>"#,
                c = i % COLOURS,
                pts = line.join(" "),
                name = escape(&s.name),
            );
        }
        svg.push_str("</svg>");
        svg
    }

    /// The legend under the chart, as HTML.
    pub fn legend(&self) -> String {
        let mut html = String::from(r#"<ul class="legend">"#);
        for (i, s) in self.series.iter().enumerate() {
            let last = s.points.last().map_or("–".into(), |p| short(p.1));
            let _ = write!(
                html,
                r#"<li><span class="swatch s{c}"></span>{name} <b>{last}{unit}</b></li>"#,
                c = i % COLOURS,
                name = escape(&s.name),
                unit = escape(self.unit),
            );
        }
        html.push_str("</ul>");
        html
    }
}

/// A sparkline: one series in a small SVG without axes or id, for a table cell (so a table
/// may hold many). `data-points` says how many points it draws.
pub fn sparkline(points: &[(i64, f64)]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let t0 = points.iter().map(|p| p.0).min().unwrap_or(0);
    let t1 = points.iter().map(|p| p.0).max().unwrap_or(0).max(t0 + 1);
    let top = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let top = if top <= 0.0 { 1.0 } else { top };
    let line: Vec<String> = points
        .iter()
        .map(|&(t, v)| {
            let x = (t - t0) as f64 / (t1 - t0) as f64 * W;
            let y = H - 1.0 - v / top * (H - 2.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        r#"<svg class="spark" data-points="{n}" viewBox="0 0 {W} {H}" role="img" aria-label="trend"><polyline class="line s0" points="{pts}"/></svg>"#,
        n = points.len(),
        pts = line.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_every_point_and_escapes_names() {
        let chart = Chart {
            id: "lag",
            title: "lag",
            unit: " s",
            series: vec![Series {
                name: "<script>alert(1)</script>".into(),
                points: vec![(0, 1.0), (1000, 3.0), (2000, 2.0)],
            }],
        };
        let svg = chart.render();
        assert!(svg.contains(r#"data-points="3""#));
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"));
        assert!(!chart.legend().contains("<script>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }

    #[test]
    fn an_empty_chart_says_so() {
        let chart = Chart {
            id: "x",
            title: "x",
            unit: "",
            series: vec![],
        };
        assert!(chart.render().contains("no readings yet"));
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(12.0), "12");
    }

    #[test]
    fn a_sparkline_draws_its_points() {
        let svg = sparkline(&[(0, 0.0), (1000, 5.0), (2000, 2.0)]);
        assert!(svg.contains(r#"data-points="3""#) && svg.contains("polyline"));
        assert!(sparkline(&[]).contains(r#"data-points="0""#));
    }
}
