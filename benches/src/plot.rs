//! SVG plots of a suite's report (`lumen bench ... --plot FILE.svg`,
//! `lumen-bench plot REPORT.json --out FILE.svg`): one panel per transport
//! or layout and test, Lumen and each baseline against message size (or
//! rank count) on log axes, so a curve shows what a table of ratios hides.
//!
//! Rows are read from the JSON report (`rows`), so any suite whose rows
//! have `test`, `lumen` and `size` or `ranks` can be drawn; `transport` or
//! `layout` splits panels further, `baseline_name` names the second line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One panel: its title, axis labels and lines (name, points).
struct Panel {
    title: String,
    x_label: &'static str,
    y_label: String,
    lines: BTreeMap<String, Vec<(f64, f64)>>,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

fn panels(report: &serde_json::Value) -> anyhow::Result<Vec<Panel>> {
    let rows = report["rows"]
        .as_array()
        .context("the report has no `rows`")?;
    let mut panels: Vec<Panel> = Vec::new();
    for row in rows {
        let Some(test) = row["test"].as_str() else {
            continue;
        };
        let (x, x_label) = match (row["size"].as_f64(), row["ranks"].as_f64()) {
            (Some(size), _) => (size, "message size (bytes)"),
            (None, Some(ranks)) => (ranks, "ranks"),
            _ => continue,
        };
        let group = row["transport"]
            .as_str()
            .or_else(|| row["layout"].as_str())
            .unwrap_or_default();
        let title = if group.is_empty() {
            test.to_string()
        } else {
            format!("{group} {test}")
        };
        let y_label = match row["unit"].as_str() {
            Some(unit) => unit.to_string(),
            None if test == "latency" => "us".into(),
            None if test == "bandwidth" => "MB/s".into(),
            None => String::new(),
        };
        let index = match panels.iter().position(|p| p.title == title) {
            Some(i) => i,
            None => {
                panels.push(Panel {
                    title,
                    x_label,
                    y_label,
                    lines: BTreeMap::new(),
                });
                panels.len() - 1
            }
        };
        let panel = &mut panels[index];
        // x = 0 cannot sit on a log axis (a 0-byte message): left out.
        if x <= 0.0 {
            continue;
        }
        if let Some(lumen) = row["lumen"].as_f64().filter(|v| *v > 0.0) {
            let line = panel.lines.entry("Lumen".into()).or_default();
            if !line.iter().any(|p| p.0 == x) {
                line.push((x, lumen));
            }
        }
        if let (Some(name), Some(value)) = (
            row["baseline_name"].as_str(),
            row["baseline"].as_f64().filter(|v| *v > 0.0),
        ) {
            panel
                .lines
                .entry(name.to_string())
                .or_default()
                .push((x, value));
        }
    }
    panels.retain(|p| !p.lines.is_empty());
    for panel in &mut panels {
        for line in panel.lines.values_mut() {
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    Ok(panels)
}

/// Draws `report` into an SVG file at `out`.
pub fn plot(report: &serde_json::Value, out: &Path) -> anyhow::Result<()> {
    let panels = panels(report)?;
    if panels.is_empty() {
        anyhow::bail!("nothing to plot: no row has `test`, `lumen` and `size` or `ranks`");
    }
    let suite = report["info"]["suite"].as_str().unwrap_or("benchmark");
    let commit = report["info"]["commit"].as_str().unwrap_or("?");
    let date = report["info"]["date"].as_str().unwrap_or("");
    let columns = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(columns);
    let (width, height) = (560 * columns as u32, 360 * rows as u32 + 40);
    let root = SVGBackend::new(out, (width, height)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("lumen bench {suite} — commit {commit}, {date}"),
            ("sans-serif", 20),
        )?;
        for (area, panel) in root.split_evenly((rows, columns)).iter().zip(&panels) {
            let points = panel.lines.values().flatten();
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &(x, y) in points {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            // Some room around the data on the log axes.
            let (x0, x1) = (x0 / 1.5, x1 * 1.5);
            let (y0, y1) = (y0 / 2.0, y1 * 2.0);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?;
            chart
                .configure_mesh()
                .x_desc(panel.x_label)
                .y_desc(panel.y_label.as_str())
                .x_label_formatter(&|x| human(*x))
                .y_label_formatter(&|y| {
                    format!("{y:.3}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string()
                })
                .draw()?;
            let mut others = 2;
            for (name, line) in &panel.lines {
                // The same colour for the same side in every panel.
                let colour = match name.as_str() {
                    "Lumen" => COLOURS[0],
                    "open-mpi" | "mpirun" => COLOURS[1],
                    _ => {
                        others += 1;
                        COLOURS[2 + (others - 3) % 2]
                    }
                };
                chart
                    .draw_series(LineSeries::new(
                        line.iter().copied(),
                        colour.stroke_width(2),
                    ))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", out.display()))
}

/// An axis label: 1000 -> "1k", 1000000 -> "1M" (the log axes mark powers of ten).
fn human(x: f64) -> String {
    let trim = |v: f64| {
        let text = format!("{v:.1}");
        text.trim_end_matches(".0").to_string()
    };
    if x >= 1e9 {
        format!("{}G", trim(x / 1e9))
    } else if x >= 1e6 {
        format!("{}M", trim(x / 1e6))
    } else if x >= 1e3 {
        format!("{}k", trim(x / 1e3))
    } else {
        trim(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> serde_json::Value {
        serde_json::json!({
            "info": {"suite": "transport", "commit": "abc", "date": "today"},
            "rows": [
                {"transport": "shm", "test": "latency", "size": 8, "lumen": 0.2, "baseline_name": "open-mpi", "baseline": 0.13},
                {"transport": "shm", "test": "latency", "size": 4096, "lumen": 0.4, "baseline_name": "open-mpi", "baseline": 2.5},
                {"transport": "shm", "test": "bandwidth", "size": 4096, "lumen": 20000.0, "baseline_name": "open-mpi", "baseline": 1700.0},
                {"transport": "shm", "test": "bandwidth", "size": 4096, "lumen": 20000.0, "baseline_name": "memcpy", "baseline": 83000.0},
                {"transport": "tcp", "test": "latency", "size": 0, "lumen": 6.0, "baseline_name": "open-mpi", "baseline": null}
            ]
        })
    }

    #[test]
    fn rows_become_one_panel_per_transport_and_test() {
        let panels = panels(&report()).unwrap();
        let titles: Vec<&str> = panels.iter().map(|p| p.title.as_str()).collect();
        // The 0-byte tcp row cannot sit on a log axis: no tcp panel.
        assert_eq!(titles, ["shm latency", "shm bandwidth"]);
        assert_eq!(panels[0].lines["Lumen"], [(8.0, 0.2), (4096.0, 0.4)]);
        assert_eq!(panels[0].y_label, "us");
        // Two baselines, one line each; Lumen's point once.
        assert_eq!(panels[1].lines.len(), 3);
        assert_eq!(panels[1].lines["Lumen"].len(), 1);
    }

    #[test]
    fn a_plot_is_an_svg_file_with_every_panel() {
        let out = std::env::temp_dir().join(format!("lumen-plot-test-{}.svg", std::process::id()));
        plot(&report(), &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).ok();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for text in [
            "shm latency",
            "shm bandwidth",
            "open-mpi",
            "memcpy",
            "Lumen",
        ] {
            assert!(svg.contains(text), "{text} missing from the plot");
        }
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(human(10.0), "10");
        assert_eq!(human(1000.0), "1k");
        assert_eq!(human(1e6), "1M");
        assert_eq!(human(2.5e9), "2.5G");
    }

    #[test]
    fn an_empty_report_is_an_error_not_a_blank_picture() {
        let empty = serde_json::json!({"rows": []});
        let out = std::env::temp_dir().join("lumen-plot-never.svg");
        assert!(plot(&empty, &out).is_err());
    }
}
