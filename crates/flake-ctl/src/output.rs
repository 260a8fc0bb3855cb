// SPDX-License-Identifier: MIT
//! Listings as an aligned table, JSON or CSV, from one list of records.

use serde::Serialize;

use crate::cli::Format;

/// A listing: column headers plus the records; each record also serialises to JSON.
pub trait Row: Serialize {
    /// Column headers of the table and CSV forms.
    const HEADERS: &'static [&'static str];
    /// Cells in header order; `None` shows as `-` in tables and empty in CSV.
    fn cells(&self) -> Vec<Option<String>>;
}

/// Renders `rows` in `format`. `title` and `empty` are used by the table form only.
pub fn render<R: Row>(rows: &[R], format: Format, title: &str, empty: &str) -> String {
    match format {
        Format::Table => table(rows, title, empty),
        Format::Json => serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()) + "\n",
        Format::Csv => csv(rows),
    }
}

fn table<R: Row>(rows: &[R], title: &str, empty: &str) -> String {
    let mut out = format!("{title}\n\n");
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
        return out;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.cells()
                .into_iter()
                .map(|c| c.unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = R::HEADERS.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = R::HEADERS.iter().map(|h| h.to_string()).collect();
    let rulers: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    for line in [&headers, &rulers].into_iter().chain(&cells) {
        out.push_str(&aligned(line, &widths));
        out.push('\n');
    }
    out
}

fn aligned(cells: &[String], widths: &[usize]) -> String {
    let last = cells.len().saturating_sub(1);
    let parts: Vec<String> = cells
        .iter()
        .zip(widths)
        .enumerate()
        .map(|(i, (cell, width))| {
            if i == last {
                cell.clone()
            } else {
                format!("{cell:<width$}")
            }
        })
        .collect();
    parts.join("  ")
}

fn csv<R: Row>(rows: &[R]) -> String {
    let mut out = R::HEADERS
        .iter()
        .map(|h| h.to_lowercase().replace(' ', "_"))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    for row in rows {
        let fields: Vec<String> = row
            .cells()
            .into_iter()
            .map(|c| csv_field(&c.unwrap_or_default()))
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// The exit code of a command that handles many items and goes on after a failure (the
/// `update` commands): 0 when none failed, else 1 after one line saying how many did.
pub fn exit_after(command: &str, failures: usize) -> std::process::ExitCode {
    if failures == 0 {
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!("flake-ctl: {command}: {failures} failure(s); the rest was handled");
    std::process::ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct R {
        a: String,
        b: Option<String>,
    }

    impl Row for R {
        const HEADERS: &'static [&'static str] = &["NAME", "LONG HEADER"];
        fn cells(&self) -> Vec<Option<String>> {
            vec![Some(self.a.clone()), self.b.clone()]
        }
    }

    fn rows() -> Vec<R> {
        vec![
            R {
                a: "x".into(),
                b: None,
            },
            R {
                a: "long,name".into(),
                b: Some("say \"hi\"".into()),
            },
        ]
    }

    #[test]
    fn table_aligns_and_marks_missing() {
        let out = render(&rows(), Format::Table, "Title", "none");
        let want = "Title\n\nNAME       LONG HEADER\n---------  -----------\nx          -\nlong,name  say \"hi\"\n";
        assert_eq!(out, want);
        assert_eq!(
            render::<R>(&[], Format::Table, "Title", "none"),
            "Title\n\nnone\n"
        );
    }

    #[test]
    fn csv_has_header_and_quotes() {
        let out = render(&rows(), Format::Csv, "", "");
        assert_eq!(
            out,
            "name,long_header\nx,\n\"long,name\",\"say \"\"hi\"\"\"\n"
        );
    }

    #[test]
    fn json_is_an_array() {
        let out = render(&rows(), Format::Json, "", "");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["a"], "x");
        assert!(v[0]["b"].is_null());
        assert_eq!(render::<R>(&[], Format::Json, "", "").trim(), "[]");
    }
}
