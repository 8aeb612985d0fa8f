//! The operator's commands (`txbroker stats`, `txbroker exec`): they talk to a running broker
//! through the Rust client, like any other client, and print for a person or for a script.

use std::fmt::Write as _;

use crate::client::{Client, ClientError};
use crate::protocol::{QueryResult, Stats, Value};

/// Connects, authenticating when a token is given.
pub async fn connect(address: &str, token: Option<&str>) -> Result<Client, ClientError> {
    let client = Client::connect(address).await?;
    if token.is_some() {
        client.hello(token).await?;
    }
    Ok(client)
}

/// `stats` as a two-column table, or as one JSON object.
pub fn render_stats(stats: &Stats, json: bool) -> String {
    if json {
        let object: serde_json::Map<String, serde_json::Value> = stats
            .entries()
            .iter()
            .map(|(name, value)| (name.to_string(), serde_json::Value::from(*value)))
            .collect();
        return serde_json::Value::Object(object).to_string();
    }
    let rows: Vec<Vec<String>> = stats
        .entries()
        .iter()
        .map(|(name, value)| vec![name.to_string(), value.to_string()])
        .collect();
    render_table(&["counter".to_string(), "value".to_string()], &rows)
}

/// Reads a command-line parameter: integers and decimals as numbers, `null` as NULL, the
/// rest as text.
pub fn parse_param(text: &str) -> Value {
    if text == "null" {
        Value::Null
    } else if let Ok(n) = text.parse::<i64>() {
        Value::Int(n)
    } else if let Ok(n) = text.parse::<u64>() {
        Value::UInt(n)
    } else if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
        Value::Double(f)
    } else {
        Value::Text(text.to_string())
    }
}

/// A statement's result: its rows as a table, or what it changed.
pub fn render_result(result: &QueryResult) -> String {
    if result.columns.is_empty() {
        let mut text = format!("{} row(s) affected", result.affected);
        if let Some(id) = result.last_insert_id {
            let _ = write!(text, ", last insert id {id}");
        }
        return text;
    }
    let rows: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| row.iter().map(render_value).collect())
        .collect();
    let mut text = render_table(&result.columns, &rows);
    let _ = write!(text, "\n{} row(s)", result.rows.len());
    text
}

fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::UInt(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Text(text) => text.clone(),
        Value::Bytes(bytes) => {
            let mut hex = String::from("0x");
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join(" | ").trim_end().to_string()
    };
    let mut text = line(header);
    text.push('\n');
    text.push_str(
        &widths
            .iter()
            .map(|width| "-".repeat(*width))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    for row in rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_read_as_numbers_null_or_text() {
        assert_eq!(parse_param("42"), Value::Int(42));
        assert_eq!(parse_param("-7"), Value::Int(-7));
        assert_eq!(parse_param("18446744073709551615"), Value::UInt(u64::MAX));
        assert_eq!(parse_param("1.5"), Value::Double(1.5));
        assert_eq!(parse_param("null"), Value::Null);
        assert_eq!(parse_param("NaN"), Value::Text("NaN".into()));
        assert_eq!(parse_param("alice"), Value::Text("alice".into()));
    }

    #[test]
    fn results_render_as_aligned_tables() {
        let result = QueryResult {
            affected: 0,
            last_insert_id: None,
            columns: vec!["id".into(), "name".into()],
            rows: vec![
                vec![Value::Int(1), Value::Text("alice".into())],
                vec![Value::Int(22), Value::Null],
            ],
        };
        assert_eq!(
            render_result(&result),
            "id | name\n---+------\n1  | alice\n22 | NULL\n2 row(s)"
        );
        let write = QueryResult {
            affected: 3,
            last_insert_id: Some(9),
            ..QueryResult::default()
        };
        assert_eq!(render_result(&write), "3 row(s) affected, last insert id 9");
    }

    #[test]
    fn stats_render_as_json_with_every_counter() {
        let json: serde_json::Value =
            serde_json::from_str(&render_stats(&Stats::default(), true)).expect("valid json");
        assert_eq!(json.as_object().map(|o| o.len()), Some(9));
        assert!(render_stats(&Stats::default(), false).contains("lock_waiters"));
    }
}
