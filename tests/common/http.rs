//! Plain HTTP/1.0 over a TCP stream, for the broker's monitoring routes, a real Prometheus
//! server's API and the actix-web example: HTTP/1.0 keeps the answer unchunked and closes
//! the connection, so the body is whatever follows the headers.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status and body of `GET path`; `accept` is sent as the `Accept` header when given.
pub async fn get_with(address: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String) {
    let accept = accept.map_or(String::new(), |accept| format!("Accept: {accept}\r\n"));
    exchange(
        address,
        &format!("GET {path} HTTP/1.0\r\nHost: test\r\n{accept}\r\n"),
    )
    .await
}

/// Sends `request` (an HTTP/1.0 request, headers and body) and returns the answer's status
/// and body.
pub async fn exchange(address: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the HTTP server");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8(response).expect("a text answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_string())
}

pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    get_with(address, path, None).await
}
