//! Tests of `frame.rs`.

use super::*;
use proptest::prelude::*;

fn encode(frame: Frame) -> BytesMut {
    let mut bytes = BytesMut::new();
    FrameCodec.encode(frame, &mut bytes).unwrap();
    bytes
}

/// Decodes everything in `bytes` as a link that then ends.
fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut buffer = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = FrameCodec.decode_eof(&mut buffer)? {
        frames.push(frame);
    }
    Ok(frames)
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), ".{0,40}").prop_map(|(session, channel)| Frame::Open { session, channel }),
        any::<u32>().prop_map(|session| Frame::Accept { session }),
        (any::<u32>(), ".{0,40}").prop_map(|(session, reason)| Frame::Refuse { session, reason }),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..2000))
            .prop_map(|(session, bytes)| Frame::Data { session, bytes: bytes.into() }),
        any::<u32>().prop_map(|session| Frame::Close { session }),
    ]
}

proptest! {
    /// Whatever arrives on the link, the decoder answers frames or an error: it never
    /// panics, and never claims more bytes than it was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buffer = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = FrameCodec.decode(&mut buffer) {}
        prop_assert!(buffer.len() <= bytes.len());
        let _ = decode_all(&bytes);
    }

    /// Frames survive the trip, even many back to back in one buffer.
    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(any_frame(), 0..8)) {
        let mut bytes = BytesMut::new();
        for frame in &frames {
            FrameCodec.encode(frame.clone(), &mut bytes).unwrap();
        }
        prop_assert_eq!(decode_all(&bytes).unwrap(), frames);
    }

    /// Fed one byte at a time (as a slow link would), the same frame comes out once.
    #[test]
    fn frames_split_anywhere_still_decode(frame in any_frame()) {
        let encoded = encode(frame.clone());
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in encoded.iter() {
            buffer.put_u8(*byte);
            if let Some(frame) = FrameCodec.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, vec![frame]);
    }

    /// A link that ends mid-frame is an error naming the leftover, never a lost frame
    /// passed off as a clean end.
    #[test]
    fn a_cut_frame_is_truncated(frame in any_frame(), cut in any::<prop::sample::Index>()) {
        let encoded = encode(frame);
        let keep = cut.index(encoded.len()); // 0..len: always at least one byte short
        prop_assume!(keep > 0);
        let error = decode_all(&encoded[..keep]).unwrap_err();
        prop_assert!(matches!(error, FrameError::Truncated(n) if n == keep), "{error}");
    }

    /// Any kind byte outside 1..=5 is refused as soon as the header is in.
    #[test]
    fn unknown_kinds_are_refused(kind in any::<u8>(), rest in any::<[u8; 8]>()) {
        prop_assume!(!(OPEN..=CLOSE).contains(&kind));
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&rest);
        let error = decode_all(&bytes).unwrap_err();
        prop_assert!(matches!(error, FrameError::UnknownKind(k) if k == kind), "{error}");
    }

    /// A header announcing too large a payload is refused before any payload arrives.
    #[test]
    fn oversize_lengths_are_refused(kind in OPEN..=CLOSE, length in (MAX_PAYLOAD as u32 + 1)..) {
        let mut header = BytesMut::new();
        header.put_u8(kind);
        header.put_u32(7);
        header.put_u32(length);
        let error = FrameCodec.decode(&mut header).unwrap_err();
        prop_assert!(matches!(error, FrameError::Oversize(n) if n == length as usize), "{error}");
    }
}

#[test]
fn an_http_request_is_not_a_frame() {
    let error = decode_all(b"GET / HTTP/1.1\r\n\r\n").unwrap_err();
    assert_eq!(error.to_string(), "unknown frame kind 0x47");
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let too_big = Frame::Data { session: 1, bytes: vec![0; MAX_PAYLOAD + 1].into() };
    assert!(matches!(
        FrameCodec.encode(too_big, &mut BytesMut::new()),
        Err(FrameError::Oversize(_))
    ));
    let mut close_with_payload = encode(Frame::Close { session: 1 });
    close_with_payload[8] = 1;
    close_with_payload.put_u8(0);
    assert!(matches!(decode_all(&close_with_payload), Err(FrameError::UnexpectedPayload("close"))));
}
