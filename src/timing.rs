//! The clocks of one connection's deadlines and defences: when it last
//! began to wait, whether a byte came, the rate of a frame under way, the
//! progress of its output, its TLS handshake and PROXY header.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::stats::CloseReason;

/// The clocks of one connection's deadlines: the read deadline, the
/// first-byte deadline, the lifetime, and the minimum rate of a frame.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// When the pool took the connection.
    opened: Instant,
    /// When the connection last began to wait for bytes: the read deadline
    /// counts from here.
    idle_since: Instant,
    /// Whether any byte has arrived.
    got_bytes: bool,
    /// While bytes wait for the socket: when they last moved (or began to
    /// wait). The write deadline counts from here; the read deadline and
    /// the minimum rate wait (the client is reading, not sending).
    writing: Option<Instant>,
    /// A TLS connection whose handshake has not completed: the handshake
    /// deadline applies.
    handshaking: bool,
    /// From a trusted balancer, its PROXY header not read yet: every
    /// deadline that fires is the header's.
    header_pending: bool,
    /// By when the header must have come, as configured when the pool took
    /// the connection (`None`: too far to represent).
    header_by: Option<Instant>,
    /// While a frame is incomplete (the handler kept bytes): the current
    /// rate window.
    frame: Option<Window>,
    /// The next [`deadline`](Self::deadline) as last worked out, and the
    /// config generation it was worked out for: valid until a method
    /// changes what it depends on (each such method clears it). The park
    /// that follows a turn's last check, and the first check of the turn
    /// after the park, take it instead of working it out again (some 100
    /// instructions each, `benches/callgrind.sh`).
    known: Option<Known>,
}

/// A [`Timing::deadline`] worked out for one config generation.
#[derive(Debug, Clone, Copy)]
struct Known {
    next: Option<(Instant, CloseReason)>,
    generation: u64,
}

/// `next`, a deadline, judged at `now`: the defence that fired if it has
/// passed, else itself.
fn passed(
    next: Option<(Instant, CloseReason)>,
    now: Instant,
) -> Result<Option<(Instant, CloseReason)>, CloseReason> {
    match next {
        Some((at, reason)) if at <= now => Err(reason),
        next => Ok(next),
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    bytes: u64,
}

impl Timing {
    pub(crate) fn new(opened: Instant) -> Self {
        Timing {
            opened,
            idle_since: opened,
            got_bytes: false,
            writing: None,
            handshaking: false,
            header_pending: false,
            header_by: None,
            frame: None,
            known: None,
        }
    }

    /// Whether the TLS handshake is under way.
    pub(crate) fn handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether the PROXY header is still to come.
    pub(crate) fn header_pending(&self) -> bool {
        self.header_pending
    }

    /// The TLS handshake is under way (`true`), or done.
    pub(crate) fn set_handshaking(&mut self, handshaking: bool) {
        if self.handshaking != handshaking {
            self.handshaking = handshaking;
            self.known = None;
        }
    }

    /// The PROXY header came.
    pub(crate) fn header_read(&mut self) {
        self.header_pending = false;
        self.known = None;
    }

    /// The [`deadline`](Self::deadline) kept for `generation`, if any
    /// (checked against a fresh computation in debug builds, so that the
    /// whole test suite checks that nothing changed it unseen).
    fn known(&self, config: &Config, generation: u64) -> Option<Option<(Instant, CloseReason)>> {
        match self.known {
            Some(known) if known.generation == generation => {
                debug_assert_eq!(known.next, self.deadline(config), "a stale deadline");
                Some(known.next)
            }
            _ => None,
        }
    }

    /// The next [`deadline`](Self::deadline) under `config`, of
    /// `generation`: the one kept, or worked out now and kept.
    pub(crate) fn next_deadline(
        &mut self,
        config: &Config,
        generation: u64,
    ) -> Option<(Instant, CloseReason)> {
        if let Some(next) = self.known(config, generation) {
            return next;
        }
        let next = self.deadline(config);
        self.known = Some(Known { next, generation });
        next
    }

    /// A PROXY header must come within `deadline` of the opening.
    pub(crate) fn expect_header(&mut self, deadline: Duration) {
        self.known = None;
        self.header_pending = true;
        self.header_by = self.opened.checked_add(deadline);
    }

    /// The earliest instant at which a defence closes the connection if it
    /// sends nothing more, and which. `None`: nothing would.
    ///
    /// Computed on every pass of a turn (a few times a request): the
    /// defences are weighed one after another, none built into a list
    /// (an array of them cost some 110 instructions a call, most of it
    /// with every defence off; callgrind, `benches/callgrind.sh`).
    pub(crate) fn deadline(&self, config: &Config) -> Option<(Instant, CloseReason)> {
        let after = |from: Instant, d: Option<Duration>| d.and_then(|d| from.checked_add(d));
        let mut earliest: Option<(Instant, CloseReason)> = None;
        // Of equal instants, the first weighed names the reason.
        let mut weigh = |at: Option<Instant>, reason: CloseReason| {
            if let Some(at) = at {
                if earliest.is_none_or(|(e, _)| at < e) {
                    earliest = Some((at, reason));
                }
            }
        };
        if self.writing.is_none() {
            weigh(
                after(self.idle_since, config.read_deadline),
                CloseReason::ReadDeadline,
            );
        }
        weigh(
            after(self.opened, config.max_connection_lifetime),
            CloseReason::Lifetime,
        );
        if !self.got_bytes {
            weigh(
                after(self.opened, config.first_byte_deadline),
                CloseReason::FirstByteDeadline,
            );
        }
        if let (Some(w), Some(rate), None) = (self.frame, config.min_read_rate, self.writing) {
            // The current window fails at its end unless it brings enough;
            // one that already has enough is followed by an empty one.
            let end = w.start.checked_add(rate.window);
            let at = if w.bytes >= rate.bytes_per_window() {
                end.and_then(|e| e.checked_add(rate.window))
            } else {
                end
            };
            weigh(at, CloseReason::SlowRead);
        }
        if self.handshaking {
            weigh(
                after(self.opened, config.handshake_deadline()),
                CloseReason::Handshake,
            );
        }
        if self.header_pending {
            weigh(self.header_by, CloseReason::ProxyHeader);
        }
        if let Some(at) = self.writing {
            weigh(after(at, config.write_deadline), CloseReason::WriteDeadline);
        }
        let earliest = earliest?;
        // Whatever deadline ends a PROXY header or a TLS handshake, it
        // timed out.
        Some(if self.header_pending {
            (earliest.0, CloseReason::ProxyHeader)
        } else if self.handshaking {
            (earliest.0, CloseReason::Handshake)
        } else {
            earliest
        })
    }

    /// Judges the connection at `now`: the defence it broke, if any. Rate
    /// windows that ended are judged and rolled over.
    pub(crate) fn check(&mut self, now: Instant, config: &Config) -> Result<(), CloseReason> {
        self.roll(now, config)?;
        passed(self.deadline(config), now).map(|_| ())
    }

    /// [`check`](Self::check) under `config`, of `generation`, and the
    /// [`next_deadline`](Self::next_deadline) when it passes (after
    /// `now`).
    pub(crate) fn check_deadline(
        &mut self,
        now: Instant,
        config: &Config,
        generation: u64,
    ) -> Result<Option<(Instant, CloseReason)>, CloseReason> {
        self.roll(now, config)?;
        passed(self.next_deadline(config, generation), now)
    }

    /// Judges the rate windows that ended by `now` and starts the current
    /// one.
    fn roll(&mut self, now: Instant, config: &Config) -> Result<(), CloseReason> {
        let (Some(w), Some(rate), None) = (&mut self.frame, config.min_read_rate, self.writing)
        else {
            return Ok(());
        };
        let need = rate.bytes_per_window();
        while let Some(end) = w.start.checked_add(rate.window) {
            if now < end {
                break;
            }
            if w.bytes < need {
                return Err(CloseReason::SlowRead);
            }
            *w = Window {
                start: end,
                bytes: 0,
            };
            self.known = None;
        }
        Ok(())
    }

    /// `n` bytes arrived at `now()`; they count in the window they arrived
    /// in, after the windows that ended before it are judged. The clock is
    /// read only while a rate applies.
    pub(crate) fn on_bytes(
        &mut self,
        n: usize,
        now: impl FnOnce() -> Instant,
        config: &Config,
    ) -> Result<(), CloseReason> {
        self.known = None;
        self.got_bytes = true;
        if self.frame.is_some() && config.min_read_rate.is_some() {
            self.roll(now(), config)?;
        }
        if let Some(w) = &mut self.frame {
            w.bytes = w.bytes.saturating_add(n as u64);
        }
        Ok(())
    }

    /// Bytes wait for the socket (`pending`) at `now`; `progress`: some
    /// moved since the last call. When none wait any more, the read
    /// deadline and a frame's rate window start again from `now`.
    pub(crate) fn output(&mut self, pending: bool, progress: bool, now: Instant) {
        match (pending, self.writing) {
            (true, None) => {
                self.writing = Some(now);
                self.known = None;
            }
            (true, Some(_)) if progress => {
                self.writing = Some(now);
                self.known = None;
            }
            (false, Some(_)) => {
                self.known = None;
                self.writing = None;
                self.idle_since = now;
                if let Some(w) = &mut self.frame {
                    *w = Window {
                        start: now,
                        bytes: 0,
                    };
                }
            }
            _ => {}
        }
    }

    /// The handler returned at `now` keeping `kept` bytes: a frame is
    /// incomplete while it keeps any. The connection waits from `now`.
    pub(crate) fn after_handler(&mut self, kept: usize, now: Instant) {
        self.known = None;
        self.idle_since = now;
        if kept == 0 {
            self.frame = None;
        } else if self.frame.is_none() {
            self.frame = Some(Window {
                start: now,
                bytes: 0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MinReadRate;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> Config {
        Config {
            read_deadline: None,
            ..Config::default()
        }
    }

    #[test]
    fn no_defence_means_no_deadline() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        assert_eq!(timing.deadline(&config()), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config()), Ok(()));
    }

    #[test]
    fn a_kept_deadline_follows_every_change() {
        let config = Config {
            read_deadline: Some(100 * MS),
            write_deadline: Some(30 * MS),
            ..config()
        };
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let read = CloseReason::ReadDeadline;
        assert_eq!(
            timing.check_deadline(t0, &config, 1),
            Ok(Some((t0 + 100 * MS, read)))
        );
        // Kept: the same answer, and judged against `now`.
        assert_eq!(
            timing.next_deadline(&config, 1),
            Some((t0 + 100 * MS, read))
        );
        assert_eq!(timing.check_deadline(t0 + 100 * MS, &config, 1), Err(read));
        timing.after_handler(0, t0 + 10 * MS);
        assert_eq!(
            timing.next_deadline(&config, 1),
            Some((t0 + 110 * MS, read))
        );
        timing.output(true, false, t0 + 20 * MS);
        let write = CloseReason::WriteDeadline;
        assert_eq!(
            timing.next_deadline(&config, 1),
            Some((t0 + 50 * MS, write))
        );
        timing.output(false, true, t0 + 40 * MS);
        assert_eq!(
            timing.next_deadline(&config, 1),
            Some((t0 + 140 * MS, read))
        );
        // Another generation's config is weighed afresh.
        let shorter = Config {
            read_deadline: Some(60 * MS),
            ..config.clone()
        };
        assert_eq!(
            timing.next_deadline(&shorter, 2),
            Some((t0 + 100 * MS, read))
        );
        timing.set_handshaking(true);
        assert_eq!(
            timing.next_deadline(&shorter, 2),
            Some((t0 + 100 * MS, CloseReason::Handshake))
        );
        timing.set_handshaking(false);
        timing.expect_header(5 * MS);
        assert_eq!(
            timing.next_deadline(&shorter, 2),
            Some((t0 + 5 * MS, CloseReason::ProxyHeader))
        );
        timing.header_read();
        assert_eq!(
            timing.next_deadline(&shorter, 2),
            Some((t0 + 100 * MS, read))
        );
    }

    #[test]
    fn the_earliest_defence_wins() {
        let t0 = Instant::now();
        let timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(300 * MS),
            first_byte_deadline: Some(100 * MS),
            max_connection_lifetime: Some(200 * MS),
            ..config()
        };
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 100 * MS, CloseReason::FirstByteDeadline))
        );
    }

    #[test]
    fn of_equal_deadlines_the_first_in_order_names_the_reason() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(100 * MS),
            write_deadline: Some(100 * MS),
            max_connection_lifetime: Some(100 * MS),
            ..config()
        };
        // Reading: the read deadline before the lifetime.
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 100 * MS, CloseReason::ReadDeadline))
        );
        // Writing since `t0`: the lifetime before the write deadline.
        timing.output(true, false, t0);
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 100 * MS, CloseReason::Lifetime))
        );
        assert_eq!(
            timing.check_deadline(t0 + 99 * MS, &config, 0),
            Ok(Some((t0 + 100 * MS, CloseReason::Lifetime)))
        );
        assert_eq!(
            timing.check_deadline(t0 + 100 * MS, &config, 0),
            Err(CloseReason::Lifetime)
        );
    }

    #[test]
    fn first_byte_deadline_stops_counting_at_the_first_byte() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            first_byte_deadline: Some(100 * MS),
            ..config()
        };
        assert_eq!(
            timing.check(t0 + 100 * MS, &config),
            Err(CloseReason::FirstByteDeadline)
        );
        timing.on_bytes(1, || t0 + 10 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 10 * MS);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));
    }

    #[test]
    fn read_deadline_counts_from_the_last_handler_return() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(100 * MS),
            ..config()
        };
        timing.on_bytes(5, || t0 + 80 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 80 * MS);
        assert_eq!(timing.check(t0 + 150 * MS, &config), Ok(()));
        assert_eq!(
            timing.deadline(&config),
            Some((t0 + 180 * MS, CloseReason::ReadDeadline))
        );
        assert_eq!(
            timing.check(t0 + 180 * MS, &config),
            Err(CloseReason::ReadDeadline)
        );
    }

    #[test]
    fn lifetime_holds_however_busy() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            max_connection_lifetime: Some(100 * MS),
            ..config()
        };
        for i in 1..10 {
            timing.on_bytes(1000, || t0 + i * MS, &config).unwrap();
            timing.after_handler(0, t0 + i * MS);
        }
        assert_eq!(
            timing.check(t0 + 100 * MS, &config),
            Err(CloseReason::Lifetime)
        );
    }

    #[test]
    fn min_rate_applies_only_while_a_frame_is_incomplete() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 100,
                window: 100 * MS, // 10 bytes a window
            }),
            ..config()
        };
        // Complete frames and silence: no rate applies.
        timing.on_bytes(3, || t0, &config).unwrap();
        timing.after_handler(0, t0);
        assert_eq!(timing.deadline(&config), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));

        // A frame begins at 1 s: its first window ends at 1.1 s.
        let start = t0 + 1000 * MS;
        timing.after_handler(3, start);
        assert_eq!(
            timing.deadline(&config),
            Some((start + 100 * MS, CloseReason::SlowRead))
        );
        // 12 bytes in the first window: judged fine, the next one begins.
        timing.on_bytes(12, || start + 50 * MS, &config).unwrap();
        timing.after_handler(15, start + 50 * MS);
        assert_eq!(
            timing.deadline(&config),
            Some((start + 200 * MS, CloseReason::SlowRead))
        );
        assert_eq!(timing.check(start + 150 * MS, &config), Ok(()));
        // 1 byte in the second window: too slow.
        timing.on_bytes(1, || start + 160 * MS, &config).unwrap();
        timing.after_handler(16, start + 160 * MS);
        assert_eq!(
            timing.check(start + 200 * MS, &config),
            Err(CloseReason::SlowRead)
        );
    }

    #[test]
    fn a_completed_frame_ends_the_rate_window() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1000,
                window: 100 * MS,
            }),
            ..config()
        };
        timing.after_handler(4, t0);
        timing.on_bytes(2, || t0 + 10 * MS, &config).unwrap();
        timing.after_handler(0, t0 + 10 * MS);
        assert_eq!(timing.check(t0 + 500 * MS, &config), Ok(()));
    }

    #[test]
    fn bytes_count_in_the_window_they_arrive_in() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1,
                window: 10_000 * MS, // 10 bytes a window
            }),
            ..config()
        };
        timing.after_handler(1, t0);
        timing.on_bytes(10, || t0 + 1000 * MS, &config).unwrap();
        timing.after_handler(11, t0 + 1000 * MS);
        // Read at 15 s: the first window was judged fine, these bytes are
        // the second window's.
        timing.on_bytes(10, || t0 + 15_000 * MS, &config).unwrap();
        timing.after_handler(21, t0 + 15_000 * MS);
        assert_eq!(timing.check(t0 + 20_000 * MS, &config), Ok(()));
        // And a window that ended short is judged when bytes come late.
        assert_eq!(
            timing.on_bytes(1, || t0 + 31_000 * MS, &config),
            Err(CloseReason::SlowRead)
        );
    }

    #[test]
    fn durations_too_large_for_the_clock_never_expire() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        let config = Config {
            read_deadline: Some(Duration::MAX),
            max_connection_lifetime: Some(Duration::MAX),
            min_read_rate: Some(MinReadRate {
                bytes_per_sec: 1,
                window: Duration::MAX,
            }),
            ..config()
        };
        timing.after_handler(1, t0);
        assert_eq!(timing.deadline(&config), None);
        assert_eq!(timing.check(t0 + 1000 * MS, &config), Ok(()));
    }
}
