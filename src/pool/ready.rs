//! What the pollers' ready list carries: connections to serve (reported by
//! the shared poller, or roused by a handle) and requests to the pollers
//! waiting on it.

use mio::Token;

use crate::park::{Table, event_token};
use crate::session::Session;

/// An entry of the ready list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The shared poller reported the connection: readable, writable, or
    /// (`hup`) at its end. `shared`: part of a batch put on a list with no
    /// rouse on it, for every poller to take as it comes (counted in
    /// `PollerHandle::events_listed`); else behind rouses, in its turn.
    Event {
        token: Token,
        hup: bool,
        shared: bool,
    },
    /// A handle sent bytes to the connection, or closed it: its turn
    /// writes them. Nothing was reported readable, so the turn reads only
    /// if an event for it comes meanwhile.
    Roused(Token),
    /// A poller waiting on the list should try to search (events wait in
    /// the epoll instance and no one searches).
    Search,
    /// The poller that takes it leaves (the stop).
    Leave,
}

impl Ready {
    /// An event's data, as the shared poller gives it (see `epoll::HUP`).
    pub(crate) fn event(data: u64) -> Self {
        let (token, hup) = event_token(data);
        Ready::Event {
            token,
            hup,
            shared: false,
        }
    }

    /// An event of a batch shared by every poller (see [`Ready::Event`]).
    pub(crate) fn shared_event(data: u64) -> Self {
        let (token, hup) = event_token(data);
        Ready::Event {
            token,
            hup,
            shared: true,
        }
    }

    /// The connection it names, if any.
    pub(crate) fn token(self) -> Option<Token> {
        match self {
            Ready::Event { token, .. } | Ready::Roused(token) => Some(token),
            Ready::Search | Ready::Leave => None,
        }
    }

    /// The connection it names, taken from the parking `table` for a turn
    /// (see [`Table::take`]), marked to be read at once if it was reported.
    pub(crate) fn take(self, table: &Table) -> Option<Box<Session>> {
        self.take_with(|token, hup| table.take(token, hup))
    }

    /// The connection it names, taken out of the parking `table` for good,
    /// to go to the queue (see [`Table::take_out`]).
    pub(crate) fn take_out(self, table: &Table) -> Option<Box<Session>> {
        self.take_with(|token, hup| table.take_out(token, hup))
    }

    fn take_with(
        self,
        take: impl FnOnce(Token, bool) -> Option<Box<Session>>,
    ) -> Option<Box<Session>> {
        let (token, hup, reported) = match self {
            Ready::Event { token, hup, .. } => (token, hup, true),
            Ready::Roused(token) => (token, false, false),
            Ready::Search | Ready::Leave => return None,
        };
        let mut session = take(token, hup)?;
        session.ready = reported;
        Some(session)
    }
}
