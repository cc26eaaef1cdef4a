//! Latency reports in the formats HdrHistogram's own tools read:
//! percentile-distribution text (`.hgrm`, as Java's
//! `outputPercentileDistribution` writes it), interval logs (`.hlog`, V2
//! compressed base64, via the `hdrhistogram` crate's writer), and an SVG plot
//! of the percentile curves (plotters).

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

/// Values are recorded in microseconds and reported in milliseconds, as
/// HdrHistogram's plotter and wrk2 show them.
pub const US_PER_MS: f64 = 1000.0;

/// Percentile ticks per half distance, as HdrHistogram's tools default to.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes `h` (microseconds) as a percentile distribution in milliseconds,
/// in HdrHistogram's `.hgrm` text format.
pub fn write_hgrm<W: Write>(h: &Histogram<u64>, mut w: W) -> io::Result<()> {
    let digits = h.sigfig() as usize;
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / US_PER_MS;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                writeln!(
                    w,
                    "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(w, "{value:>12.digits$} {q:>2.12} {total:>10}")?;
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / US_PER_MS,
            h.stdev() / US_PER_MS,
            h.max() as f64 / US_PER_MS,
        )
    };
    // HdrHistogram's sub-bucket count: the power of two covering 2 * 10^digits.
    let sub_buckets = (2 * 10u64.pow(digits as u32)).next_power_of_two();
    writeln!(
        w,
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stdev:>12.digits$}]"
    )?;
    writeln!(
        w,
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]",
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    )?;
    Ok(())
}

/// One interval of an interval log: its start (from the log's base time), its
/// length, and what was recorded in it.
pub struct Interval<'a> {
    /// Start, relative to the base time.
    pub start: Duration,
    /// Length.
    pub length: Duration,
    /// Samples of the interval (microseconds).
    pub histogram: &'a Histogram<u64>,
}

/// Writes an HdrHistogram interval log (V2 compressed histograms, base64),
/// values in microseconds with a max-value divisor of 1000 so that the log's
/// max column reads in milliseconds; `tag` names the series.
pub fn write_hlog<W: Write>(
    mut w: W,
    base: SystemTime,
    tag: &str,
    intervals: &[Interval<'_>],
) -> io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut buf = Vec::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("[Histogram log format version 1.3]")
            .add_comment("runner loadgen: latency in microseconds")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(US_PER_MS)
            .begin_log_with(&mut buf, &mut serializer)?;
        let tag = Tag::new(tag);
        for i in intervals {
            log.write_histogram(i.histogram, i.start, i.length, tag)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
    // The column legend HdrHistogram's own writer puts after the header
    // comments (readers skip it); the crate's writer has none.
    let header_end = buf
        .split_inclusive(|b| *b == b'\n')
        .take_while(|l| l.starts_with(b"#"))
        .map(<[u8]>::len)
        .sum::<usize>();
    w.write_all(&buf[..header_end])?;
    w.write_all(HLOG_LEGEND.as_bytes())?;
    w.write_all(&buf[header_end..])?;
    w.flush()
}

/// The interval log's column legend, as HdrHistogram writes it.
const HLOG_LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// Plots the percentile curves of `series` (name, histogram in
/// microseconds): latency in milliseconds against the percentile on
/// HdrHistogram's log scale (x = 1/(1 - percentile)), as an SVG file.
pub fn plot_percentiles(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), String> {
    use plotters::prelude::*;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let points = h
                .iter_quantiles(TICKS_PER_HALF_DISTANCE)
                .map(|v| v.quantile_iterated_to())
                .filter(|q| *q < 1.0)
                .map(|q| {
                    (
                        (1.0 / (1.0 - q)).log10(),
                        h.value_at_quantile(q) as f64 / US_PER_MS,
                    )
                })
                .collect();
            (*name, points)
        })
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(2.0f64, f64::max)
        .ceil();
    let y_max = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.001f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            // 10^x = 1/(1-q): 0 -> 0%, 1 -> 90%, 2 -> 99%, 3 -> 99.9%, ...
            let q = 1.0 - 10f64.powf(-x);
            format!("{:.*}%", (x.round() as usize).saturating_sub(2), q * 100.0)
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    for (i, (name, points)) in curves.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_header_rows_and_footer_hdrhistogram_tools_parse() {
        let mut h = super::super::histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first, ["0.001", "0.000000000000", "1", "1.00"]);
        assert!(
            text.contains("#[Max     =        1.000, Total count    =         1000]"),
            "{text}"
        );
        assert!(text.contains("SubBuckets     =         2048]"));
        let last_row = text.lines().rev().find(|l| !l.starts_with('#')).unwrap();
        assert_eq!(
            last_row.split_whitespace().collect::<Vec<_>>(),
            ["1.000", "1.000000000000", "1000"]
        );
    }

    #[test]
    fn hlog_round_trips_through_the_crates_reader() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let mut h = super::super::histogram();
        h.record(250).unwrap();
        let mut out = Vec::new();
        let iv = [Interval {
            start: Duration::from_secs(1),
            length: Duration::from_secs(1),
            histogram: &h,
        }];
        write_hlog(
            &mut out,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            "e2e",
            &iv,
        )
        .unwrap();
        let entries: Vec<_> = IntervalLogIterator::new(&out)
            .collect::<Result<_, _>>()
            .unwrap();
        let hist = entries
            .iter()
            .find_map(|e| match e {
                LogEntry::Interval(i) => Some(i),
                _ => None,
            })
            .expect("one interval histogram");
        assert_eq!(hist.tag().map(|t| t.as_str()), Some("e2e"));
        assert!(
            (hist.max() - 0.25).abs() < 0.01,
            "max in ms: {}",
            hist.max()
        );
    }
}
