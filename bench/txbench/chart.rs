//! The chart of a sweep: two panels side by side, committed tx/s and p99 latency against
//! clients, one line per target, drawn with plotters' SVG backend. Clients are on a log scale
//! (the counts are spread like 1, 8, 32, 128), and so is p99, which spans two orders of
//! magnitude between the broker and direct clients on hot keys. The SVG writes text as
//! `<text>` elements, so no font is read and none need be installed.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::sweep::Sweep;
use crate::target::Target;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 560;
/// The strip under the title that holds the one legend of both panels, outside both plots so
/// that it hides no point.
const LEGEND_HEIGHT: u32 = 28;

/// One panel: which figure it plots and how its axis is labelled.
#[derive(Clone, Copy)]
enum Panel {
    Throughput,
    P99,
}

impl Panel {
    fn figure(self) -> &'static str {
        match self {
            Panel::Throughput => "tx_per_s",
            Panel::P99 => "p99_ms",
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Panel::Throughput => "Throughput",
            Panel::P99 => "p99 latency",
        }
    }

    /// The points of one target: p99 is on a log scale and is 0 where nothing committed.
    fn points(self, sweep: &Sweep, target: Target) -> Vec<(f64, f64)> {
        let mut points = sweep.series(target, self.figure());
        if let Panel::P99 = self {
            points.retain(|(_, p99)| *p99 > 0.0);
        }
        points
    }

    fn y_description(self) -> &'static str {
        match self {
            Panel::Throughput => "committed transactions per second (tx/s)",
            Panel::P99 => "p99 latency of committed transactions (ms, log scale)",
        }
    }
}

/// The same colour for a target in every chart (matplotlib's first four).
fn colour(target: Target) -> RGBColor {
    match target {
        Target::Broker => RGBColor(31, 119, 180),
        Target::Direct => RGBColor(214, 39, 40),
        Target::DirectSorted => RGBColor(44, 160, 44),
        Target::BrokerKeyed => RGBColor(255, 127, 14),
    }
}

/// The chart as an SVG document.
pub fn svg(sweep: &Sweep) -> Result<String, String> {
    let mut text = String::new();
    draw(sweep, SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)))
        .map_err(|error| format!("cannot draw the chart: {error}"))?;
    Ok(text)
}

type DrawResult<B> = Result<(), DrawingAreaErrorKind<<B as DrawingBackend>::ErrorType>>;

fn draw<B: DrawingBackend>(sweep: &Sweep, backend: B) -> DrawResult<B> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (root, footer) = root.split_vertically(HEIGHT - 24);
    footer.draw_text(
        &format!("server: {}", sweep.server.describe()),
        &("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
        (12, 4),
    )?;
    let root = root.titled(&sweep.title(), ("sans-serif", 18))?;
    let (legend, root) = root.split_vertically(LEGEND_HEIGHT);
    draw_legend(&legend, &sweep.targets)?;
    let (left, right) = root.split_horizontally(WIDTH / 2);
    let points = || sweep.steps.iter().map(|s| s.clients as f64);
    let (least, most) = points().fold((f64::INFINITY, 0.0_f64), |(a, b), c| (a.min(c), b.max(c)));
    let clients = (least / 1.3)..(most * 1.3);
    let ticks: Vec<f64> = points().collect();
    let x = || clients.clone().log_scale().with_key_points(ticks.clone());

    let (_, highest) = extent(sweep, Panel::Throughput);
    draw_panel(&left, sweep, Panel::Throughput, x(), 0.0..highest * 1.15)?;
    let (fastest, slowest) = extent(sweep, Panel::P99);
    let p99 = (fastest / 1.5)..(slowest * 1.5);
    let p99_ticks = one_two_five(&p99);
    draw_panel(
        &right,
        sweep,
        Panel::P99,
        x(),
        p99.log_scale().with_key_points(p99_ticks),
    )?;
    root.present()
}

/// A line sample and the name of each target, side by side, centred.
fn draw_legend<B: DrawingBackend>(
    area: &DrawingArea<B, plotters::coord::Shift>,
    targets: &[Target],
) -> DrawResult<B> {
    const ENTRY: i32 = 150;
    let middle = LEGEND_HEIGHT as i32 / 2;
    let mut x = (WIDTH as i32 - ENTRY * targets.len() as i32) / 2;
    for target in targets {
        let style = colour(*target).stroke_width(3);
        area.draw(&PathElement::new(
            vec![(x, middle), (x + 28, middle)],
            style,
        ))?;
        area.draw(&Circle::new((x + 14, middle), 4, colour(*target).filled()))?;
        let font =
            TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw_text(target.name(), &font, (x + 36, middle))?;
        x += ENTRY;
    }
    Ok(())
}

/// The smallest positive and the largest median of the panel's figure over every target and
/// client count (0.1 and 1 when there is none, so that an empty chart still has axes).
fn extent(sweep: &Sweep, panel: Panel) -> (f64, f64) {
    let values = sweep
        .targets
        .iter()
        .flat_map(|t| panel.points(sweep, *t))
        .map(|(_, value)| value)
        .filter(|value| *value > 0.0);
    let (least, most) = values.fold((f64::INFINITY, 0.0_f64), |(a, b), v| (a.min(v), b.max(v)));
    if least.is_finite() {
        (least, most)
    } else {
        (0.1, 1.0)
    }
}

fn draw_panel<B, X, Y>(
    area: &DrawingArea<B, plotters::coord::Shift>,
    sweep: &Sweep,
    panel: Panel,
    x: X,
    y: Y,
) -> DrawResult<B>
where
    B: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption(), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients (log scale)")
        .y_desc(panel.y_description())
        .x_label_formatter(&|clients| format!("{clients:.0}"))
        .y_label_formatter(&|value| format_value(*value))
        .max_light_lines(4)
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;
    for target in &sweep.targets {
        let colour = colour(*target);
        let points = panel.points(sweep, *target);
        chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 4, colour.filled())),
        )?;
    }
    Ok(())
}

/// The ticks of a log axis: 1, 2 and 5 times each power of ten inside `range`.
fn one_two_five(range: &std::ops::Range<f64>) -> Vec<f64> {
    let lowest = range.start.log10().floor() as i32;
    let highest = range.end.log10().ceil() as i32;
    (lowest..=highest)
        .flat_map(|power| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(power)))
        .filter(|tick| range.contains(tick))
        .collect()
}

/// Axis labels: no decimals from 10 up (and for 0), one below, two below 1.
fn format_value(value: f64) -> String {
    let decimals = if value >= 10.0 || value == 0.0 {
        0
    } else if value >= 1.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::tests::{synthetic_sweep, CLIENTS};

    fn svg_colour(target: Target) -> String {
        let RGBColor(r, g, b) = colour(target);
        format!("#{r:02X}{g:02X}{b:02X}")
    }

    #[test]
    fn the_chart_is_svg_with_a_line_per_target_in_each_panel_and_one_legend() {
        let sweep = synthetic_sweep();
        let text = svg(&sweep).expect("drawn");
        let document = roxmltree::Document::parse(&text).expect("the chart parses as XML");
        assert_eq!(document.root_element().tag_name().name(), "svg");
        let elements: Vec<roxmltree::Node> = document.descendants().collect();
        let texts: Vec<&str> = elements
            .iter()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        for label in [
            "Throughput",
            "p99 latency",
            "concurrent clients (log scale)",
            Panel::Throughput.y_description(),
            Panel::P99.y_description(),
        ] {
            assert!(texts.contains(&label), "{label:?} missing from {texts:?}");
        }
        for target in &sweep.targets {
            let colour = svg_colour(*target);
            let lines = elements
                .iter()
                .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(&colour))
                .count();
            // One series per panel, and the sample in the legend.
            assert_eq!(lines, 3, "{}", target.name());
            let dots = elements
                .iter()
                .filter(|n| n.has_tag_name("circle") && n.attribute("fill") == Some(&colour))
                .count();
            // One per client count in each panel (but for direct's p99 at 128 clients, where
            // it committed nothing), and the legend's.
            let missing = usize::from(*target == Target::Direct);
            assert_eq!(dots, 2 * CLIENTS.len() - missing + 1, "{}", target.name());
            let legend = texts.iter().filter(|t| **t == target.name()).count();
            assert_eq!(legend, 1, "{}", target.name());
        }
    }

    #[test]
    fn a_point_with_nothing_committed_has_no_p99_on_the_log_axis() {
        let sweep = synthetic_sweep();
        let throughput = Panel::Throughput.points(&sweep, Target::Direct);
        let p99 = Panel::P99.points(&sweep, Target::Direct);
        assert_eq!(throughput.len(), CLIENTS.len());
        assert_eq!(throughput.last(), Some(&(128.0, 0.0)));
        assert_eq!(p99.len(), CLIENTS.len() - 1);
        assert!(p99.iter().all(|(_, value)| *value > 0.0));
    }

    #[test]
    fn log_ticks_are_one_two_five_times_powers_of_ten() {
        assert_eq!(
            one_two_five(&(3.0..120.0)),
            vec![5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(one_two_five(&(0.15..0.3)), vec![0.2]);
    }
}
