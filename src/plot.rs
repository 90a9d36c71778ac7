//! A small, dependency-free SVG line plot for loss curves.
//!
//! [`loss_svg`] draws iteration (x) against loss (y) for any number of series, with
//! "nice" ticks (steps of 1, 2, 2.5 or 5 times a power of ten), grid lines, a title,
//! a legend and, for sparse series, point markers.

use std::fmt::Write as _;

/// One curve: `(iteration, loss)` points, drawn in the given order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
/// The plot area (inside the axes), in SVG pixels.
const LEFT: f64 = 78.0;
const RIGHT: f64 = WIDTH - 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = HEIGHT - 58.0;
/// Series with at most this many points also get a circle per point.
const MARKER_MAX_POINTS: usize = 50;
/// Aim for about this many ticks per axis.
const TARGET_TICKS: usize = 5;
/// Matplotlib's "tab10" palette: distinct and colour-blind friendly enough.
const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
/// Estimated average glyph width at font-size 12 (there are no font metrics here).
const CHAR_WIDTH: f64 = 6.6;
const FONT: &str = "font-family=\"Helvetica, Arial, sans-serif\"";

/// An SVG document (width 720, height 420) with axes, ~5 "nice" tick labels on each axis (iteration on x, loss on y),
/// a title, one polyline per series with a distinct color, a legend, and small circle markers when a series has <= 50 points.
/// Empty series or all-empty input must still produce a valid SVG ("no data" text). NaN/inf points are skipped.
pub fn loss_svg(title: &str, series: &[Series]) -> String {
    // Only finite points are drawn; a series left with none is "empty".
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect()
        })
        .collect();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\" {FONT}>{}</text>",
        (LEFT + RIGHT) / 2.0,
        xml_escape(title)
    );

    let all = finite.iter().flatten();
    let x_bounds = bounds(all.clone().map(|p| p.0));
    let y_bounds = bounds(all.map(|p| p.1));
    let axes = match (x_bounds, y_bounds) {
        // Iterations usually start at 0 and end at a round number: no margin on x.
        // Losses get a 4% margin so a curve doesn't run along the frame.
        (Some(xb), Some(yb)) => Axis::new(xb, 0.0).zip(Axis::new(yb, 0.04)),
        _ => None,
    };

    match axes {
        Some((x_axis, y_axis)) => {
            draw_axes(&mut svg, &x_axis, &y_axis);
            for (i, points) in finite.iter().enumerate() {
                if !points.is_empty() {
                    draw_series(&mut svg, points, COLORS[i % COLORS.len()], &x_axis, &y_axis);
                }
            }
            draw_legend(&mut svg, series, &finite, &x_axis, &y_axis);
        }
        None => {
            // No drawable point (or values so large their span overflows): an empty frame.
            draw_frame_and_labels(&mut svg, 20.0);
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" dy=\"0.35em\" \
                 font-size=\"14\" fill=\"#888\" {FONT}>no data</text>",
                (LEFT + RIGHT) / 2.0,
                (TOP + BOTTOM) / 2.0
            );
        }
    }

    svg.push_str("</svg>\n");
    svg
}

/// `(min, max)` of the values, or `None` for no values.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A linear axis whose domain is widened to whole tick steps.
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// The axis for data spanning `(min, max)`, widened by `margin` times the span on
    /// each side (but not below zero for non-negative data); `None` if the span is not finite.
    fn new((min, max): (f64, f64), margin: f64) -> Option<Axis> {
        let pad = if max > min {
            (max - min) * margin
        } else if min == 0.0 {
            1.0 // A single value: give it some room, 1 around zero...
        } else {
            min.abs() * 0.1 // ...or 10% of its magnitude.
        };
        // Non-negative data (iterations, losses) stays non-negative.
        let lo = if min >= 0.0 && min - pad < 0.0 {
            0.0
        } else {
            min - pad
        };
        let hi = max + pad;
        let step = nice_step((hi - lo) / (TARGET_TICKS - 1) as f64);
        if !step.is_finite() || step <= 0.0 {
            return None;
        }
        let lo = (lo / step).floor() * step;
        let hi = (hi / step).ceil() * step;
        // Guard against overflow at the extremes of f64.
        (lo.is_finite() && hi.is_finite() && hi > lo).then_some(Axis { lo, hi, step })
    }

    /// Tick values from `lo` to `hi` inclusive.
    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }

    /// Maps a value to `[0, 1]` along the axis.
    fn frac(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }

    /// The tick label for `v`, with just enough decimals for the step.
    fn label(&self, v: f64) -> String {
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v }; // no "-0" or "1e-17"
        let magnitude = self.lo.abs().max(self.hi.abs());
        if magnitude >= 1e7 || self.step < 1e-5 {
            // Scientific notation, with enough mantissa digits to show the step
            // (one more for steps of 2.5 x 10^k).
            if v == 0.0 {
                return "0".to_string();
            }
            let exponent = |x: f64| x.abs().log10().floor();
            let mantissa = self.step / 10f64.powf(exponent(self.step));
            let extra = if (mantissa - mantissa.round()).abs() > 1e-6 {
                1.0
            } else {
                0.0
            };
            let precision =
                (exponent(magnitude) - exponent(self.step) + extra).clamp(0.0, 8.0) as usize;
            return format!("{v:.precision$e}");
        }
        // Decimals needed to show the step exactly (2.5 and 0.25 steps need one more).
        let mut decimals = (-self.step.log10().floor()).max(0.0) as usize;
        while decimals < 10 && {
            let scaled = self.step * 10f64.powi(decimals as i32);
            (scaled - scaled.round()).abs() > 1e-6 * scaled.max(1.0)
        } {
            decimals += 1;
        }
        format!("{v:.decimals$}")
    }
}

/// The "nice" number (1, 2, 2.5 or 5 times a power of ten) closest to `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction < 1.5 {
        1.0
    } else if fraction < 2.25 {
        2.0
    } else if fraction < 3.5 {
        2.5
    } else if fraction < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn px(x_axis: &Axis, x: f64) -> f64 {
    LEFT + x_axis.frac(x) * (RIGHT - LEFT)
}

fn py(y_axis: &Axis, y: f64) -> f64 {
    BOTTOM - y_axis.frac(y) * (BOTTOM - TOP)
}

/// The plot frame and the axis titles, shared by the empty and the normal plot.
/// `y_title_x` is where the rotated "loss" goes, clear of the tick labels.
fn draw_frame_and_labels(svg: &mut String, y_title_x: f64) {
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\" stroke-width=\"1\"/>",
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" {FONT}>iteration</text>",
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 14.0
    );
    let (lx, ly) = (y_title_x, (TOP + BOTTOM) / 2.0);
    let _ = writeln!(
        svg,
        "<text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"middle\" font-size=\"13\" \
         transform=\"rotate(-90 {lx} {ly:.1})\" {FONT}>loss</text>"
    );
}

/// Grid lines, tick marks and tick labels, then the frame on top.
fn draw_axes(svg: &mut String, x_axis: &Axis, y_axis: &Axis) {
    svg.push_str("<g stroke=\"#e5e5e5\" stroke-width=\"1\">\n");
    for x in x_axis.ticks() {
        let x = px(x_axis, x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.2}\" y1=\"{TOP}\" x2=\"{x:.2}\" y2=\"{BOTTOM}\"/>"
        );
    }
    for y in y_axis.ticks() {
        let y = py(y_axis, y);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.2}\" x2=\"{RIGHT}\" y2=\"{y:.2}\"/>"
        );
    }
    svg.push_str("</g>\n");

    let _ = writeln!(svg, "<g font-size=\"12\" fill=\"#333\" {FONT}>");
    for x in x_axis.ticks() {
        let xp = px(x_axis, x);
        let _ = writeln!(
            svg,
            "<line x1=\"{xp:.2}\" y1=\"{BOTTOM}\" x2=\"{xp:.2}\" y2=\"{}\" stroke=\"#333\"/>\
             <text x=\"{xp:.2}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            BOTTOM + 5.0,
            BOTTOM + 20.0,
            x_axis.label(x)
        );
    }
    for y in y_axis.ticks() {
        let yp = py(y_axis, y);
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{yp:.2}\" x2=\"{LEFT}\" y2=\"{yp:.2}\" stroke=\"#333\"/>\
             <text x=\"{}\" y=\"{yp:.2}\" text-anchor=\"end\" dy=\"0.35em\">{}</text>",
            LEFT - 5.0,
            LEFT - 8.0,
            y_axis.label(y)
        );
    }
    svg.push_str("</g>\n");
    // Keep the axis title clear of the widest y tick label.
    let widest = y_axis
        .ticks()
        .iter()
        .map(|&y| y_axis.label(y).len())
        .max()
        .unwrap_or(0);
    let y_title_x = (LEFT - 8.0 - widest as f64 * CHAR_WIDTH - 10.0).clamp(14.0, 20.0);
    draw_frame_and_labels(svg, y_title_x);
}

fn draw_series(svg: &mut String, points: &[(f64, f64)], color: &str, x_axis: &Axis, y_axis: &Axis) {
    let coords: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.2},{:.2}", px(x_axis, x), py(y_axis, y)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" stroke-linejoin=\"round\" \
         stroke-linecap=\"round\" points=\"{}\"/>",
        coords.join(" ")
    );
    if points.len() <= MARKER_MAX_POINTS {
        let _ = writeln!(svg, "<g fill=\"{color}\">");
        for &(x, y) in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.2}\" cy=\"{:.2}\" r=\"2.8\"/>",
                px(x_axis, x),
                py(y_axis, y)
            );
        }
        svg.push_str("</g>\n");
    }
}

/// The legend, on a translucent white box in the corner of the plot area that the
/// curves cross least (preferring top-right, where falling loss curves rarely are).
/// Series without data are listed as such.
fn draw_legend(
    svg: &mut String,
    series: &[Series],
    finite: &[Vec<(f64, f64)>],
    x_axis: &Axis,
    y_axis: &Axis,
) {
    const MAX_CHARS: usize = 40;
    const LINE: f64 = 18.0;
    if series.is_empty() {
        return;
    }
    let labels: Vec<String> = series
        .iter()
        .zip(finite)
        .map(|(s, pts)| {
            let mut name: String = s.name.chars().take(MAX_CHARS).collect();
            if s.name.chars().count() > MAX_CHARS {
                name.push('…');
            }
            if pts.is_empty() {
                name.push_str(" (no data)");
            }
            name
        })
        .collect();
    let text_width =
        labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64 * CHAR_WIDTH;
    let width = 36.0 + text_width + 10.0;
    let height = 8.0 + LINE * labels.len() as f64;
    let (left, right) = (LEFT + 10.0, RIGHT - 10.0 - width);
    let (top, bottom) = (TOP + 10.0, BOTTOM - 10.0 - height);
    let candidates = [(right, top), (left, bottom), (left, top), (right, bottom)];
    let (x0, y0) = candidates
        .into_iter()
        .min_by_key(|&(x, y)| curve_samples_inside(finite, x_axis, y_axis, (x, y, width, height)))
        .expect("candidates is not empty");
    let _ = writeln!(
        svg,
        "<g font-size=\"12\" {FONT}>\n<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" \
         fill=\"white\" fill-opacity=\"0.85\" stroke=\"#bbb\" rx=\"3\"/>"
    );
    for (i, (label, pts)) in labels.iter().zip(finite).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = y0 + 4.0 + LINE * (i as f64 + 0.5);
        if !pts.is_empty() {
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"/>",
                x0 + 8.0,
                x0 + 28.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{y:.1}\" dy=\"0.35em\" fill=\"#222\">{}</text>",
            x0 + 36.0,
            xml_escape(label)
        );
    }
    svg.push_str("</g>\n");
}

/// How much of the curves falls inside the rectangle `(x, y, width, height)` (in
/// pixels): the number of points sampled every few pixels along each polyline.
fn curve_samples_inside(
    finite: &[Vec<(f64, f64)>],
    x_axis: &Axis,
    y_axis: &Axis,
    (x, y, width, height): (f64, f64, f64, f64),
) -> usize {
    let inside = |(px, py): (f64, f64)| px >= x && px <= x + width && py >= y && py <= y + height;
    let mut count = 0;
    for points in finite {
        let pixels: Vec<(f64, f64)> = points
            .iter()
            .map(|&(a, b)| (px(x_axis, a), py(y_axis, b)))
            .collect();
        count += pixels.iter().filter(|&&p| inside(p)).count();
        for pair in pixels.windows(2) {
            let ((x1, y1), (x2, y2)) = (pair[0], pair[1]);
            // Samples strictly between the ends, about every 4 pixels (at most 200).
            let n = ((x2 - x1).hypot(y2 - y1) / 4.0).ceil().min(200.0) as usize;
            count += (1..n)
                .map(|i| {
                    let t = i as f64 / n as f64;
                    (x1 + t * (x2 - x1), y1 + t * (y2 - y1))
                })
                .filter(|&p| inside(p))
                .count();
        }
    }
    count
}

/// Escapes text for use in SVG element content and attribute values.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            points,
        }
    }

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
    }

    fn decaying(n: usize, scale: f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let it = (i * 10) as f64;
                (it, 1.5 + scale * (-(i as f64) / 30.0).exp())
            })
            .collect()
    }

    #[test]
    fn one_polyline_per_non_empty_series() {
        let svg = loss_svg(
            "training",
            &[
                series("train", decaying(200, 9.0)),
                series("empty", vec![]),
                series("val", decaying(20, 9.5)),
                series("all nan", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)]),
            ],
        );
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // Markers only for the 20-point series.
        assert_eq!(svg.matches("<circle").count(), 20);
        assert!(svg.contains("#1f77b4") && svg.contains("#2ca02c"));
        assert!(svg.contains(">train</text>") && svg.contains(">val</text>"));
        assert!(svg.contains("empty (no data)"));
        assert!(!svg.contains("no data</text>\n</svg>"));
    }

    #[test]
    fn escapes_title_and_names() {
        let svg = loss_svg(
            "a < b & c > d",
            &[series("\"x\" & <y>", vec![(0.0, 1.0), (1.0, 0.5)])],
        );
        assert_well_formed(&svg);
        assert!(svg.contains("a &lt; b &amp; c &gt; d"), "{svg}");
        assert!(svg.contains("&quot;x&quot; &amp; &lt;y&gt;"), "{svg}");
        assert!(!svg.contains("a < b"));
    }

    #[test]
    fn empty_inputs_say_no_data() {
        for input in [
            vec![],
            vec![series("a", vec![])],
            vec![series("b", vec![(f64::NAN, f64::NAN)])],
        ] {
            let svg = loss_svg("nothing", &input);
            assert_well_formed(&svg);
            assert!(svg.contains(">no data</text>"), "{svg}");
            assert_eq!(svg.matches("<polyline").count(), 0);
        }
    }

    #[test]
    fn single_point_and_constant_series() {
        let svg = loss_svg("one", &[series("p", vec![(0.0, 2.5)])]);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1);

        let svg = loss_svg(
            "flat",
            &[series("c", (0..100).map(|i| (i as f64, 3.0)).collect())],
        );
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 1);

        let svg = loss_svg("zero", &[series("z", vec![(5.0, 0.0), (5.0, 0.0)])]);
        assert_well_formed(&svg);
    }

    #[test]
    fn extreme_values_stay_finite() {
        let svg = loss_svg(
            "big",
            &[series("b", vec![(0.0, -f64::MAX), (1.0, f64::MAX)])],
        );
        assert_well_formed(&svg);
        let svg = loss_svg("tiny", &[series("t", vec![(0.0, 1e-12), (1e9, 3e-12)])]);
        assert_well_formed(&svg);
    }

    #[test]
    fn points_stay_inside_the_plot_area() {
        let svg = loss_svg(
            "t",
            &[series("s", vec![(3.0, 7.3), (1234.0, 0.02), (999.0, 11.1)])],
        );
        for circle in svg.split("<circle ").skip(1) {
            let attr = |name: &str| -> f64 {
                let start = circle.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let end = start + circle[start..].find('"').unwrap();
                circle[start..end].parse().unwrap()
            };
            let (cx, cy) = (attr("cx"), attr("cy"));
            assert!((LEFT..=RIGHT).contains(&cx), "{cx}");
            assert!((TOP..=BOTTOM).contains(&cy), "{cy}");
        }
    }

    #[test]
    fn nice_ticks_and_labels() {
        let axis = Axis::new((0.0, 5000.0), 0.0).unwrap();
        assert_eq!(axis.step, 1000.0);
        let labels: Vec<String> = axis.ticks().iter().map(|&v| axis.label(v)).collect();
        assert_eq!(labels, ["0", "1000", "2000", "3000", "4000", "5000"]);

        let axis = Axis::new((1.47, 10.93), 0.0).unwrap();
        let labels: Vec<String> = axis.ticks().iter().map(|&v| axis.label(v)).collect();
        assert_eq!(labels, ["0.0", "2.5", "5.0", "7.5", "10.0", "12.5"]);

        let axis = Axis::new((2.5, 2.5), 0.04).unwrap();
        assert!(axis.lo <= 2.5 && axis.hi >= 2.5 && axis.hi > axis.lo);
        let n = axis.ticks().len();
        assert!((3..=8).contains(&n), "{n}");

        let axis = Axis::new((0.0, 1e9), 0.0).unwrap();
        let labels: Vec<String> = axis.ticks().iter().map(|&v| axis.label(v)).collect();
        assert_eq!(labels, ["0", "2.50e8", "5.00e8", "7.50e8", "1.00e9"]);

        let axis = Axis::new((-0.3, 0.3), 0.04).unwrap();
        assert!(axis.ticks().iter().all(|&v| axis.label(v) != "-0.0"));
    }

    #[test]
    fn nice_step_values() {
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(0.21), 0.2);
        assert_eq!(nice_step(0.23), 0.25);
        assert_eq!(nice_step(2.6), 2.5);
        assert_eq!(nice_step(4.0), 5.0);
        assert_eq!(nice_step(800.0), 1000.0);
    }
}
