//! The chart `mqtt-bench report` draws: every target of `cargo xtask bench`
//! in one picture, drawn with plotters (SVG only, no font stack).
//!
//! Each row is a ratio where more is better: ours over the tool users would
//! pick instead, or the budget over what we used (time, memory). The bar is
//! what this run measured, the black tick the target; a bar reaching its
//! tick is a target met.

use std::path::Path;

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::results::Results;

/// One target: a bar of the chart and a row of the report's table.
#[derive(Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) label: String,
    /// What this run measured, as a ratio where more is better.
    pub(crate) ratio: f64,
    pub(crate) target: f64,
}

impl Row {
    pub(crate) fn met(&self) -> bool {
        self.ratio >= self.target
    }
}

/// Writes the chart of `results` to `out`.
pub(crate) fn chart(results: &Results, out: &Path) -> anyhow::Result<()> {
    let rows = rows(results)?;
    draw(&rows, out).with_context(|| format!("drawing {}", out.display()))
}

/// The targets, checked for the chart: at least one, every ratio positive
/// and finite.
fn rows(results: &Results) -> anyhow::Result<Vec<Row>> {
    let rows = targets(results);
    if rows.is_empty() {
        bail!("no step in the results: nothing to chart");
    }
    if let Some(bad) = rows
        .iter()
        .find(|r| !(r.ratio.is_finite() && r.ratio > 0.0))
    {
        bail!("{}: {} is not a positive ratio", bad.label, bad.ratio);
    }
    Ok(rows)
}

/// The targets, in the order of the issue's; a step not run has none.
pub(crate) fn targets(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut row = |label: &str, ratio: f64, target: f64| {
        rows.push(Row {
            label: label.to_owned(),
            ratio,
            target,
        });
    };
    if let Some(p256) = &results.identities_p256 {
        row(
            "P-256 identities, ours synced / Python",
            p256.ratio_vs_python,
            5.0,
        );
        row(
            "P-256 identities, neither synced / Python",
            p256.ratio_vs_python_unflushed,
            5.0,
        );
        row(
            "P-256 identities / openssl CLI",
            p256.ratio_vs_openssl,
            200.0,
        );
    }
    if let Some(rsa) = &results.identities_rsa2048 {
        row("RSA-2048 identities / Python", rsa.ratio_vs_python, 1.2);
    }
    if let Some(fleet) = &results.fleet {
        row(
            "10,000-device fleet: 10 s / ours",
            10.0 / fleet.seconds,
            1.0,
        );
        row(
            "fleet peak memory: 200 MB / ours",
            200.0 / fleet.peak_rss_mb,
            1.0,
        );
    }
    if let Some(p) = &results.fleet_process {
        row(
            &format!(
                "{} devices, `provision fleet` process / Python flow",
                p.devices
            ),
            p.ratio,
            5.0,
        );
    }
    // QoS 0 ahead by a tenth; QoS 1 at least level.
    for (qos, target) in [(0, 1.1), (1, 1.0)] {
        if let Some(t) = results.throughput_at(qos) {
            row(
                &format!("QoS {qos} msg/s / mosquitto_pub → sub"),
                t.ratio,
                target,
            );
        }
    }
    if let Some(connects) = &results.connects {
        row(
            "mTLS connects/s / Python ssl",
            connects.ratio_vs_python,
            1.2,
        );
    }
    if let Some(idle) = &results.idle {
        row(
            "idle connection: 30 KB / ours",
            30.0 / idle.kb_per_connection,
            1.0,
        );
    }
    if let Some(ingest) = &results.ingest {
        row("ingest stored/s / mosquitto_sub", ingest.ratio, 0.9);
    }
    // One command on a large CA against an empty one (target: within 2×,
    // under 50 MB).
    if let Some(store) = &results.store {
        for op in &store.ops {
            row(
                &format!("`{}`, large CA: 2× empty CA's time / ours", op.op),
                2.0 / op.ratio,
                1.0,
            );
        }
        row(
            "large CA, one command: 50 MB / ours",
            50.0 / store.peak_rss_mb(),
            1.0,
        );
    }
    // Enrollment and renewal over MQTT, 1,000 devices at once (targets:
    // enrolled and connected in 8 s, renewed in 10 s, nothing lost).
    if let Some(l) = &results.lifecycle {
        row(
            "1,000 enroll + connect: 8 s / ours",
            8.0 / l.enroll_and_connect_seconds,
            1.0,
        );
        row(
            "1,000 renew while publishing: 10 s / ours (0 if any lost)",
            if l.lost > 0 {
                0.0
            } else {
                10.0 / l.renew_seconds
            },
            1.0,
        );
    }
    // The broker plugin against Mosquitto's acl_file (targets: within
    // 10 %), and a large CRL reloaded without a pause over 100 ms.
    if let Some(p) = &results.plugin {
        row("plugin / acl_file: QoS 1 msg/s", p.throughput_ratio, 0.9);
        row("plugin / acl_file: connections/s", p.connects_ratio, 0.9);
        row(
            "CRL reload: 100 ms / longest delivery pause",
            100.0 / p.reload_max_gap_ms.max(1.0),
            1.0,
        );
    }
    // What ships: each stripped binary under 25 MB.
    if let Some(binaries) = &results.binaries {
        for binary in &binaries.binaries {
            row(
                &format!("{} stripped: 25 MB / size", binary.name),
                25e6 / binary.stripped_bytes as f64,
                1.0,
            );
        }
    }
    rows
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
        let met = row.met();
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
    use crate::results::{Sizes, tests::sample};

    #[test]
    fn rows_follow_the_results() {
        let rows = rows(&sample()).unwrap();
        // 12 targets, 2 store commands and their memory, 2 lifecycle, 3
        // plugin, 2 binaries.
        assert_eq!(rows.len(), 22);
        assert_eq!(rows[1].ratio, 7.0);
        assert_eq!(rows[4].ratio, 2.0); // 10 s budget over 5 s
        assert_eq!((rows[6].ratio, rows[6].target), (6.0, 5.0)); // the fleet process
        assert_eq!((rows[7].ratio, rows[7].target), (1.1, 1.1)); // QoS 0, not QoS 1
        assert_eq!((rows[8].ratio, rows[8].target), (1.3, 1.0));
        assert_eq!(rows[10].ratio, 0.5); // 30 KB budget over 60 KB
        assert_eq!(rows[14].ratio, 50.0 / 60.0); // the largest peak of any command
        assert_eq!(rows[16].ratio, 2.0); // 10 s budget over 5 s
        assert_eq!(rows[19].ratio, 2.0); // 100 ms budget over 50 ms
        assert_eq!(rows[21].ratio, 25.0); // 25 MB over the plugin's 1 MB
    }

    #[test]
    fn a_step_not_run_has_no_rows() {
        let mut results = sample();
        results.connects = None;
        let rows = rows(&results).unwrap();
        assert_eq!(rows.len(), 21);
        assert!(rows.iter().all(|r| !r.label.contains("connects/s")));
        let empty = Results::new("m".into(), true, Sizes::new(true));
        assert!(super::rows(&empty).is_err());
    }

    #[test]
    fn a_lost_message_fails_the_renewal_row() {
        let mut results = sample();
        if let Some(l) = results.lifecycle.as_mut() {
            l.lost = 1;
        }
        let err = rows(&results).unwrap_err().to_string();
        assert!(err.contains("renew while publishing"), "{err}");
    }

    #[test]
    fn draws_an_svg_with_every_label() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("chart.svg");
        chart(&sample(), &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for row in rows(&sample()).unwrap() {
            // As the SVG escapes it.
            let label = row.label.replace('\'', "&apos;");
            assert!(svg.contains(&label), "no {label} in the chart");
        }
        assert!(svg.contains("0.50× (target 1×) missed"), "{svg}");
    }
}
