//! A small SVG plotting module for the HTML report: time on x, one linear
//! or logarithmic y axis, shaded bands, line series with gaps, markers and
//! threshold segments. Every element carries a class, so that the page's
//! CSS colours it (light and dark themes) and a test can find it (one
//! `band` per fault); ARCHITECTURE.md says why this is not `plotters`.

use std::fmt::Write as _;

/// The most markers one plot draws; the rest are dropped evenly, so a run
/// with many errors still gives a page of bounded size.
pub const MAX_MARKERS: usize = 2_000;

/// A plot's y scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// From 0 to `max`.
    Linear {
        /// The top of the axis.
        max: f64,
    },
    /// From `min` to `max`, both powers of ten.
    Log {
        /// The bottom of the axis, positive.
        min: f64,
        /// The top of the axis.
        max: f64,
    },
}

impl Scale {
    /// A linear scale whose top is a round number at or above every value.
    pub fn linear(values: impl IntoIterator<Item = f64>) -> Scale {
        let max = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        Scale::Linear {
            max: nice_ceiling(max),
        }
    }

    /// A logarithmic scale from the power of ten at or below the smallest
    /// positive value to the one at or above the largest.
    pub fn log(values: impl IntoIterator<Item = f64>) -> Scale {
        let (mut min, mut max) = (f64::INFINITY, 0.0f64);
        for v in values.into_iter().filter(|v| v.is_finite() && *v > 0.0) {
            min = min.min(v);
            max = max.max(v);
        }
        if !min.is_finite() {
            return Scale::Log {
                min: 1.0,
                max: 10.0,
            };
        }
        let min = 10f64.powf(min.log10().floor());
        let max = 10f64.powf(max.log10().ceil()).max(min * 10.0);
        Scale::Log { min, max }
    }

    /// Where `value` falls, from 0 (bottom) to 1 (top), clamped.
    pub fn fraction(self, value: f64) -> f64 {
        let f = match self {
            Scale::Linear { max } => value / max,
            Scale::Log { min, max } => {
                (value.max(min).log10() - min.log10()) / (max.log10() - min.log10())
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The tick values: five or so round steps, or each power of ten.
    pub fn ticks(self) -> Vec<f64> {
        match self {
            Scale::Linear { max } => {
                let step = nice_ceiling(max / 5.0);
                let mut ticks = Vec::new();
                let mut v = 0.0;
                while v <= max * (1.0 + 1e-9) && ticks.len() < 12 {
                    ticks.push(v);
                    v += step;
                }
                ticks
            }
            Scale::Log { min, max } => {
                let mut ticks = Vec::new();
                let mut v = min;
                while v <= max * (1.0 + 1e-9) && ticks.len() < 12 {
                    ticks.push(v);
                    v *= 10.0;
                }
                ticks
            }
        }
    }
}

/// The smallest of 1, 2 or 5 times a power of ten at or above `value`
/// (1 for anything not positive).
pub fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * power >= value * (1.0 - 1e-9) {
            return step * power;
        }
    }
    10.0 * power
}

/// A number as a tick label: no trailing zeros, at most three decimals.
pub fn label(value: f64) -> String {
    if value >= 1000.0 && value % 1000.0 == 0.0 {
        return format!("{}k", value / 1000.0);
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for HTML and SVG content and attribute values.
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

/// The plot area's geometry, shared by every plot of a page so that their
/// time axes line up.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// The whole figure's width, in pixels.
    pub width: f64,
    /// The left margin (y labels).
    pub left: f64,
    /// The right margin.
    pub right: f64,
    /// The top margin (band labels).
    pub top: f64,
    /// The bottom margin (time labels).
    pub bottom: f64,
    /// The end of the time axis, in seconds (it starts at 0).
    pub end_s: f64,
}

impl Frame {
    /// The x pixel of `seconds`.
    pub fn x(&self, seconds: f64) -> f64 {
        let inner = self.width - self.left - self.right;
        self.left + inner * (seconds / self.end_s).clamp(0.0, 1.0)
    }
}

/// One plot being drawn: elements are appended in drawing order.
pub struct Plot {
    frame: Frame,
    height: f64,
    scale: Option<Scale>,
    class: String,
    body: String,
}

impl Plot {
    /// A plot `height` pixels high with `scale` on y (none for a strip),
    /// its `<svg>` of class `class`, titled `title` for screen readers.
    pub fn new(frame: Frame, height: f64, scale: Option<Scale>, class: &str) -> Plot {
        Plot {
            frame,
            height,
            scale,
            class: class.to_owned(),
            body: String::new(),
        }
    }

    fn y(&self, value: f64) -> f64 {
        let inner = self.height - self.frame.top - self.frame.bottom;
        let f = self.scale.map_or(0.0, |s| s.fraction(value));
        self.frame.top + inner * (1.0 - f)
    }

    fn bottom(&self) -> f64 {
        self.height - self.frame.bottom
    }

    /// The axes: y ticks with `unit` after the top label, x ticks every few
    /// seconds, and grid lines.
    pub fn axes(&mut self, unit: &str) {
        let f = self.frame;
        let (x0, x1, bottom) = (f.left, f.width - f.right, self.bottom());
        if let Some(scale) = self.scale {
            let ticks = scale.ticks();
            let last = ticks.len().saturating_sub(1);
            for (i, tick) in ticks.into_iter().enumerate() {
                let y = self.y(tick);
                let text = if i == last {
                    format!("{} {unit}", label(tick))
                } else {
                    label(tick)
                };
                let _ = write!(
                    self.body,
                    r#"<line class="grid" x1="{x0:.1}" x2="{x1:.1}" y1="{y:.1}" y2="{y:.1}"/><text class="tick y" x="{:.1}" y="{:.1}">{}</text>"#,
                    x0 - 6.0,
                    y + 4.0,
                    escape(&text)
                );
            }
        }
        let step = nice_ceiling(f.end_s / 10.0).max(1.0);
        let mut s = 0.0;
        while s <= f.end_s + 1e-9 {
            let x = f.x(s);
            let _ = write!(
                self.body,
                r#"<line class="tick-mark" x1="{x:.1}" x2="{x:.1}" y1="{bottom:.1}" y2="{:.1}"/><text class="tick x" x="{x:.1}" y="{:.1}">{}s</text>"#,
                bottom + 4.0,
                bottom + 16.0,
                label(s)
            );
            s += step;
        }
        let _ = write!(
            self.body,
            r#"<line class="axis" x1="{x0:.1}" x2="{x1:.1}" y1="{bottom:.1}" y2="{bottom:.1}"/>"#
        );
    }

    /// A shaded band over `[from_s, to_s)` of class `band {class}`, labelled
    /// `label` at the top (on row `row`, so that neighbours do not overlap),
    /// with `data-*` attributes from `data`.
    pub fn band(
        &mut self,
        from_s: f64,
        to_s: f64,
        class: &str,
        label_text: Option<&str>,
        row: usize,
        data: &[(&str, &str)],
    ) {
        let (x0, x1) = (self.frame.x(from_s), self.frame.x(to_s));
        let width = (x1 - x0).max(2.0);
        let top = self.frame.top;
        let height = self.bottom() - top;
        let mut attributes = String::new();
        for (name, value) in data {
            let _ = write!(attributes, r#" data-{name}="{}""#, escape(value));
        }
        let _ = write!(self.body, r#"<g class="band {class}"{attributes}>"#);
        let _ = write!(
            self.body,
            r#"<rect x="{x0:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}"/>"#
        );
        if let Some(text) = label_text {
            let _ = write!(
                self.body,
                r#"<text class="band-label" x="{:.1}" y="{:.1}">{}</text>"#,
                x0 + 3.0,
                top - 4.0 - 12.0 * (row % 2) as f64,
                escape(text)
            );
        }
        let _ = write!(
            self.body,
            "<title>{}</title></g>",
            escape(label_text.unwrap_or(class))
        );
    }

    /// A horizontal bar in a strip: `[from_s, to_s)` on row `row` of
    /// `rows`, class `class`, with a tooltip.
    pub fn bar(&mut self, from_s: f64, to_s: f64, row: usize, rows: usize, class: &str, tip: &str) {
        let (x0, x1) = (self.frame.x(from_s), self.frame.x(to_s));
        let inner = self.bottom() - self.frame.top;
        let row_height = inner / rows.max(1) as f64;
        let y = self.frame.top + row_height * row as f64 + 1.0;
        let _ = write!(
            self.body,
            r#"<rect class="{class}" x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.1}"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            (row_height - 2.0).max(1.0),
            escape(tip)
        );
    }

    /// A label at the left of row `row` of `rows` (a strip's row names).
    pub fn row_label(&mut self, row: usize, rows: usize, text: &str) {
        let inner = self.bottom() - self.frame.top;
        let row_height = inner / rows.max(1) as f64;
        let y = self.frame.top + row_height * (row as f64 + 0.5) + 4.0;
        let _ = write!(
            self.body,
            r#"<text class="tick y" x="{:.1}" y="{y:.1}">{}</text>"#,
            self.frame.left - 6.0,
            escape(text)
        );
    }

    /// A line through `points` (seconds, value); `None` values break it.
    pub fn series(&mut self, points: &[(f64, Option<f64>)], class: &str, name: &str) {
        let d = path(points, |s| self.frame.x(s), |v| self.y(v));
        if d.is_empty() {
            return;
        }
        let _ = write!(
            self.body,
            r#"<path class="series {class}" d="{d}"><title>{}</title></path>"#,
            escape(name)
        );
    }

    /// A marker per point (seconds, value, tooltip), at most [`MAX_MARKERS`].
    pub fn markers(&mut self, points: &[(f64, f64, String)], class: &str) {
        let keep = points.len().div_ceil(MAX_MARKERS).max(1);
        for (s, v, tip) in points.iter().step_by(keep) {
            let _ = write!(
                self.body,
                r#"<circle class="marker {class}" cx="{:.1}" cy="{:.1}" r="2.5"><title>{}</title></circle>"#,
                self.frame.x(*s),
                self.y(*v),
                escape(tip)
            );
        }
    }

    /// A threshold segment at `value` over `[from_s, to_s)`, class
    /// `threshold {class}`, with a tooltip.
    pub fn threshold(&mut self, from_s: f64, to_s: f64, value: f64, class: &str, tip: &str) {
        let y = self.y(value);
        let _ = write!(
            self.body,
            r#"<line class="threshold {class}" x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"><title>{}</title></line>"#,
            self.frame.x(from_s),
            self.frame.x(to_s),
            escape(tip)
        );
    }

    /// The finished `<svg>` element, labelled `title` for screen readers.
    pub fn finish(self, title: &str) -> String {
        format!(
            r#"<svg class="plot {}" viewBox="0 0 {:.0} {:.0}" width="{:.0}" height="{:.0}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">{}</svg>"#,
            self.class,
            self.frame.width,
            self.height,
            self.frame.width,
            self.height,
            escape(title),
            self.body
        )
    }
}

/// SVG path data through the points, starting a new subpath after each gap.
fn path(points: &[(f64, Option<f64>)], x: impl Fn(f64) -> f64, y: impl Fn(f64) -> f64) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for (s, v) in points {
        match v {
            Some(v) if v.is_finite() => {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if pen_down { " L" } else { " M" },
                    x(*s),
                    y(*v)
                );
                pen_down = true;
            }
            _ => pen_down = false,
        }
    }
    d.trim_start().to_owned()
}

/// A small line of `values` (one per second), `width` by `height` pixels,
/// on a linear scale from 0: the index page's sparkline.
pub fn sparkline(values: &[Option<f64>], width: f64, height: f64, class: &str) -> String {
    let scale = Scale::linear(values.iter().flatten().copied());
    let n = values.len().max(2) - 1;
    let points: Vec<(f64, Option<f64>)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64, *v))
        .collect();
    let d = path(
        &points,
        |i| 1.0 + (width - 2.0) * i / n as f64,
        |v| 1.0 + (height - 2.0) * (1.0 - scale.fraction(v)),
    );
    format!(
        r#"<svg class="sparkline {class}" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" role="img" aria-label="p99 latency per second" xmlns="http://www.w3.org/2000/svg"><path d="{d}"/></svg>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_are_one_two_or_five_times_a_power_of_ten() {
        let cases = [
            (0.0, 1.0),
            (0.3, 0.5),
            (1.0, 1.0),
            (1.1, 2.0),
            (4.9, 5.0),
            (5.1, 10.0),
            (246.0, 500.0),
            (2000.0, 2000.0),
            (f64::NAN, 1.0),
        ];
        for (value, expected) in cases {
            assert_eq!(nice_ceiling(value), expected, "nice_ceiling({value})");
        }
    }

    #[test]
    fn linear_scales_start_at_zero_and_cover_every_value() {
        let scale = Scale::linear([3.0, 246.0, f64::INFINITY]);
        assert_eq!(scale, Scale::Linear { max: 500.0 });
        assert_eq!(scale.fraction(0.0), 0.0);
        assert_eq!(scale.fraction(250.0), 0.5);
        assert_eq!(scale.fraction(900.0), 1.0, "clamped at the top");
        assert_eq!(scale.ticks(), vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]);
    }

    #[test]
    fn log_scales_span_powers_of_ten_and_clamp_what_is_not_positive() {
        let scale = Scale::log([0.0, 3.4, 188.0]);
        assert_eq!(
            scale,
            Scale::Log {
                min: 1.0,
                max: 1000.0
            }
        );
        assert_eq!(scale.ticks(), vec![1.0, 10.0, 100.0, 1000.0]);
        assert!((scale.fraction(100.0) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(scale.fraction(0.0), 0.0);
        assert_eq!(
            Scale::log([]),
            Scale::Log {
                min: 1.0,
                max: 10.0
            }
        );
    }

    #[test]
    fn paths_break_at_gaps_and_skip_what_is_not_a_number() {
        let points = [
            (0.0, Some(1.0)),
            (1.0, Some(2.0)),
            (2.0, None),
            (3.0, Some(f64::NAN)),
            (4.0, Some(3.0)),
        ];
        let d = path(&points, |s| s * 10.0, |v| v);
        assert_eq!(d, "M0.0,1.0 L10.0,2.0 M40.0,3.0");
        assert_eq!(path(&[], |s| s, |v| v), "");
    }

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn bands_carry_their_data_and_an_escaped_label() {
        let frame = Frame {
            width: 200.0,
            left: 20.0,
            right: 0.0,
            top: 20.0,
            bottom: 20.0,
            end_s: 10.0,
        };
        let mut plot = Plot::new(frame, 100.0, Some(Scale::Linear { max: 1.0 }), "p");
        plot.band(
            2.0,
            4.0,
            "fault",
            Some("a<b (latency)"),
            0,
            &[("fault", "a<b")],
        );
        let svg = plot.finish("t");
        assert!(
            svg.contains(r#"<g class="band fault" data-fault="a&lt;b"><rect x="56.0" y="20.0" width="36.0" height="60.0"/>"#),
            "{svg}"
        );
        assert!(svg.contains(">a&lt;b (latency)</text>"), "{svg}");
    }

    #[test]
    fn markers_are_bounded() {
        let frame = Frame {
            width: 100.0,
            left: 0.0,
            right: 0.0,
            top: 0.0,
            bottom: 0.0,
            end_s: 1.0,
        };
        let mut plot = Plot::new(frame, 10.0, Some(Scale::Linear { max: 1.0 }), "p");
        let points: Vec<(f64, f64, String)> = (0..MAX_MARKERS * 3 + 1)
            .map(|i| (0.5, 0.5, i.to_string()))
            .collect();
        plot.markers(&points, "error");
        let count = plot.finish("t").matches("<circle").count();
        assert!(count <= MAX_MARKERS, "{count} markers");
        assert!(count >= MAX_MARKERS / 2, "{count} markers");
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(label(0.0), "0");
        assert_eq!(label(0.05), "0.05");
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(1000.0), "1k");
        assert_eq!(label(200.0), "200");
    }
}
