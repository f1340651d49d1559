//! What a connection has read and not yet given up: the bytes the handler
//! kept ([`Conn::keep`](crate::Conn::keep)), at the front of the worker's
//! buffer — or, for a frame larger than that buffer, in a buffer of the
//! connection's own (`Session::frame`), grown as bytes arrive, up to
//! `max_frame_bytes`. [`Conn::need`](crate::Conn::need) says how many new
//! bytes must come before the handler is called again.

use crate::session::Session;
use crate::stats::CloseReason;

/// Where the kept bytes are during a turn.
pub(super) struct Input {
    /// Bytes kept at the front of the worker's buffer (`0` while gathering
    /// a large frame).
    kept: usize,
    /// Gathering a large frame in `Session::frame`.
    large: bool,
}

impl Input {
    /// The bytes the session kept while it waited, moved into the
    /// worker's buffer if they fit.
    pub(super) fn restore(session: &mut Session, buf: &mut [u8]) -> Input {
        let mut input = Input {
            kept: 0,
            large: !session.frame.is_empty(),
        };
        let kept = std::mem::take(&mut session.kept);
        if input.large || kept.len() >= buf.len() {
            // A large frame (or kept bytes a smaller buffer no longer
            // holds): gathered in the session.
            let mut frame = std::mem::take(&mut session.frame);
            frame.extend_from_slice(&kept);
            session.frame = frame;
            input.large = true;
        } else {
            buf[..kept.len()].copy_from_slice(&kept);
            input.kept = kept.len();
        }
        input
    }

    /// The bytes kept, wherever they are.
    pub(super) fn len(&self, session: &Session) -> usize {
        if self.large {
            session.frame.len()
        } else {
            self.kept
        }
    }

    /// Moves to a large frame if the kept bytes and the `want`ed ones do
    /// not fit the worker's buffer (or already fill it).
    ///
    /// # Errors
    ///
    /// `Overflow` if the buffer shrank (a new `buffer_size`) below the kept
    /// bytes: they are lost.
    pub(super) fn fit(
        &mut self,
        session: &mut Session,
        buf: &[u8],
        want: usize,
    ) -> Result<(), CloseReason> {
        if self.kept > buf.len() {
            return Err(CloseReason::Overflow);
        }
        if !self.large && self.kept.saturating_add(want.max(1)) > buf.len() {
            session.frame = buf[..self.kept].to_vec();
            self.kept = 0;
            self.large = true;
        }
        Ok(())
    }

    /// The kept bytes in the worker's buffer.
    pub(super) fn in_buffer<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[..self.kept]
    }

    /// Where the next read goes: behind the kept bytes, or (gathering) the
    /// whole buffer, copied into the frame after.
    pub(super) fn space<'a>(&self, buf: &'a mut [u8]) -> &'a mut [u8] {
        &mut buf[self.kept..]
    }

    /// `n` bytes were read into [`space`](Self::space): kept, until the
    /// handler is called. A large frame past `max_frame` ends the
    /// connection.
    pub(super) fn arrived(
        &mut self,
        session: &mut Session,
        buf: &[u8],
        n: usize,
        max_frame: usize,
    ) -> Result<(), CloseReason> {
        if self.large {
            if session.frame.len().saturating_add(n) > max_frame.max(buf.len()) {
                return Err(CloseReason::Overflow);
            }
            session.frame.extend_from_slice(&buf[..n]);
        } else {
            self.kept += n;
        }
        Ok(())
    }

    /// The bytes for the handler, taken out of the session while it runs
    /// (a large frame; the worker's buffer's are read in place).
    pub(super) fn take(&self, session: &mut Session) -> Option<Vec<u8>> {
        self.large.then(|| std::mem::take(&mut session.frame))
    }

    /// The handler kept the last `kept` of the bytes it was given (`frame`,
    /// or the worker's buffer) and wants `want` more: they go to the front
    /// of the worker's buffer, or stay a large frame.
    pub(super) fn called(
        &mut self,
        session: &mut Session,
        buf: &mut [u8],
        frame: Option<Vec<u8>>,
        kept: usize,
        want: usize,
    ) {
        match frame {
            Some(mut frame) => {
                let len = frame.len();
                if kept.saturating_add(want.max(1)) <= buf.len() {
                    buf[..kept].copy_from_slice(&frame[len - kept..]);
                    self.kept = kept;
                    self.large = false;
                } else {
                    frame.drain(..len - kept);
                    session.frame = frame;
                }
            }
            None => {
                let len = self.kept;
                buf.copy_within(len - kept..len, 0);
                self.kept = kept;
                // Fits: `kept` is within the buffer.
                let _ = self.fit(session, buf, want);
            }
        }
    }

    /// The connection parks: its kept bytes go into the session (a large
    /// frame is there already).
    pub(super) fn park(&self, session: &mut Session, buf: &[u8]) {
        if !self.large {
            session.kept = buf[..self.kept].to_vec();
        }
    }
}
