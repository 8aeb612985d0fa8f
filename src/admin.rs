//! The operator's commands (`txbroker stats`, `txbroker exec`): they talk to a running broker
//! through the Rust client, like any other client, and print for a person or for a script.

use std::fmt::Write as _;

use crate::client::{Client, ClientError};
use crate::protocol::{QueryResult, StatKind, Stats, Value};

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
        let mut object: serde_json::Map<String, serde_json::Value> = stats
            .entries()
            .iter()
            .map(|(name, value)| (name.to_string(), serde_json::Value::from(*value)))
            .collect();
        object.insert(
            "mean_group_size".to_string(),
            serde_json::Value::from(stats.mean_group_size().unwrap_or(0.0)),
        );
        return serde_json::Value::Object(object).to_string();
    }
    let mut rows: Vec<Vec<String>> = stats
        .entries()
        .iter()
        .map(|(name, value)| vec![name.to_string(), value.to_string()])
        .collect();
    let mean_group_size = stats
        .mean_group_size()
        .map_or_else(|| "-".to_string(), |mean| format!("{mean:.1}"));
    rows.push(vec!["mean_group_size".to_string(), mean_group_size]);
    render_table(&["counter".to_string(), "value".to_string()], &rows)
}

/// One line of `stats --every`: the gauges as they are now and every other counter as a rate
/// per second since `before`, `seconds` ago. As a table row (see `rates_header`) or as one
/// JSON object, a counter's rate named `<counter>_per_s`.
pub fn render_rates(before: &Stats, now: &Stats, seconds: f64, json: bool) -> String {
    let cells: Vec<(String, serde_json::Value)> = now
        .counters()
        .into_iter()
        .zip(before.counters())
        .map(|((name, value, kind), (_, earlier, _))| match kind {
            StatKind::Gauge => (name.to_string(), serde_json::Value::from(value)),
            StatKind::Total => {
                let rate = value.saturating_sub(earlier) as f64 / seconds.max(f64::EPSILON);
                let rate = (rate * 10.0).round() / 10.0;
                (format!("{name}_per_s"), serde_json::Value::from(rate))
            }
        })
        .collect();
    if json {
        return serde_json::Value::Object(cells.into_iter().collect()).to_string();
    }
    cells
        .iter()
        .zip(rate_columns())
        .map(|((_, value), (_, width))| format!("{:>width$}", value.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The column titles above `render_rates` rows.
pub fn rates_header() -> String {
    rate_columns()
        .map(|(title, width)| format!("{title:>width$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each counter's column title (`/s` marks a rate) and width.
fn rate_columns() -> impl Iterator<Item = (String, usize)> {
    Stats::default()
        .counters()
        .into_iter()
        .map(|(name, _, kind)| {
            let title = match kind {
                StatKind::Gauge => name.to_string(),
                StatKind::Total => format!("{name}/s"),
            };
            let width = title.len().max(8);
            (title, width)
        })
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
/// Runs `sql` for `txbroker exec`: alone in autocommit mode, or, with an idempotency key, as a
/// keyed `tx` (a replay says so on a line of its own). The text to print.
pub async fn exec(
    client: &Client,
    sql: &str,
    params: Vec<Value>,
    idempotency_key: Option<String>,
) -> Result<String, ClientError> {
    let Some(key) = idempotency_key else {
        return Ok(render_result(&client.exec(sql, params).await?));
    };
    let outcome = client
        .tx()
        .idempotency_key(key)
        .exec(sql, params)
        .run()
        .await?;
    let mut text = outcome
        .results
        .first()
        .map(render_result)
        .unwrap_or_default();
    if outcome.replayed {
        text.push_str("\n(replayed: the key's transaction committed earlier; nothing ran now)");
    }
    Ok(text)
}

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
        Value::Bytes(bytes) => format!("0x{}", hex::encode(bytes)),
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
    fn rates_are_per_second_differences_and_gauges_stay_as_they_are() {
        let before = Stats {
            sessions: 9,
            transactions_committed: 100,
            retries: 5,
            locks_held: 7,
            ..Stats::default()
        };
        let now = Stats {
            sessions: 3,
            transactions_committed: 350,
            retries: 6,
            locks_held: 2,
            lock_waiters: 1,
            ..Stats::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&render_rates(&before, &now, 0.5, true)).expect("valid json");
        assert_eq!(json["sessions"], 3);
        assert_eq!(json["transactions_committed_per_s"], 500.0);
        assert_eq!(json["retries_per_s"], 2.0);
        assert_eq!(json["deadlocks_per_s"], 0.0);
        assert_eq!(json["locks_held"], 2);
        assert_eq!(json["lock_waiters"], 1);
        assert_eq!(json.as_object().map(|o| o.len()), Some(13));

        let header = rates_header();
        let row = render_rates(&before, &now, 0.5, false);
        assert!(header.contains("transactions_committed/s") && header.contains("locks_held"));
        assert_eq!(header.len(), row.len(), "{header}\n{row}");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["3", "500.0", "0.0", "2.0", "0.0", "0.0", "0.0", "2", "1", "0.0", "0.0", "0.0", "0"]
        );
    }

    #[test]
    fn stats_render_as_json_with_every_counter() {
        let json: serde_json::Value =
            serde_json::from_str(&render_stats(&Stats::default(), true)).expect("valid json");
        let object = json.as_object().expect("an object");
        for (name, _) in Stats::default().entries() {
            assert!(object.contains_key(name), "{name} missing from {json}");
        }
        assert_eq!(object["mean_group_size"], 0.0);
        assert_eq!(object.len(), Stats::default().entries().len() + 1, "{json}");
        assert!(render_stats(&Stats::default(), false).contains("lock_waiters"));
    }
}
