//! A line-based chat room server: the whole model of connections you can
//! talk to, in one file.
//!
//! - The server speaks first: a greeting when a client connects, before it
//!   says anything (`Handler::open`).
//! - `/nick NAME`, `/join ROOM` (everyone starts in `lobby`), `/who`,
//!   `/quit`; any other line goes to every other client in the room,
//!   through their `Handle`s, from the worker that read it.
//! - A client that does not keep up: its bytes wait in its connection (the
//!   worker that sends never waits); once more than `--max-outbound-bytes`
//!   wait, a message for it is refused (`SendError::Full`), and this server's
//!   policy is to disconnect it, telling the room. `write_deadline` closes a
//!   client that reads nothing at all.
//!
//! ```sh
//! cargo run --release --example chat               # listens on 127.0.0.1:7100
//! nc 127.0.0.1 7100                                 # in two or more terminals
//! ```
//!
//! With `--features tls` and `--tls-cert`/`--tls-key`, clients use
//! `openssl s_client -connect 127.0.0.1:7100 -quiet`.

#[path = "common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use clap::Parser;
use pool_manager::{CloseReason, Conn, Handle, Handler, Manager, SendError};
use serve::PoolArgs;

/// A chat room server on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    addr: String,
    /// Bytes that may wait for one client before it is disconnected as too
    /// slow.
    #[arg(long, default_value_t = 256 << 10)]
    max_outbound_bytes: usize,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Idle clients are closed after an hour unless `--read-deadline-ms` says
/// otherwise.
const READ_DEADLINE_MS: u64 = 3_600_000;
/// The longest line (and nick, and room name) taken.
const MAX_LINE: usize = 4096;

/// One client, as the rooms see it.
struct Member {
    nick: String,
    handle: Handle,
}

/// Every room: its members by connection id.
#[derive(Default)]
struct Chat {
    rooms: Mutex<BTreeMap<String, BTreeMap<u64, Member>>>,
    guests: AtomicU64,
}

/// A connection's state.
struct Client {
    id: u64,
    nick: String,
    room: String,
}

impl Chat {
    /// Sends `line` to everyone in `room` but `except`; members that cannot
    /// keep up are disconnected (and the room told, once).
    fn broadcast(&self, room: &str, except: Option<u64>, line: &str) {
        let mut too_slow = Vec::new();
        {
            let rooms = self.rooms.lock().unwrap();
            let Some(members) = rooms.get(room) else {
                return;
            };
            for (&id, member) in members {
                if Some(id) == except {
                    continue;
                }
                match member.handle.send(line.as_bytes()) {
                    Ok(()) | Err(SendError::Closed(_)) => {}
                    Err(_) => too_slow.push((id, member.nick.clone())),
                }
            }
        }
        for (id, nick) in too_slow {
            if let Some(member) = self.leave(room, id) {
                // Our policy: a client that does not keep up is dropped.
                let _ = member.handle.send(b"* you are too slow: disconnected\n");
                member.handle.close();
                self.broadcast(room, None, &format!("* {nick} was too slow and left\n"));
            }
        }
    }

    fn join(&self, room: &str, id: u64, nick: &str, handle: Handle) {
        let mut rooms = self.rooms.lock().unwrap();
        let members = rooms.entry(room.to_string()).or_default();
        members.insert(
            id,
            Member {
                nick: nick.to_string(),
                handle,
            },
        );
    }

    fn leave(&self, room: &str, id: u64) -> Option<Member> {
        let mut rooms = self.rooms.lock().unwrap();
        let members = rooms.get_mut(room)?;
        let member = members.remove(&id);
        if members.is_empty() && room != "lobby" {
            rooms.remove(room);
        }
        member
    }

    fn who(&self, room: &str) -> Vec<String> {
        let rooms = self.rooms.lock().unwrap();
        rooms
            .get(room)
            .map(|m| m.values().map(|m| m.nick.clone()).collect())
            .unwrap_or_default()
    }

    fn rename(&self, room: &str, id: u64, nick: &str) {
        let mut rooms = self.rooms.lock().unwrap();
        if let Some(member) = rooms.get_mut(room).and_then(|m| m.get_mut(&id)) {
            member.nick = nick.to_string();
        }
    }

    /// One line from `client`.
    fn line(&self, conn: &mut Conn<'_, Client>, line: &str) -> io::Result<()> {
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match command {
            "/nick" if valid(arg) => {
                let client = conn.state();
                let old = std::mem::replace(&mut client.nick, arg.to_string());
                let (id, room) = (client.id, client.room.clone());
                self.rename(&room, id, arg);
                self.broadcast(&room, Some(id), &format!("* {old} is now {arg}\n"));
                writeln!(conn, "* you are now {arg}")
            }
            "/join" if valid(arg) => {
                let handle = conn.handle();
                let client = conn.state();
                let (id, nick) = (client.id, client.nick.clone());
                let old = std::mem::replace(&mut client.room, arg.to_string());
                self.leave(&old, id);
                self.broadcast(&old, None, &format!("* {nick} left for {arg}\n"));
                self.broadcast(arg, None, &format!("* {nick} joined\n"));
                self.join(arg, id, &nick, handle);
                writeln!(conn, "* you are in {arg}")
            }
            "/who" => {
                let room = conn.state().room.clone();
                let who = self.who(&room).join(", ");
                writeln!(conn, "* in {room}: {who}")
            }
            "/quit" => {
                conn.write_all(b"* bye\n")?;
                conn.close();
                Ok(())
            }
            "/nick" | "/join" => writeln!(conn, "* names are 1 to 32 letters, digits, '-' or '_'"),
            _ if command.starts_with('/') => {
                writeln!(conn, "* commands: /nick NAME, /join ROOM, /who, /quit")
            }
            _ => {
                let client = conn.state();
                let text = format!("{}: {line}\n", client.nick);
                self.broadcast(&client.room, Some(client.id), &text);
                Ok(())
            }
        }
    }
}

/// A nick or a room name.
fn valid(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Handler for Chat {
    type State = Client;

    fn open(&self, conn: &mut Conn<'_>) -> Client {
        let n = self.guests.fetch_add(1, Relaxed) + 1;
        let handle = conn.handle();
        let client = Client {
            id: handle.id(),
            nick: format!("guest{n}"),
            room: "lobby".to_string(),
        };
        let _ = writeln!(
            conn,
            "* welcome, {}: you are in lobby. /nick NAME, /join ROOM, /who, /quit",
            client.nick
        );
        self.broadcast("lobby", None, &format!("* {} joined\n", client.nick));
        self.join("lobby", client.id, &client.nick, handle);
        client
    }

    fn data(&self, conn: &mut Conn<'_, Client>, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&rest[..end]);
            let line = line.trim_end_matches('\r');
            if !line.is_empty() {
                self.line(conn, line)?;
            }
            rest = &rest[end + 1..];
        }
        if rest.len() > MAX_LINE {
            conn.write_all(b"* line too long\n")?;
            conn.close();
            return Ok(());
        }
        conn.keep(rest.len());
        Ok(())
    }

    fn closed(&self, client: Client, _reason: CloseReason) {
        if self.leave(&client.room, client.id).is_some() {
            self.broadcast(&client.room, None, &format!("* {} left\n", client.nick));
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    serve::raise_nofile_limit();
    let mut config = cli.pool.config(READ_DEADLINE_MS, b"* the server is full\n");
    config.max_outbound_bytes = cli.max_outbound_bytes;
    let manager = match Manager::with_handler(config, Chat::default()) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("chat: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    serve::serve("chat", manager, &cli.addr, &cli.pool)
}
