//! `cargo xtask bench agent`: aggregating the guest's `KLIVE-BENCH <metric> <value> <unit>`
//! lines into a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write;

use klive_format::stats::nearest_rank;

use super::qemu::Accel;

/// Every value measured for each metric, in the order the guest printed the metrics.
#[derive(Debug, Default)]
pub struct Samples {
    order: Vec<String>,
    values: BTreeMap<String, (String, Vec<f64>)>,
}

impl Samples {
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

pub fn parse(lines: &[String]) -> Samples {
    let mut samples = Samples::default();
    for line in lines {
        let Some(at) = line.find("KLIVE-BENCH ") else {
            continue;
        };
        let fields: Vec<&str> = line[at..].split_whitespace().collect();
        let [_, metric, value, unit] = fields[..] else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let entry = samples
            .values
            .entry(metric.to_string())
            .or_insert_with(|| (unit.to_string(), Vec::new()));
        if entry.1.is_empty() {
            samples.order.push(metric.to_string());
        }
        entry.1.push(value);
    }
    samples
}

/// Where the numbers come from.
#[derive(Debug)]
pub struct Setup<'a> {
    pub release: &'a str,
    pub accel: Accel,
    pub cpus: usize,
    pub agent_size: Option<u64>,
    pub samples: &'a Samples,
}

pub fn report(setup: &Setup<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## klive agent in a QEMU guest ({}, {} guest, 1 vCPU, {}-core host)\n",
        setup.release, setup.accel, setup.cpus
    );
    if setup.accel == Accel::Tcg {
        let _ = writeln!(
            out,
            "TCG emulates the CPU in software: absolute times are several times those of real \
             hardware; compare runs with each other.\n"
        );
    }
    if let Some(size) = setup.agent_size {
        let _ = writeln!(
            out,
            "Static agent binary (musl, release): {:.0} KiB.\n",
            size as f64 / 1024.0
        );
    }
    let _ = writeln!(out, "| metric | n | median | min | max |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for metric in &setup.samples.order {
        let Some((unit, values)) = setup.samples.values.get(metric) else {
            continue;
        };
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let Some(median) = nearest_rank(&sorted, 50) else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {metric} | {} | {median} {unit} | {} {unit} | {} {unit} |",
            sorted.len(),
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    for (suffix, what) in [
        ("", "as deployed"),
        (
            "-noaslr",
            "address-space randomisation off, so TCG reuses its translations of the PIE agent as it does for busybox",
        ),
    ] {
        if let (Some(agent), Some(raw)) = (
            median(setup.samples, &format!("apply-level1{suffix}")),
            median(setup.samples, &format!("raw-insmod-apply-level1{suffix}")),
        ) && raw > 0.0
        {
            let _ = writeln!(
                out,
                "\n`klive apply` / raw `insmod` + sysfs polling of the same module, same boot \
                 ({what}; medians): {agent} ms / {raw} ms = **{:.2}**",
                agent / raw
            );
        }
    }
    out
}

fn median(samples: &Samples, metric: &str) -> Option<f64> {
    let (_, values) = samples.values.get(metric)?;
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    nearest_rank(&sorted, 50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_grouped_by_metric_in_first_seen_order() {
        let lines: Vec<String> = [
            "[ 1.0] KLIVE-BENCH apply 120 ms",
            "KLIVE-BENCH revert 80 ms",
            "KLIVE-BENCH apply 100 ms",
            "KLIVE-BENCH apply 110 ms",
            "KLIVE-BENCH broken",
            "KLIVE-BENCH bad x ms",
        ]
        .map(String::from)
        .to_vec();
        let samples = parse(&lines);
        assert_eq!(samples.order, ["apply", "revert"]);
        let text = report(&Setup {
            release: "6.1.0-56-amd64",
            accel: Accel::Tcg,
            cpus: 2,
            agent_size: Some(2048),
            samples: &samples,
        });
        assert!(
            text.contains("| apply | 3 | 110 ms | 100 ms | 120 ms |"),
            "{text}"
        );
        assert!(
            text.contains("| revert | 1 | 80 ms | 80 ms | 80 ms |"),
            "{text}"
        );
        assert!(text.contains("2 KiB"), "{text}");
    }
}
