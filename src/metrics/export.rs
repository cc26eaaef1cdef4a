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

/// The rows of a percentile distribution, `(value, percentile level in
/// percent, count up to it)`, computed as Java's `PercentileIterator` does,
/// in its arithmetic: levels in percent, a bucket reached when
/// `100 * count / total >= level`. The `hdrhistogram` crate's quantile
/// iterator works in fractions, and where a count lands exactly on a level
/// its rounding differs (2 rows of 74 in one report went to the next
/// bucket), so a `.hgrm` would not match what HdrHistogram writes.
pub fn percentile_rows(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<(u64, f64, u64)> {
    let total = h.len();
    let mut rows = Vec::new();
    if total == 0 {
        return rows;
    }
    let next_level = |level: f64| {
        let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64 + 1;
        let ticks =
            u64::from(ticks_per_half_distance).saturating_mul(1u64 << halvings.clamp(0, 62));
        level + 100.0 / ticks as f64
    };
    let (mut level, mut count) = (0.0f64, 0u64);
    for v in h.iter_recorded() {
        count += v.count_at_value();
        let value = v.value_iterated_to();
        while 100.0 * count as f64 / total as f64 >= level {
            rows.push((value, level, count));
            level = next_level(level);
            if count >= total {
                // One last row at 100 %, as Java's iterator adds.
                rows.push((value, 100.0, count));
                return rows;
            }
        }
    }
    rows
}

/// Writes `h` (microseconds) as a percentile distribution in milliseconds,
/// in HdrHistogram's `.hgrm` text format.
pub fn write_hgrm<W: Write>(h: &Histogram<u64>, mut w: W) -> io::Result<()> {
    let digits = h.sigfig() as usize;
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for (value, percent, total) in percentile_rows(h, TICKS_PER_HALF_DISTANCE) {
        let value = value as f64 / US_PER_MS;
        let q = percent / 100.0;
        if percent != 100.0 {
            writeln!(
                w,
                "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(w, "{value:>12.digits$} {q:>2.12} {total:>10}")?;
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

    /// Where a bucket's count lands exactly on a level (19,625 of 20,000 is
    /// 98.125 %), Java's iterator reports that level at that bucket.
    #[test]
    fn a_count_exactly_on_a_percentile_level_is_reported_at_its_bucket_as_java_does() {
        let mut h = super::super::histogram();
        h.record_n(100, 19_625).unwrap();
        h.record_n(200, 375).unwrap();
        let rows = percentile_rows(&h, 5);
        let at = |level: f64| rows.iter().find(|r| r.1 == level).map(|r| (r.0, r.2));
        assert_eq!(at(98.125), Some((100, 19_625)));
        assert_eq!(at(98.4375), Some((200, 20_000)));
        let levels: Vec<f64> = rows.iter().map(|r| r.1).take(8).collect();
        assert_eq!(levels, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 55.0, 60.0]);
        assert_eq!(rows.last(), Some(&(200, 100.0, 20_000)));
    }

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
