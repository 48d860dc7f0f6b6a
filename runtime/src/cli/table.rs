//! Plain-text tables and the numbers, ages and rates in them.

use super::*;

/// Renders rows as aligned columns.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut parts = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            parts.push(format!("{c:<width$}", width = widths[i]));
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub(super) fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        other => other.as_str().unwrap_or("-").to_string(),
    }
}

pub(super) fn age(secs: f64) -> String {
    if secs <= 0.0 {
        "-".into()
    } else if secs < 60.0 {
        format!("{secs:.0}s")
    } else if secs < 3_600.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3_600.0)
    }
}

pub(super) fn format_rate(per_s: f64) -> String {
    crate::core::Rate::per_second(per_s).map_or("0".into(), |r| r.to_string())
}
