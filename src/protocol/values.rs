//! `Value`, what a statement parameter or a result cell holds, and its MessagePack form in
//! both directions. Parameters and rows share it, so the client and the server convert
//! values in one place.

use rmpv::Value as Msgpack;
use serde::{Serialize, Serializer};
use thiserror::Error;

/// A MessagePack value as it crosses between a client and a MySQL column or parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// Why a MessagePack value is not a `Value`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("integer out of range")]
    IntegerOutOfRange,
    #[error("str is not valid UTF-8")]
    NotUtf8,
    #[error("arrays, maps and ext types are not values")]
    NotAScalar,
}

macro_rules! value_from {
    ($($source:ty => $variant:ident as $target:ty),* $(,)?) => {
        $(impl From<$source> for Value {
            fn from(value: $source) -> Value {
                Value::$variant(value as $target)
            }
        })*
    };
}

value_from! {
    i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
    u8 => UInt as u64, u16 => UInt as u64, u32 => UInt as u64, u64 => UInt as u64,
    f32 => Float as f32, f64 => Double as f64,
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Value {
        Value::Bytes(value)
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Value {
        Value::Bytes(value.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

impl Value {
    /// The value as a signed integer, when it is one that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(n) => Some(n),
            Value::UInt(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    /// The value as text, when it is a string (DECIMAL, dates and times are strings).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(super) fn from_msgpack(value: Msgpack) -> Result<Value, ValueError> {
        Ok(match value {
            Msgpack::Nil => Value::Null,
            Msgpack::Boolean(b) => Value::Bool(b),
            Msgpack::Integer(n) => match n.as_i64() {
                Some(signed) => Value::Int(signed),
                None => Value::UInt(n.as_u64().ok_or(ValueError::IntegerOutOfRange)?),
            },
            Msgpack::F32(f) => Value::Float(f),
            Msgpack::F64(f) => Value::Double(f),
            Msgpack::String(text) => Value::Text(text.into_str().ok_or(ValueError::NotUtf8)?),
            Msgpack::Binary(bytes) => Value::Bytes(bytes),
            Msgpack::Array(_) | Msgpack::Map(_) | Msgpack::Ext(..) => {
                return Err(ValueError::NotAScalar)
            }
        })
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(n) => serializer.serialize_i64(*n),
            Value::UInt(n) => serializer.serialize_u64(*n),
            Value::Float(f) => serializer.serialize_f32(*f),
            Value::Double(f) => serializer.serialize_f64(*f),
            Value::Text(text) => serializer.serialize_str(text),
            Value::Bytes(bytes) => serializer.serialize_bytes(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_are_msgpack_bin_and_text_is_str() {
        let body = rmp_serde::to_vec(&vec![Value::Bytes(vec![1]), Value::Text("a".into())])
            .expect("encodes");
        assert_eq!(body, vec![0x92, 0xc4, 0x01, 0x01, 0xa1, b'a']);
    }
}
