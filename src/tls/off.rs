//! `TlsConn` without the `tls` feature: no value exists, so no connection
//! is ever a TLS one.

use std::net::TcpStream;
use std::sync::Arc;

use super::{Got, ReadError};
use crate::config::Config;
use crate::stats::TlsCounters;

/// Uninhabited: there are no TLS connections without the `tls` feature.
#[derive(Debug)]
pub(crate) enum TlsConn {}

#[allow(
    clippy::unused_self,
    reason = "the same signatures as with the feature"
)]
impl TlsConn {
    pub(crate) fn for_config(_config: &Config, _counters: &Arc<TlsCounters>) -> Option<TlsConn> {
        None
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        match *self {}
    }

    pub(crate) fn read(
        &mut self,
        _stream: &TcpStream,
        _buf: &mut [u8],
        _wait: bool,
        _early: &mut Vec<u8>,
    ) -> Result<(Got, bool), ReadError> {
        match *self {}
    }

    pub(crate) fn buffer(&mut self, _plaintext: &[u8]) -> usize {
        match *self {}
    }

    pub(crate) fn wants_write(&self) -> bool {
        match *self {}
    }

    pub(crate) fn write_tls_now(&mut self, _stream: &TcpStream) -> std::io::Result<usize> {
        match *self {}
    }

    pub(crate) fn end(&mut self, _stream: &TcpStream, _reply: &[u8]) {
        match *self {}
    }
}
