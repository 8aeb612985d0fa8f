//! Reading answers: the server's error behind a Rust client call or a decoded `Response`,
//! and the typed values of result rows.

use std::fmt::Debug;

use txbroker::client::ClientError;
use txbroker::error::ErrorCode;
use txbroker::protocol::{ErrorReply, Response, Value};

/// The server's error, failing the test if the call succeeded or failed otherwise (a broken
/// connection, an unreadable answer).
pub fn server_error<T: Debug>(result: Result<T, ClientError>) -> ErrorReply {
    match result {
        Err(ClientError::Server(error)) => error,
        Err(other) => panic!("expected an error answer from the server, got {other:?}"),
        Ok(value) => panic!("expected an error answer from the server, got success {value:?}"),
    }
}

/// Asserts the call failed with `code` and returns the error.
pub fn expect_code<T: Debug>(result: Result<T, ClientError>, code: ErrorCode) -> ErrorReply {
    let error = server_error(result);
    assert_eq!(error.code, code, "unexpected error {error:?}");
    error
}

/// The error of a decoded response, failing the test if it is a success.
pub fn response_error(response: &Response) -> &ErrorReply {
    match &response.outcome {
        Err(error) => error,
        Ok(reply) => panic!("expected an error, got {reply:?}"),
    }
}

pub fn int(value: &Value) -> i128 {
    match value {
        Value::Int(n) => i128::from(*n),
        Value::UInt(n) => i128::from(*n),
        other => panic!("expected an integer, got {other:?}"),
    }
}

pub fn float(value: &Value) -> f64 {
    match value {
        Value::Float(f) => f64::from(*f),
        Value::Double(f) => *f,
        other => panic!("expected a float, got {other:?}"),
    }
}

pub fn text(value: &Value) -> &str {
    match value {
        Value::Text(text) => text,
        other => panic!("expected a str, got {other:?}"),
    }
}

pub fn bytes(value: &Value) -> &[u8] {
    match value {
        Value::Bytes(bytes) => bytes,
        other => panic!("expected a bin, got {other:?}"),
    }
}
