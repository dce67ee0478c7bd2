//! `mqtt-bench chart RESULTS OUT.svg`: every target of `cargo xtask bench`
//! in one picture, drawn with plotters (SVG only, no font stack).
//!
//! Each row is a ratio where more is better: ours over the tool users would
//! pick instead, or the budget over what we used (time, memory). The bar is
//! what this run measured, the black tick the target; a bar reaching its
//! tick is a target met.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde_json::Value;

/// One bar of the chart.
#[derive(Debug, PartialEq)]
struct Row {
    label: String,
    ratio: f64,
    target: f64,
}

/// Reads `results.json` (an array of the objects `cargo xtask bench`
/// collects) and writes the chart to `out`.
pub(crate) fn chart(results: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let results: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", results.display()))?;
    let rows = rows(&results)?;
    draw(&rows, out).with_context(|| format!("drawing {}", out.display()))
}

/// The rows, in the order of the issue's targets.
fn rows(results: &[Value]) -> anyhow::Result<Vec<Row>> {
    let find = |what: &str, key: Option<(&str, u64)>| {
        results
            .iter()
            .find(|v| v["what"] == what && key.is_none_or(|(k, n)| v[k].as_u64() == Some(n)))
            .with_context(|| format!("no \"{what}\" result"))
    };
    let num = |v: &Value, field: &str| {
        v[field]
            .as_f64()
            .with_context(|| format!("no number \"{field}\" in {v}"))
    };
    let row = |label: &str, ratio: f64, target: f64| Row {
        label: label.to_owned(),
        ratio,
        target,
    };
    let p256 = find("identities_p256", None)?;
    let rsa = find("identities_rsa2048", None)?;
    let fleet = find("fleet", None)?;
    let qos0 = find("throughput", Some(("qos", 0)))?;
    let qos1 = find("throughput", Some(("qos", 1)))?;
    let connects = find("connects", None)?;
    let idle = find("idle", None)?;
    let ingest = find("ingest", None)?;
    let mut rows = vec![
        row(
            "P-256 identities, ours synced / Python",
            num(p256, "ratio_vs_python")?,
            5.0,
        ),
        row(
            "P-256 identities, neither synced / Python",
            num(p256, "ratio_vs_python_unflushed")?,
            5.0,
        ),
        row(
            "P-256 identities / openssl CLI",
            num(p256, "ratio_vs_openssl")?,
            200.0,
        ),
        row(
            "RSA-2048 identities / Python",
            num(rsa, "ratio_vs_python")?,
            1.2,
        ),
        row(
            "10,000-device fleet: 10 s / ours",
            10.0 / num(fleet, "seconds")?,
            1.0,
        ),
        row(
            "fleet peak memory: 200 MB / ours",
            200.0 / num(fleet, "peak_rss_mb")?,
            1.0,
        ),
        row(
            "QoS 0 msg/s / mosquitto_pub → sub",
            num(qos0, "ratio")?,
            1.0,
        ),
        row(
            "QoS 1 msg/s / mosquitto_pub → sub",
            num(qos1, "ratio")?,
            1.0,
        ),
        row(
            "mTLS connects/s / Python ssl",
            num(connects, "ratio_vs_python")?,
            1.2,
        ),
        row(
            "idle connection: 30 KB / ours",
            30.0 / num(idle, "kb_per_connection")?,
            1.0,
        ),
        row(
            "ingest stored/s / mosquitto_sub",
            num(ingest, "ratio")?,
            0.9,
        ),
    ];
    // One command on a large CA against an empty one (target: within 2×,
    // under 50 MB).
    if let Some(store) = results.iter().find(|v| v["what"] == "store") {
        for op in store["ops"].as_array().into_iter().flatten() {
            let name = op["op"].as_str().unwrap_or_default();
            rows.push(row(
                &format!("`{name}`, large CA: 2× empty CA's time / ours"),
                2.0 / num(op, "ratio")?,
                1.0,
            ));
        }
        let peak = store["ops"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|op| op["full_peak_rss_mb"].as_f64())
            .fold(0.0, f64::max);
        rows.push(row("large CA, one command: 50 MB / ours", 50.0 / peak, 1.0));
    }
    // Enrollment and renewal over MQTT, 1,000 devices at once (targets:
    // enrolled and connected in 8 s, renewed in 10 s, nothing lost).
    if let Some(l) = results.iter().find(|v| v["what"] == "lifecycle") {
        rows.push(row(
            "1,000 enroll + connect: 8 s / ours",
            8.0 / num(l, "enroll_and_connect_seconds")?,
            1.0,
        ));
        let lost = num(l, "lost")?;
        rows.push(row(
            "1,000 renew while publishing: 10 s / ours (0 if any lost)",
            if lost > 0.0 {
                0.0
            } else {
                10.0 / num(l, "renew_seconds")?
            },
            1.0,
        ));
    }
    if let Some(bad) = rows
        .iter()
        .find(|r| !(r.ratio.is_finite() && r.ratio > 0.0))
    {
        bail!("{}: {} is not a positive ratio", bad.label, bad.ratio);
    }
    Ok(rows)
}

fn draw(rows: &[Row], out: &Path) -> anyhow::Result<()> {
    const FLOOR: f64 = 0.1;
    let height = 70 + 36 * rows.len() as u32;
    let root = SVGBackend::new(out, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows
        .iter()
        .map(|r| r.ratio.max(r.target))
        .fold(10.0, f64::max)
        * 30.0; // room for the text right of the largest bar or tick
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "cargo xtask bench: ratio measured (bar) and target (tick), more is better",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(290)
        .build_cartesian_2d((FLOOR..top).log_scale(), 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len() * 2 + 1)
        .y_label_formatter(&|y| {
            // Labels sit at the middle of each row's band.
            let i = (n - y - 0.5).round();
            if (y - (n - i - 0.5)).abs() < 1e-6 && i >= 0.0 && (i as usize) < rows.len() {
                rows[i as usize].label.clone()
            } else {
                String::new()
            }
        })
        .x_desc("ratio (log scale)")
        .x_label_formatter(&|x| format!("{x}×"))
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        // Row 0 at the top.
        let y = n - i as f64 - 1.0;
        let met = row.ratio >= row.target;
        let colour = if met {
            RGBColor(46, 139, 87)
        } else {
            RGBColor(205, 92, 92)
        };
        chart.draw_series([Rectangle::new(
            [(FLOOR, y + 0.2), (row.ratio.max(FLOOR), y + 0.8)],
            colour.filled(),
        )])?;
        chart.draw_series([PathElement::new(
            [(row.target, y + 0.08), (row.target, y + 0.92)],
            BLACK.stroke_width(3),
        )])?;
        chart.draw_series([Text::new(
            format!(
                "{:.2}× (target {}×){}",
                row.ratio,
                row.target,
                if met { "" } else { " missed" }
            ),
            (row.ratio.max(row.target) * 1.15, y + 0.62),
            ("sans-serif", 13),
        )])?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Value> {
        serde_json::from_str(
            r#"[
            {"what":"identities_p256","ratio_vs_python":6.0,"ratio_vs_python_unflushed":7.0,"ratio_vs_openssl":300.0},
            {"what":"identities_rsa2048","ratio_vs_python":1.4},
            {"what":"fleet","seconds":5.0,"peak_rss_mb":20.0},
            {"what":"ingest","ratio":0.95},
            {"what":"throughput","qos":0,"ratio":1.1},
            {"what":"throughput","qos":1,"ratio":1.3},
            {"what":"connects","ratio_vs_python":1.25},
            {"what":"idle","kb_per_connection":60.0}
        ]"#,
        )
        .unwrap()
    }

    #[test]
    fn rows_follow_the_results() {
        let rows = rows(&sample()).unwrap();
        assert_eq!(rows.len(), 11);
        assert_eq!(rows[1].ratio, 7.0);
        assert_eq!(rows[4].ratio, 2.0); // 10 s budget over 5 s
        assert_eq!(rows[6].ratio, 1.1); // QoS 0, not QoS 1
        assert_eq!(rows[7].ratio, 1.3);
        assert_eq!(rows[9].ratio, 0.5); // 30 KB budget over 60 KB
    }

    #[test]
    fn a_missing_result_is_named() {
        let mut results = sample();
        results.retain(|v| v["what"] != "connects");
        let err = rows(&results).unwrap_err().to_string();
        assert!(err.contains("\"connects\""), "{err}");
    }

    #[test]
    fn draws_an_svg_with_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results.json");
        std::fs::write(&results, serde_json::to_string(&sample()).unwrap()).unwrap();
        let out = dir.path().join("chart.svg");
        chart(&results, &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for row in rows(&sample()).unwrap() {
            assert!(svg.contains(&row.label), "no {} in the chart", row.label);
        }
        assert!(svg.contains("0.50× (target 1×) missed"), "{svg}");
    }
}
