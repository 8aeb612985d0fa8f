//! Framing: a 4-byte big-endian length, then that many bytes of one MessagePack value.
//!
//! `FrameCodec` is the only code that splits a byte stream into frames. It refuses a length
//! of zero or over its limit as soon as the four length bytes are in, without waiting for a
//! body that may never come, so a hostile length cannot make anyone buffer it. Encoding
//! serializes straight into the output buffer and patches the length in afterwards.

use bytes::{Buf, BufMut, BytesMut};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

const LENGTH_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame length 0: a frame holds one MessagePack value")]
    Empty,
    #[error("frame of {length} bytes is over the limit of {limit} bytes")]
    TooLarge { length: u64, limit: usize },
    #[error("no progress on a partial frame for {waited_ms} ms")]
    Stalled { waited_ms: u64 },
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a stream into frame bodies and writes serializable values as frames.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    /// Where the size of each whole frame read or written goes, when counted.
    bytes: Option<Counter>,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes,
            bytes: None,
        }
    }

    /// Adds the size of every frame this codec reads or writes, header included, to `bytes`.
    pub fn counting(self, bytes: Counter) -> FrameCodec {
        FrameCodec {
            bytes: Some(bytes),
            ..self
        }
    }

    fn count(&self, frame_bytes: usize) {
        if let Some(bytes) = &self.bytes {
            bytes.inc_by(frame_bytes as u64);
        }
    }

    /// Whether a partial frame is buffered: a peer that stops here is stalled mid-frame.
    pub fn is_mid_frame(buffer: &BytesMut) -> bool {
        !buffer.is_empty()
    }
}

/// Reads the next frame, giving up on a peer that leaves a partial frame without progress for
/// `patience`: it would otherwise hold its session (and its buffer) forever. A peer with
/// nothing buffered may stay quiet as long as it likes.
pub async fn next_frame<R>(
    framed: &mut tokio_util::codec::FramedRead<R, FrameCodec>,
    patience: std::time::Duration,
) -> Option<Result<BytesMut, FrameError>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use futures_util::StreamExt;
    // Looking four times per period bounds the detection to 1.25 periods after the last byte.
    let look_every = (patience / 4).max(std::time::Duration::from_millis(1));
    let mut buffered_at_last_look = 0;
    let mut last_progress = std::time::Instant::now();
    loop {
        // `next` on a FramedRead keeps its buffer when cancelled, so a timeout loses nothing.
        match tokio::time::timeout(look_every, framed.next()).await {
            Ok(item) => return item,
            Err(_) => {
                let buffered = framed.read_buffer().len();
                if buffered != buffered_at_last_look {
                    buffered_at_last_look = buffered;
                    last_progress = std::time::Instant::now();
                } else if FrameCodec::is_mid_frame(framed.read_buffer())
                    && last_progress.elapsed() >= patience
                {
                    return Some(Err(FrameError::Stalled {
                        waited_ms: patience.as_millis() as u64,
                    }));
                }
            }
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let mut length_bytes = [0u8; LENGTH_BYTES];
        length_bytes.copy_from_slice(&src[..LENGTH_BYTES]);
        let length = u32::from_be_bytes(length_bytes) as usize;
        if length == 0 {
            return Err(FrameError::Empty);
        }
        if length > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                length: length as u64,
                limit: self.max_frame_bytes,
            });
        }
        if src.len() < LENGTH_BYTES + length {
            src.reserve(LENGTH_BYTES + length - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_BYTES);
        self.count(LENGTH_BYTES + length);
        Ok(Some(src.split_to(length)))
    }
}

impl<T: Serialize> Encoder<T> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let mut writer = dst.writer();
        let encoded = rmp_serde::encode::write(&mut writer, &item);
        let dst = writer.into_inner();
        if let Err(error) = encoded {
            dst.truncate(start);
            return Err(error.into());
        }
        let length = dst.len() - start - LENGTH_BYTES;
        let Ok(length) = u32::try_from(length) else {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                length: length as u64,
                limit: u32::MAX as usize,
            });
        };
        dst[start..start + LENGTH_BYTES].copy_from_slice(&length.to_be_bytes());
        self.count(LENGTH_BYTES + length as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_at_their_length() {
        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::from(&[0, 0, 0, 2, 0xc0, 0xc0, 0, 0, 0][..]);
        assert_eq!(
            codec.decode(&mut buffer).expect("valid").as_deref(),
            Some(&[0xc0u8, 0xc0][..])
        );
        assert_eq!(codec.decode(&mut buffer).expect("partial").as_deref(), None);
        assert!(FrameCodec::is_mid_frame(&buffer));
        buffer.extend_from_slice(&[1, 0x90]);
        assert_eq!(
            codec.decode(&mut buffer).expect("valid").as_deref(),
            Some(&[0x90u8][..])
        );
        assert!(!FrameCodec::is_mid_frame(&buffer));
    }

    #[test]
    fn bad_lengths_are_refused_before_the_body_arrives() {
        let mut codec = FrameCodec::new(16);
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0, 0, 0, 0][..])),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0, 0, 0, 17][..])),
            Err(FrameError::TooLarge {
                length: 17,
                limit: 16
            })
        ));
        assert!(matches!(
            codec.decode(&mut BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..])),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoding_prefixes_the_body_length() {
        let mut codec = FrameCodec::new(16);
        let mut buffer = BytesMut::new();
        codec.encode("ab", &mut buffer).expect("encodes");
        assert_eq!(&buffer[..], &[0, 0, 0, 3, 0xa2, b'a', b'b']);
    }
}
