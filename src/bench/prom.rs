//! Reading an engine's Prometheus text (`/metrics`) for `confer bench`: counters, gauges
//! and histograms, differences between two scrapes, and quantiles from buckets.
//!
//! The bench measures a running engine from outside (in-process or `--target URL`), so it
//! reads what any monitoring system would read; quantiles therefore have the resolution of
//! the engine's buckets (linear inside a bucket, as Prometheus's `histogram_quantile`).

use std::collections::HashMap;

/// One scrape: every sample by its full series name (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: HashMap<String, f64>,
}

/// A histogram's cumulative buckets (`le` in seconds, count), its sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// (upper bound, cumulative count), ascending; the last is +Inf.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of observations.
    pub sum: f64,
    /// Observations.
    pub count: f64,
}

impl Scrape {
    /// Parses the text format; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let v = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            samples.insert(series.trim().to_owned(), v);
        }
        Scrape { samples }
    }

    /// A sample by its full series name, e.g. `confer_tick_overruns_total`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The values of `label` among the series of `series` (e.g. the `stage`s of
    /// `confer_stage_duration_seconds_count`), sorted.
    pub fn label_values(&self, series: &str, label: &str) -> Vec<String> {
        let prefix = format!("{series}{{{label}=\"");
        let mut v: Vec<String> = self
            .samples
            .keys()
            .filter_map(|k| Some(k.strip_prefix(&prefix)?.split('"').next()?.to_owned()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The histogram `name` whose other labels are exactly `labels` (e.g. `stage="tick"`,
    /// or empty).
    pub fn hist(&self, name: &str, labels: &str) -> Option<Hist> {
        let prefix = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(k, &v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let series = |suffix: &str| {
            if labels.is_empty() {
                format!("{name}_{suffix}")
            } else {
                format!("{name}_{suffix}{{{labels}}}")
            }
        };
        Some(Hist {
            buckets,
            sum: self.get(&series("sum")).unwrap_or(0.0),
            count: self.get(&series("count")).unwrap_or(0.0),
        })
    }
}

impl Hist {
    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|b| b.0 == le)
                        .map_or(0.0, |b| b.1);
                    (le, (c - before).max(0.0))
                })
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
            count: (self.count - earlier.count).max(0.0),
        }
    }

    /// The `q` quantile (0..=1) in the histogram's unit, interpolated linearly inside its
    /// bucket; `None` without observations. In the +Inf bucket it is the highest finite
    /// bound (a lower bound of the truth).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, c) in &self.buckets {
            if c >= rank && c > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (c - below));
            }
            if le.is_finite() {
                lower = le;
            }
            below = c;
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP confer_stage_seconds x
# TYPE confer_stage_seconds histogram
confer_stage_seconds_bucket{stage="tick",le="0.001"} 50
confer_stage_seconds_bucket{stage="tick",le="0.002"} 90
confer_stage_seconds_bucket{stage="tick",le="0.005"} 100
confer_stage_seconds_bucket{stage="tick",le="+Inf"} 100
confer_stage_seconds_sum{stage="tick"} 0.12
confer_stage_seconds_count{stage="tick"} 100
confer_tick_overruns_total 3
"#;

    #[test]
    fn histograms_give_interpolated_quantiles_and_differences() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.get("confer_tick_overruns_total"), Some(3.0));
        let h = s.hist("confer_stage_seconds", "stage=\"tick\"").unwrap();
        assert_eq!(h.count, 100.0);
        // Median: half of the first bucket's 50 -> the bucket's top.
        assert!((h.quantile(0.5).unwrap() - 0.001).abs() < 1e-12);
        // p70: 20 of the 40 in (1, 2] ms.
        assert!((h.quantile(0.7).unwrap() - 0.0015).abs() < 1e-12);
        let zero = h.since(&h);
        assert_eq!(zero.quantile(0.5), None);
        assert!(s.hist("confer_stage_seconds", "stage=\"mix\"").is_none());
        assert_eq!(
            s.label_values("confer_stage_seconds_count", "stage"),
            vec!["tick".to_owned()]
        );
    }
}
