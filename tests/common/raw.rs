//! The wire by hand: a raw TCP connection speaking frames byte by byte (`RawConn`), requests
//! built as plain MessagePack maps, and answers read back and checked as plain MessagePack,
//! the way a client in another language sees them.

use std::net::SocketAddr;
use std::time::Duration;

use rmpv::Value as Msgpack;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use txbroker::protocol::Response;

/// How long a frame from the server may take before the test fails.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

/// A raw TCP connection speaking frames byte by byte.
pub struct RawConn {
    pub stream: TcpStream,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends `body` as one frame.
    pub async fn send_frame(&mut self, body: &[u8]) {
        self.send_bytes(&frame(body)).await;
    }

    /// Sends a MessagePack value (a request map, usually) as one frame.
    pub async fn send_value(&mut self, value: &Msgpack) {
        self.send_frame(&encode(value)).await;
    }

    /// Reads one frame and decodes it as a response; None at end of stream.
    pub async fn read_response(&mut self) -> Option<Response> {
        let body = self.read_frame().await?;
        Some(Response::decode(&body).expect("server sends valid responses"))
    }

    /// Reads one frame's body; None at end of stream.
    pub async fn read_frame(&mut self) -> Option<Vec<u8>> {
        read_frame_from(&mut self.stream).await
    }

    /// True when the server closes the connection within the limit; whatever it still sends
    /// before closing (a TLS alert, say) is read and dropped.
    pub async fn is_closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(ANSWER_LIMIT, self.stream.read_to_end(&mut rest))
            .await
            .is_ok()
    }
}

/// Reads one frame's body from any reader (a `RawConn`'s stream, or the read half of a split
/// one); None at end of stream. Fails the test when the frame does not come in time.
pub async fn read_frame_from<R: AsyncRead + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    tokio::time::timeout(ANSWER_LIMIT, reader.read_exact(&mut length))
        .await
        .expect("server answers in time")
        .ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    tokio::time::timeout(ANSWER_LIMIT, reader.read_exact(&mut body))
        .await
        .expect("server sends the whole frame in time")
        .ok()?;
    Some(body)
}

/// Builds a MessagePack map from string keys.
pub fn map(entries: Vec<(&str, Msgpack)>) -> Msgpack {
    Msgpack::Map(
        entries
            .into_iter()
            .map(|(key, value)| (Msgpack::from(key), value))
            .collect(),
    )
}

/// A raw request map: `id`, `op`, then `extra`.
pub fn req(id: u64, op: &str, extra: Vec<(&str, Msgpack)>) -> Msgpack {
    let mut entries = vec![("id", Msgpack::from(id)), ("op", Msgpack::from(op))];
    entries.extend(extra);
    map(entries)
}

/// A raw `exec` request with its `params` array.
pub fn exec_req(id: u64, sql: &str, params: Vec<Msgpack>) -> Msgpack {
    req(
        id,
        "exec",
        vec![
            ("sql", Msgpack::from(sql)),
            ("params", Msgpack::Array(params)),
        ],
    )
}

/// A statement of a raw `tx` request, without params.
pub fn statement(sql: &str) -> Msgpack {
    map(vec![("sql", Msgpack::from(sql))])
}

pub fn encode(value: &Msgpack) -> Vec<u8> {
    let mut body = Vec::new();
    rmpv::encode::write_value(&mut body, value).expect("encode");
    body
}

/// `body` behind its four-byte big-endian length.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// A value encoded and framed: the bytes of one request on the wire.
pub fn framed(value: &Msgpack) -> Vec<u8> {
    frame(&encode(value))
}

/// Reads one frame and decodes it as a plain MessagePack value, as a non-Rust client would.
pub async fn read_raw(conn: &mut RawConn) -> Msgpack {
    let body = conn.read_frame().await.expect("the server answers");
    let mut cursor = body.as_slice();
    let value = rmpv::decode::read_value(&mut cursor).expect("the answer is MessagePack");
    assert!(cursor.is_empty(), "trailing bytes after the answer");
    value
}

/// Sends `request` and reads its answer as a plain MessagePack value.
pub async fn call_raw(conn: &mut RawConn, request: Msgpack) -> Msgpack {
    conn.send_value(&request).await;
    read_raw(conn).await
}

/// A field of a map with string keys; panics when `value` is not such a map.
pub fn field<'a>(value: &'a Msgpack, key: &str) -> Option<&'a Msgpack> {
    let entries = value
        .as_map()
        .unwrap_or_else(|| panic!("expected a map, got {value}"));
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Every key of the map (and of nested maps) is a str.
pub fn assert_string_keys(value: &Msgpack) {
    match value {
        Msgpack::Map(entries) => {
            for (key, inner) in entries {
                assert!(key.is_str(), "non-string key {key} in {value}");
                assert_string_keys(inner);
            }
        }
        Msgpack::Array(items) => items.iter().for_each(assert_string_keys),
        _ => {}
    }
}

/// Checks a raw success answer for `id`.
pub fn assert_raw_ok(response: &Msgpack, id: u64) {
    assert_string_keys(response);
    assert_eq!(
        field(response, "id").and_then(Msgpack::as_u64),
        Some(id),
        "id not echoed in {response}"
    );
    assert_eq!(
        field(response, "ok"),
        Some(&Msgpack::Boolean(true)),
        "not ok: {response}"
    );
}

/// Checks a raw failure answer: its id (None means nil or absent) and code.
pub fn assert_raw_error(response: &Msgpack, id: Option<u64>, code: &str) {
    assert_string_keys(response);
    match id {
        Some(id) => assert_eq!(
            field(response, "id").and_then(Msgpack::as_u64),
            Some(id),
            "id not echoed in {response}"
        ),
        None => assert!(
            field(response, "id").is_none_or(Msgpack::is_nil),
            "id should be nil in {response}"
        ),
    }
    assert_eq!(
        field(response, "ok"),
        Some(&Msgpack::Boolean(false)),
        "expected a failure: {response}"
    );
    let error = field(response, "error").expect("an error map");
    assert_eq!(
        field(error, "code").and_then(Msgpack::as_str),
        Some(code),
        "wrong code in {response}"
    );
    assert!(
        field(error, "message").is_some_and(Msgpack::is_str),
        "error without a str message: {response}"
    );
    assert!(
        field(error, "retryable").is_some_and(Msgpack::is_bool),
        "error without a bool retryable: {response}"
    );
}

/// A ping on `conn` is answered ok: the connection is open and in sync.
pub async fn assert_ping_works(conn: &mut RawConn, id: u64) {
    let response = call_raw(conn, req(id, "ping", vec![])).await;
    assert_raw_ok(&response, id);
}
