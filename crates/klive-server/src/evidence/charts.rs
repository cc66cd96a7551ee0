//! Charts as inline SVG, rendered on the server (no script, no external asset): the
//! time-to-patch distribution per severity with its SLA line, and open findings over time.

use std::fmt::Write;

use klive_format::evidence::Rating;

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;
/// The plot area inside the margins.
const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;

pub fn color(r: Rating) -> &'static str {
    match r {
        Rating::Critical => "#b3261e",
        Rating::High => "#e8710a",
        Rating::Medium => "#c9a400",
        Rating::Low => "#1a73e8",
        Rating::Unrated => "#777777",
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn frame(title: &str, body: &str) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{t}" class="chart"><title>{t}</title><rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>{body}</svg>"##,
        t = escape(title)
    )
}

fn no_data(title: &str) -> String {
    frame(
        title,
        &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#555">no data for this period</text>"##,
            W / 2.0,
            H / 2.0
        ),
    )
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * mag >= v {
            return step * mag;
        }
    }
    10.0 * mag
}

/// A chart body holding the axes, ticks and labels, for the marks to be appended to.
fn axes(x_max: f64, y_max: f64, x_label: &str, y_label: &str, y_percent: bool) -> String {
    let mut out = String::new();
    for i in 0..=4 {
        let y = TOP + PH - PH * f64::from(i) / 4.0;
        let v = y_max * f64::from(i) / 4.0;
        let label = if y_percent {
            format!("{:.0}%", v * 100.0)
        } else {
            format!("{v:.0}")
        };
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#444">{label}</text>"##,
            LEFT + PW,
            LEFT - 4.0,
            y + 3.0
        );
    }
    for i in 0..=5 {
        let x = LEFT + PW * f64::from(i) / 5.0;
        let v = x_max * f64::from(i) / 5.0;
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#444">{v:.0}</text>"##,
            TOP + PH + 14.0
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#222">{}</text><text x="12" y="{:.1}" font-size="11" text-anchor="middle" fill="#222" transform="rotate(-90 12 {:.1})">{}</text>"##,
        TOP + PH,
        LEFT + PW,
        TOP + PH,
        TOP + PH,
        LEFT + PW / 2.0,
        H - 4.0,
        escape(x_label),
        TOP + PH / 2.0,
        TOP + PH / 2.0,
        escape(y_label)
    );
    out
}

/// One severity's time-to-patch values (seconds, any order) and its SLA in days.
#[derive(Debug, Clone)]
pub struct TtpSeries {
    pub rating: Rating,
    pub ttp_secs: Vec<i64>,
    pub sla_days: u32,
}

/// Cumulative share of findings fixed within N days, per severity, with each severity's SLA
/// as a dashed vertical line.
pub fn time_to_patch(series: &[TtpSeries]) -> String {
    let title = "time to patch: share of findings fixed within N days, per severity (dashed: SLA)";
    let series: Vec<&TtpSeries> = series.iter().filter(|s| !s.ttp_secs.is_empty()).collect();
    if series.is_empty() {
        return no_data(title);
    }
    let max_days = series
        .iter()
        .flat_map(|s| {
            s.ttp_secs
                .iter()
                .map(|t| *t as f64 / 86400.0)
                .chain([f64::from(s.sla_days)])
        })
        .fold(1.0, f64::max);
    let x_max = nice_max(max_days * 1.05);
    let mut out = axes(x_max, 1.0, "days from clock start to fix", "fixed", true);
    for (n, s) in series.iter().enumerate() {
        let mut values: Vec<f64> = s.ttp_secs.iter().map(|t| *t as f64 / 86400.0).collect();
        values.sort_by(f64::total_cmp);
        let total = values.len() as f64;
        let mut points = format!("{LEFT:.1},{:.1}", TOP + PH);
        for (i, v) in values.iter().enumerate() {
            let x = LEFT + PW * v / x_max;
            let y_before = TOP + PH - PH * (i as f64) / total;
            let y_after = TOP + PH - PH * ((i + 1) as f64) / total;
            let _ = write!(points, " {x:.1},{y_before:.1} {x:.1},{y_after:.1}");
        }
        let _ = write!(points, " {:.1},{:.1}", LEFT + PW, TOP);
        let c = color(s.rating);
        let sla_x = LEFT + PW * f64::from(s.sla_days) / x_max;
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{points}"/><line x1="{sla_x:.1}" y1="{TOP}" x2="{sla_x:.1}" y2="{:.1}" stroke="{c}" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{c}">{} (n={}, SLA {} d)</text>"##,
            TOP + PH,
            LEFT + 10.0,
            TOP + 14.0 + 14.0 * n as f64,
            s.rating.as_str(),
            values.len(),
            s.sla_days
        );
    }
    frame(title, &out)
}

/// Open findings per day and severity: `days` are day starts (ms), `counts[severity][day]`.
pub fn open_over_time(days: &[i64], counts: &[(Rating, Vec<u64>)]) -> String {
    let title = "open findings over time, per severity";
    let max = counts
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0);
    if days.is_empty() || counts.is_empty() {
        return no_data(title);
    }
    let y_max = nice_max(max as f64);
    let x_max = days.len().saturating_sub(1).max(1) as f64;
    let mut out = axes(
        x_max,
        y_max,
        "days since period start",
        "open findings",
        false,
    );
    for (n, (rating, values)) in counts.iter().enumerate() {
        let c = color(*rating);
        let mut points = String::new();
        for (i, v) in values.iter().enumerate() {
            let x = LEFT + PW * i as f64 / x_max;
            let y = TOP + PH - PH * (*v as f64) / y_max;
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{c}" text-anchor="end">{}</text>"##,
            points.trim_end(),
            LEFT + PW - 4.0,
            TOP + 14.0 + 14.0 * n as f64,
            rating.as_str()
        );
    }
    frame(title, &out)
}

/// Bars of hosts that checked in per day (monitoring coverage).
pub fn coverage(days: &[(i64, i64)], expected: u64) -> String {
    let title = "hosts that checked in, per day";
    if days.is_empty() {
        return no_data(title);
    }
    let max = days
        .iter()
        .map(|d| d.1)
        .max()
        .unwrap_or(0)
        .max(expected as i64);
    let y_max = nice_max(max as f64);
    let mut out = axes(
        days.len() as f64,
        y_max,
        "days since period start",
        "hosts",
        false,
    );
    let bw = PW / days.len() as f64;
    for (i, (_, n)) in days.iter().enumerate() {
        let h = PH * (*n as f64) / y_max;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#5b8def"/>"##,
            LEFT + bw * i as f64,
            TOP + PH - h,
            (bw - 0.5).max(0.5)
        );
    }
    frame(title, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_say_no_data_when_empty() {
        let svg = time_to_patch(&[TtpSeries {
            rating: Rating::High,
            ttp_secs: vec![86400, 2 * 86400],
            sla_days: 30,
        }]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("SLA 30 d") && svg.contains("stroke-dasharray"));
        assert!(time_to_patch(&[]).contains("no data"));
        assert!(open_over_time(&[], &[]).contains("no data"));
        assert!(escape("<a&\"'>") == "&lt;a&amp;&quot;&#39;&gt;");
    }
}
