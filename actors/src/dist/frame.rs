//! Framing of a connection after the handshake: a 4-byte big-endian length,
//! then tag 112 (pass-through: no distribution header) and the control
//! message with its payload. A zero length is a tick.
//!
//! Encoding appends a whole frame to one buffer so the runner writes it in
//! one go; decoding works on a growing receive buffer and never blocks, so
//! the runner can read with a cancel-safe `read_buf` inside `select!`.

use erl_dist::message::{Message, SendError};

/// "No distribution header": every message we send or accept.
const PASS_THROUGH: u8 = 112;

/// A tick: a frame of length 0.
pub(crate) const TICK: [u8; 4] = [0; 4];

/// Appends `message` as one frame to `out`.
pub(crate) fn encode(message: Message, out: &mut Vec<u8>) -> Result<(), SendError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, PASS_THROUGH]);
    if let Err(e) = message.write_into(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = u32::try_from(out.len() - start - 4).map_err(|_| {
        out.truncate(start);
        SendError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message larger than 4 GiB",
        ))
    })?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// One received frame. Frames are handled one at a time, never stored in
/// bulk, so the size of the big variant does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Frame {
    Tick,
    Message(Message),
    /// A complete frame we could not use (unknown tag or operation); the
    /// stream stays in sync because frames are length-delimited.
    Skipped(String),
    /// A header announcing more than [`MAX_FRAME`] bytes: the connection
    /// must be dropped (buffering it would let a peer exhaust our memory).
    TooLarge(usize),
}

/// The largest frame deployex accepts from a node. Replies to our RPCs
/// (release_handler results, telemetry numbers) are a few KiB; a hot
/// upgrade's biggest answer is far below this.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Takes the next complete frame off the front of `buf`, if there is one.
pub(crate) fn decode(buf: &mut Vec<u8>) -> Option<Frame> {
    let header: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        buf.drain(..4);
        return Some(Frame::Tick);
    }
    if len > MAX_FRAME {
        return Some(Frame::TooLarge(len));
    }
    let body = buf.get(4..4 + len)?;
    let frame = match body.split_first() {
        // The decoder trusts length headers and nests without bound:
        // only bytes that pass the check reach it (see `term.rs`).
        Some((&PASS_THROUGH, mut rest)) => match super::term::check_external_terms(rest) {
            Err(e) => Frame::Skipped(format!("unsafe message: {e}")),
            Ok(()) => match Message::read_from(&mut rest) {
                Ok(message) => Frame::Message(message),
                Err(e) => Frame::Skipped(format!("undecodable message: {e}")),
            },
        },
        Some((tag, _)) => Frame::Skipped(format!("unsupported frame tag {tag}")),
        None => Frame::Skipped("empty frame".to_owned()),
    };
    buf.drain(..4 + len);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::{Atom, Pid, Term};

    fn sample() -> Message {
        Message::reg_send(
            Pid::new("a@b", 1, 0, 7),
            Atom::from("rex"),
            Term::from(Atom::from("hello")),
        )
    }

    #[test]
    fn frames_round_trip_and_wait_for_whole_frames() {
        let mut buf = Vec::new();
        encode(sample(), &mut buf).unwrap();
        buf.extend_from_slice(&TICK);
        encode(sample(), &mut buf).unwrap();
        let total = buf.len();

        // Byte by byte: nothing decodes until a frame is complete.
        let mut rx = Vec::new();
        let mut frames = Vec::new();
        for byte in buf {
            rx.push(byte);
            while let Some(frame) = decode(&mut rx) {
                frames.push(frame);
            }
        }
        assert!(rx.is_empty(), "{} of {total} bytes left", rx.len());
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[0], Frame::Message(m) if *m == sample()));
        assert!(matches!(frames[1], Frame::Tick));
        assert!(matches!(&frames[2], Frame::Message(m) if *m == sample()));
    }

    #[test]
    fn frame_length_counts_tag_and_message() {
        let mut buf = Vec::new();
        encode(sample(), &mut buf).unwrap();
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        assert_eq!(buf[4], PASS_THROUGH);
    }

    #[test]
    fn hostile_terms_are_skipped_not_decoded() {
        // Found by `make fuzz` (term_decode): a list header claiming 2^32-1
        // elements made the decoder pre-allocate ~200 GiB and abort; an
        // atom cache reference hit `unimplemented!()`.
        for body in [
            &[131, 108, 255, 255, 255, 255, 106][..],
            &[131, 104, 1, 82, 0][..],
        ] {
            let mut buf = (body.len() as u32 + 1).to_be_bytes().to_vec();
            buf.push(PASS_THROUGH);
            buf.extend_from_slice(body);
            encode(sample(), &mut buf).unwrap();
            assert!(
                matches!(decode(&mut buf), Some(Frame::Skipped(ref why)) if why.starts_with("unsafe")),
            );
            assert!(matches!(decode(&mut buf), Some(Frame::Message(_))));
        }
    }

    #[test]
    fn unknown_frames_are_skipped_without_losing_sync() {
        let mut buf = vec![0, 0, 0, 2, 99, 1];
        encode(sample(), &mut buf).unwrap();
        assert!(matches!(decode(&mut buf), Some(Frame::Skipped(_))));
        assert!(matches!(decode(&mut buf), Some(Frame::Message(_))));
        assert!(decode(&mut buf).is_none());
    }

    #[test]
    fn a_header_over_the_cap_is_refused_before_any_body_arrives() {
        let mut buf = u32::MAX.to_be_bytes().to_vec();
        buf.extend_from_slice(&[112, 131]);
        match decode(&mut buf) {
            Some(Frame::TooLarge(n)) => assert_eq!(n, u32::MAX as usize),
            other => panic!("{other:?}"),
        }
        let mut ok = ((MAX_FRAME) as u32).to_be_bytes().to_vec();
        ok.push(112);
        assert!(decode(&mut ok).is_none(), "at the cap: waits for the body");
    }
}
