//! The check both targets make on whatever decoded: the sender's encoder (`rmp_serde`) writes
//! it back, and the decoder reads that back as the same value.

use std::fmt::Debug;

use serde::Serialize;

/// Re-encodes `decoded` and decodes it again with `decode`: the result must equal `decoded`.
/// A value holding a NaN is never equal to itself, so for one the two encodings must be the
/// same bytes instead.
pub fn assert_round_trips<T, E>(what: &str, decoded: &T, decode: impl Fn(&[u8]) -> Result<T, E>)
where
    T: Serialize + PartialEq + Debug,
    E: Debug,
{
    let encoded = rmp_serde::to_vec(decoded).expect("a decoded value must re-encode");
    let again = match decode(&encoded) {
        Ok(again) => again,
        Err(why) => panic!(
            "re-encoded {what} is rejected: {why:?}\n{what}: {decoded:?}\nbytes: {encoded:02x?}"
        ),
    };
    if decoded == decoded {
        assert_eq!(&again, decoded, "{what} does not round-trip");
    } else {
        let encoded_again = rmp_serde::to_vec(&again).expect("re-encodes");
        assert_eq!(encoded_again, encoded, "{what} with NaN does not round-trip");
    }
}
