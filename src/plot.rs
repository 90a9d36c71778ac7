//! Loss curves as SVG, drawn by `plotters` (its SVG backend only: no fonts, no bitmaps; text
//! widths are estimated, which is all an SVG needs).
//!
//! [`loss_svg`] draws iteration (x) against loss (y) for any number of series: a title, axes with
//! labelled ticks, a legend, one colour per series (matplotlib's tab10), and a circle per point
//! for sparse series. Points that are not finite are left out; a plot with nothing to draw says
//! "no data". The bytes depend only on the input (a train stage's `loss.svg` is an output).

use plotters::coord::Shift;
use plotters::prelude::*;

/// One curve: `(iteration, loss)` points, drawn in the given order.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (720, 420);
/// Series with at most this many points also get a circle per point.
const MARKER_MAX_POINTS: usize = 50;
/// Matplotlib's "tab10" palette: distinct and colour-blind friendly enough.
const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
const FONT: &str = "sans-serif";

/// An SVG document (720 × 420) of `series` under `title`.
pub fn loss_svg(title: &str, series: &[Series]) -> String {
    // Only finite points are drawn, and only values whose span is finite too.
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|(x, y)| {
                    x.is_finite() && y.is_finite() && x.abs() < 1e300 && y.abs() < 1e300
                })
                .collect()
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        // Drawing into a string cannot fail but for a bug in the layout; an error leaves what
        // was drawn (still a valid document).
        if let Err(e) = draw(&root, title, series, &finite) {
            tracing::debug!("plot {title:?}: {e}");
        }
        let _ = root.present();
    }
    svg.push('\n');
    svg
}

fn draw(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    series: &[Series],
    finite: &[Vec<(f64, f64)>],
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let all: Vec<(f64, f64)> = finite.iter().flatten().copied().collect();
    if all.is_empty() {
        let area = root.titled(title, (FONT, 18))?;
        area.draw(&Text::new(
            "no data",
            ((SIZE.0 / 2 - 30) as i32, (SIZE.1 / 2 - 30) as i32),
            (FONT, 16),
        ))?;
        return Ok(());
    }
    let x = span(all.iter().map(|p| p.0), 0.0);
    let y = span(all.iter().map(|p| p.1), 0.05);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe5, 0xe5, 0xe5))
        .x_desc("iteration")
        .y_desc("loss")
        .x_label_formatter(&|v| label(*v))
        .y_label_formatter(&|v| label(*v))
        .label_style((FONT, 12))
        .draw()?;
    for (i, (s, points)) in series.iter().zip(finite).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let name = if points.is_empty() {
            format!("{} (no data)", s.name)
        } else {
            s.name.clone()
        };
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if !points.is_empty() && points.len() <= MARKER_MAX_POINTS {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .draw()?;
    Ok(())
}

/// The range an axis shows for `values`: their extent, widened by `pad` of it on each side (and
/// to a unit around a single value, so a flat curve is drawn mid-height).
fn span(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let width = hi - lo;
    if !(width.is_finite() && width > 0.0) {
        let d = (lo.abs() * 0.05).clamp(1e-9, 0.5);
        return (lo - d, hi + d);
    }
    (lo - width * pad, hi + width * pad)
}

/// A tick label: plain for moderate magnitudes, exponent form for others, never `-0`.
fn label(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v };
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }

    /// What a curve (and a legend line) is drawn with.
    const CURVE: &str = "stroke-width=\"2\"";

    /// A text element's content, as the SVG backend writes it.
    fn text(s: &str) -> String {
        format!(">\n{s}\n</text>")
    }

    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
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
    fn one_polyline_per_non_empty_series_with_markers_when_sparse() {
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
        // Two curves, and a legend line for each of the four series (the axes are thinner).
        assert_eq!(svg.matches(CURVE).count(), 2 + 4, "{svg}");
        // Markers only for the 20-point series.
        assert_eq!(svg.matches("<circle").count(), 20);
        assert!(svg.contains("#1F77B4") && svg.contains("#2CA02C"), "{svg}");
        for name in [
            "training",
            "train",
            "val",
            "empty (no data)",
            "all nan (no data)",
        ] {
            assert!(svg.contains(&text(name)), "{name}: {svg}");
        }
        assert!(!svg.contains(&text("no data")));
    }

    #[test]
    fn escapes_title_and_names() {
        let svg = loss_svg(
            "a < b & c > d",
            &[series("\"x\" & <y>", vec![(0.0, 1.0), (1.0, 0.5)])],
        );
        assert_well_formed(&svg);
        assert!(svg.contains("a &lt; b &amp; c &gt; d"), "{svg}");
        assert!(!svg.contains("a < b"));
        assert!(!svg.contains("<y>"));
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
            assert!(svg.contains(&text("no data")), "{svg}");
            assert_eq!(svg.matches(CURVE).count(), 0);
        }
    }

    #[test]
    fn single_point_constant_and_extreme_series_stay_finite() {
        let svg = loss_svg("one", &[series("p", vec![(0.0, 2.5)])]);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<circle").count(), 1);
        let flat: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 3.0)).collect();
        assert_well_formed(&loss_svg("flat", &[series("c", flat)]));
        assert_well_formed(&loss_svg(
            "zero",
            &[series("z", vec![(5.0, 0.0), (5.0, 0.0)])],
        ));
        assert_well_formed(&loss_svg(
            "big",
            &[series("b", vec![(0.0, -f64::MAX), (1.0, 1.0)])],
        ));
        assert_well_formed(&loss_svg(
            "tiny",
            &[series("t", vec![(0.0, 1e-12), (1e9, 3e-12)])],
        ));
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let s = || [series("train", decaying(30, 2.0))];
        assert_eq!(loss_svg("t", &s()), loss_svg("t", &s()));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(label(0.0), "0");
        assert_eq!(label(-0.0), "0");
        assert_eq!(label(2000.0), "2000");
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(3.125), "3.125");
        assert_eq!(label(1e9), "1.00e9");
        assert_eq!(span([2.5].into_iter(), 0.05), (2.375, 2.625));
    }
}
