//! Parking: handing a connection a worker served back to the shared
//! poller — into the entry it was taken from (no system call), or under a
//! new token (registered or re-armed).

use std::mem;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::time::Instant;

use mio::Token;

use super::{PollerHandle, Shared, wake};
use crate::config::Config;
use crate::epoll::{Arm, Interest};
use crate::handle::{Link, Rouse, Wake};
use crate::outbound;
use crate::park::{Parked, Repark};
use crate::session::Session;
use crate::stats::{ByteCounters, CloseReason};

/// Whether every park re-arms the connection's registration. On Windows,
/// mio reports a registration's readiness once, until it is registered
/// again (its own reads and writes do so after each `WouldBlock`; ours go
/// through the `TcpStream`): a re-arm reports bytes that came since at
/// once, and the next ones when they come. Elsewhere the registration is
/// edge-triggered, and parking into the same entry takes no system call.
const REARM_EACH_PARK: bool = cfg!(windows);

/// A connection just parked: its token, the timer set for it, and how its
/// registration must be armed, if it must.
struct Placed {
    token: Token,
    timer: Option<Instant>,
    arm: Option<Arm>,
}

/// The entry a poller took a connection from, to park it back into.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    pub(crate) token: Token,
    /// Whether it may be served again at once if an event came meanwhile
    /// (see [`Shared::park`]).
    pub(crate) again: bool,
}

/// What a parking connection needs of the poller beyond its entry.
struct Needs {
    /// Writability too, if it is armed: bytes wait for its socket, or its
    /// registration has it already (kept: it costs nothing while no write
    /// finds the socket full).
    interest: Interest,
    /// Whether its registration reported writability before.
    was: bool,
    /// A re-arm whatever the table says: its registration lacks the
    /// writability it now needs.
    rearm: bool,
    /// Its link, whose sends must wake it under its token from now on, and
    /// the bytes it holds.
    link: Option<(Arc<Link>, usize)>,
}

impl Shared {
    /// Parks `session` in the shared poller until its client
    /// sends again or a deadline of `config` passes. `taken`: the token a
    /// poller took it under, whose entry it goes back to, and whether it
    /// may be served again at once if an event came meanwhile — then it is
    /// given back as `Ok(Some(_))`. Gives it back, with the reason to close
    /// it, if it cannot be parked: the manager is stopping, or the poller
    /// refused it. `poller` is the handle the caller holds (a worker keeps
    /// one for its life, so that parking takes no extra lock).
    pub(crate) fn park(
        &self,
        poller: Option<&Arc<PollerHandle>>,
        session: Box<Session>,
        taken: Option<Taken>,
        config: &Config,
        (generation, run): (u64, u64),
        counters: &ByteCounters,
    ) -> Result<Option<Box<Session>>, (Box<Session>, CloseReason)> {
        let Some(poller) = poller else {
            if let Some(taken) = taken {
                self.parked.release(taken.token);
            }
            return Err((session, CloseReason::Error));
        };
        let mut session = session;
        let deadline = session.timing.next_deadline(config, generation);
        let needs = Needs::of(&mut session);
        let mut parked = match taken {
            Some(taken) => self.parked.shard_of(taken.token),
            None => self.parked.shard_for(fd_key(&session.stream)),
        };
        // `stop` sets `stopping`, then drains each shard under its lock: a
        // connection parked after that sees the flag. A worker abandoned by
        // an earlier stop (`run`) must not park into this run.
        let refuse = if self.stopping.load(SeqCst) || self.run.load(SeqCst) != run {
            Some(CloseReason::Stop)
        } else if self.parked.dead.load(Relaxed) {
            Some(CloseReason::Error)
        } else {
            None
        };
        if let Some(reason) = refuse {
            if let Some(taken) = taken {
                parked.release(taken.token);
            }
            return Err((session, reason));
        }
        let Placed { token, timer, arm } = match taken {
            Some(Taken { token, again }) => match parked.repark(token, session, deadline, again) {
                Repark::Parked { timer, rearm } => Placed {
                    token,
                    timer,
                    arm: (rearm || needs.rearm || REARM_EACH_PARK).then_some(Arm::Rearm),
                },
                Repark::Again(mut session) => {
                    // Not armed after all.
                    session.armed_out = needs.was;
                    return Ok(Some(session));
                }
                // The same shard (a token names its descriptor's shard),
                // under the lock held since the checks above.
                Repark::Gone(gone) => Self::insert_parked(&mut parked, gone, deadline)?,
            },
            None => Self::insert_parked(&mut parked, session, deadline)?,
        };
        if let Some((link, held)) = &needs.link {
            // Under the shard's lock, before any worker can take it: its
            // handles' sends wake it under this token from now on (at once
            // if one came while it was served).
            let pollers: Weak<dyn Rouse> = Arc::downgrade(poller) as Weak<PollerHandle>;
            link.set_wake(
                Wake::Poller {
                    pollers,
                    token: token.0 as u64,
                },
                *held,
            );
        }
        // Under the lock, re-arms included (they are rare: a new
        // connection, one that left its entry, one re-armed after an event
        // or with writability): another worker may take the connection the
        // moment the lock is released, and park and arm it itself, and two
        // registrations crossing could leave the older one's interest (no
        // writability while bytes wait) in force. A new token: no event can
        // name it before this call; one that named an earlier token finds
        // nothing and is ignored. An event for the same token (a re-arm
        // after an event came) takes the connection as parked, and a
        // spurious one costs a read that finds nothing.
        if let Some(arm) = arm {
            let armed = match parked.stream(token) {
                Some(stream) => poller
                    .epoll
                    .arm(&stream, token.0 as u64, arm, needs.interest),
                None => Ok(()),
            };
            if let Err(e) = armed {
                log::warn!("cannot park a connection, closing it: {e}");
                return match parked.take_out(token, false) {
                    Some(session) => Err((session, CloseReason::Error)),
                    None => Ok(None),
                };
            }
        }
        let mut wake = false;
        if generation != parked.planned {
            // The config changed since `deadline` was computed, maybe after
            // the manager thread re-planned: have it re-plan again.
            parked.replan = true;
            wake = true;
        }
        drop(parked);
        wake |= timer.is_some_and(|at| self.parked.deadline_parked(at));
        counters.parks.fetch_add(1, Relaxed);
        if wake {
            self::wake(&poller.waker);
        }
        Ok(None)
    }

    /// Parks `session` under a new token in `parked`; it must be armed
    /// (re-armed if it was registered before).
    fn insert_parked(
        parked: &mut Parked,
        mut session: Box<Session>,
        deadline: Option<(Instant, CloseReason)>,
    ) -> Result<Placed, (Box<Session>, CloseReason)> {
        let Some(token) = parked.next_token() else {
            return Err((session, CloseReason::Error));
        };
        let registered = mem::replace(&mut session.registered, true);
        // Armed (or re-armed) below, whatever a blocking read disarmed.
        session.disarmed = false;
        let timer = parked.insert(session, deadline);
        let arm = if registered { Arm::Rearm } else { Arm::Add };
        Ok(Placed {
            token,
            timer,
            arm: Some(arm),
        })
    }
}

impl Needs {
    /// What `session` needs, noted in it as armed.
    fn of(session: &mut Session) -> Needs {
        let pending = outbound::pending(&session.out, session.tls.as_ref());
        let was = session.armed_out;
        let rearm = pending && !was && session.registered;
        // A new connection that can be opened now (no PROXY header, no TLS
        // handshake to wait for): writability reports it at once, and a
        // poller runs `Handler::open` — the server may speak first.
        let fresh = !session.registered
            && session.state.is_none()
            && !session.timing.header_pending()
            && !session.timing.handshaking();
        // Kept where it costs nothing (edge-triggered: reported once); where
        // each park re-arms, a socket with room would be reported at every
        // park.
        let out = pending || (was && !REARM_EACH_PARK) || fresh;
        // As it will be once armed (every path below that does not arm
        // leaves it as it was).
        session.armed_out = out;
        Needs {
            interest: if out {
                Interest::ReadWrite
            } else {
                Interest::Read
            },
            was,
            rearm,
            link: session
                .link
                .get()
                .map(|link| (Arc::clone(link), session.out.len())),
        }
    }
}

/// Which shard of the parked table a connection uses: its descriptor, so
/// that connections spread evenly and a connection keeps its shard.
///
/// Under the model checker, always the first shard: descriptor numbers vary
/// from one execution to the next, and a model must take the same locks in
/// every execution (the shard changes no decision: a token names its own).
fn fd_key(stream: &std::net::TcpStream) -> usize {
    if cfg!(all(test, loom)) {
        return 0;
    }
    crate::stream::key(stream)
}
