//! Printing answers: human text or JSON on stdout, byte sizes for people, and a quiet end when
//! the reader of stdout goes away (`basin ls | head`).

use std::fmt;
use std::io::{self, Write};

use serde::Serialize;

/// Stdout was closed by its reader. Not a failure of the command: it ends quietly with success.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Adds "write to stdout" to an error, or turns a broken pipe into [`StdoutClosed`].
pub fn stdout_result<T>(result: io::Result<T>) -> anyhow::Result<T> {
    result.map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("write to stdout")
        }
    })
}

/// Buffered, locked stdout. Callers flush through [`stdout_result`].
pub fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 << 10, io::stdout().lock())
}

/// One JSON value on its own line.
pub fn json_line(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    stdout_result(writeln!(out, "{text}"))
}

/// One JSON document, pretty-printed, on stdout.
pub fn json_document(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut out = stdout();
    stdout_result(writeln!(out, "{text}").and_then(|()| out.flush()))
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A maintenance report: with `--json` the report itself as a document; otherwise a title line
/// and one `label  value` line per counter in the report's field order (serde_json's
/// `preserve_order`), byte counts also in human units. The lines come from the report's own
/// fields so new counters show up without touching the CLI.
pub fn report(title: &str, report: &impl Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        return json_document(report);
    }
    let value = serde_json::to_value(report)?;
    let mut out = stdout();
    let mut text = format!("{title}\n");
    if let serde_json::Value::Object(fields) = &value {
        let width = fields.keys().map(|k| k.len()).max().unwrap_or(0);
        for (name, field) in fields {
            let label = name.replace('_', " ");
            text.push_str(&format!("  {label:width$}  {}\n", field_text(name, field)));
        }
    }
    stdout_result(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

fn field_text(name: &str, value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(bytes) if name.split('_').any(|word| word == "bytes") && bytes >= 1024 => {
                format!("{bytes} ({})", human_bytes(bytes))
            }
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(items) if items.is_empty() => "none".to_string(),
        serde_json::Value::Array(items)
            if items.iter().all(|i| !i.is_object() && !i.is_array()) =>
        {
            items
                .iter()
                .map(|i| field_text("", i))
                .collect::<Vec<_>>()
                .join(", ")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
    }

    #[test]
    fn report_fields_read_as_text() {
        assert_eq!(
            field_text("pack_file_bytes", &serde_json::json!(2048)),
            "2048 (2.0 KiB)"
        );
        assert_eq!(
            field_text("bytes_after", &serde_json::json!(4096)),
            "4096 (4.0 KiB)"
        );
        assert_eq!(field_text("objects", &serde_json::json!(2048)), "2048");
        assert_eq!(field_text("vacuumed", &serde_json::json!(true)), "yes");
        assert_eq!(field_text("packs", &serde_json::json!([1, 2])), "1, 2");
        assert_eq!(field_text("corrupt", &serde_json::json!([])), "none");
    }
}
