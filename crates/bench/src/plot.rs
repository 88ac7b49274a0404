//! `--plot FILE.png`: latency CDFs of every row (log-scale latency) beside
//! a bar chart of their throughput. Text is drawn with DejaVu Sans compiled
//! into the binary, so plots need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::output::{Row, human_us};
use crate::{BenchError, Result};

/// Width of the PNG in pixels.
pub const WIDTH: u32 = 1400;
/// Height of the PNG in pixels.
pub const HEIGHT: u32 = 600;

/// Most points drawn per CDF; more add nothing visible.
const CDF_POINTS: usize = 400;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // DejaVu Sans is a valid TrueType font; a failure would only
        // leave the plot without text, which the checks below reveal.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws `rows` into `path` as a PNG.
pub fn draw(path: &Path, rows: &[Row]) -> Result<()> {
    register_font();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(WIDTH * 55 / 100);
        let labels = labels(rows);
        draw_cdfs(&left, rows, &labels).map_err(plot_error)?;
        draw_throughput(&right, rows, &labels).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    write_png(path, &pixels).map_err(|source| BenchError::Png {
        path: path.to_path_buf(),
        source,
    })
}

fn plot_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// One label per row: bench, connections, and the target when several
/// targets were measured.
fn labels(rows: &[Row]) -> Vec<String> {
    let several_targets = rows.iter().any(|r| r.target != rows[0].target);
    rows.iter()
        .map(|r| {
            let mut l = format!("{} ×{}", r.bench, r.connections);
            if several_targets {
                l = format!("{} {l}", r.target);
            }
            l
        })
        .collect()
}

/// (latency µs, fraction of calls at or below it), at most `CDF_POINTS`.
fn cdf_points(sorted: &[u32]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let step = n.div_ceil(CDF_POINTS).max(1);
    // Rising from 0 at the fastest call, so even one sample draws a line.
    let start = sorted.first().map(|&v| (f64::from(v.max(1)), 0.0));
    let mut points: Vec<(f64, f64)> = start
        .into_iter()
        .chain(
            (step - 1..n)
                .step_by(step)
                .map(|i| (f64::from(sorted[i].max(1)), (i + 1) as f64 / n as f64)),
        )
        .collect();
    let ends_below_one = points.last().is_some_and(|&(_, f)| f < 1.0);
    if let (Some(&last), true) = (sorted.last(), ends_below_one) {
        points.push((f64::from(last.max(1)), 1.0));
    }
    points
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_cdfs(
    area: &Area<'_>,
    rows: &[Row],
    labels: &[String],
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>> {
    let measured = || rows.iter().filter(|r| !r.latencies_us.is_empty());
    let lo = measured()
        .filter_map(|r| r.latencies_us.first())
        .min()
        .copied()
        .unwrap_or(1);
    let hi = measured()
        .filter_map(|r| r.latencies_us.last())
        .max()
        .copied()
        .unwrap_or(10);
    let (lo, hi) = (f64::from(lo.max(1)) * 0.8, f64::from(hi.max(lo + 1)) * 1.25);
    let mut chart = ChartBuilder::on(area)
        .caption("Latency CDF", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (log scale)")
        .x_labels(8)
        .y_desc("fraction of calls at or below")
        .x_label_formatter(&|v| human_us(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    for (i, (row, label)) in rows.iter().zip(labels).enumerate() {
        if row.latencies_us.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                cdf_points(&row.latencies_us),
                color.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn draw_throughput(
    area: &Area<'_>,
    rows: &[Row],
    labels: &[String],
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>> {
    let max = rows.iter().map(|r| r.req_per_sec).fold(1.0, f64::max);
    let n = rows.len().max(1);
    // The first row on top: segment n-1 is drawn highest.
    let slot = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max * 1.2, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("requests per second")
        .x_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(slot(*i)).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let color = Palette99::pick(i).to_rgba();
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(slot(i))),
                (r.req_per_sec, SegmentValue::Exact(slot(i) + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        Text::new(
            format!(" {:.0}/s", r.req_per_sec),
            (r.req_per_sec, SegmentValue::CenterOf(slot(i))),
            ("sans-serif", 14).into_font(),
        )
    }))?;
    Ok(())
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<(), png::EncodingError> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_is_capped_monotonic_and_ends_at_one() {
        let v: Vec<u32> = (1..=10_000).collect();
        let pts = cdf_points(&v);
        assert!(pts.len() <= CDF_POINTS + 2, "{}", pts.len());
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(pts.first(), Some(&(1.0, 0.0)));
        assert_eq!(pts.last(), Some(&(10_000.0, 1.0)));
        assert_eq!(
            cdf_points(&[5, 9]),
            vec![(5.0, 0.0), (5.0, 0.5), (9.0, 1.0)]
        );
        assert_eq!(cdf_points(&[7]), vec![(7.0, 0.0), (7.0, 1.0)]);
        assert!(cdf_points(&[]).is_empty());
    }
}
