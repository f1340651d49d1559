//! Examples run as processes, and real client tools (`redis-cli`, `curl`,
//! `wrk`, …) run against them, each bounded in time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{WAIT, example_bin};

/// An example server started for a test; killed when dropped.
pub struct Example {
    /// The process.
    pub child: Child,
    /// Lines it printed after the first.
    pub lines: mpsc::Receiver<String>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Example {
    /// Starts example `name` on a free loopback port with `extra` flags and
    /// waits for its `NAME: listening on [ADDR]` line.
    pub fn start(name: &str, extra: &[&str]) -> Example {
        let mut cmd = Command::new(example_bin(name));
        cmd.args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::null());
        Self::start_cmd(name, &mut cmd)
    }

    /// Starts `cmd` (an example, or a tool that runs one) and waits for its
    /// `NAME: listening on [ADDR]` line. Its standard error is dropped
    /// unless `cmd` sets it.
    pub fn start_cmd(name: &str, cmd: &mut Command) -> Example {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The first line that says so (a test binary run as a child
        // prints the harness's lines first).
        let addr = line_with(&lines, "listening on").ok().and_then(|line| {
            line.split(['[', ']', ' '])
                .find_map(|w| w.parse::<SocketAddr>().ok())
        });
        let Some(addr) = addr else {
            // Not left running behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} printed no listening address");
        };
        Example { child, lines, addr }
    }

    /// Waits for a line that contains `text`; the line.
    pub fn expect_line(&self, text: &str) -> String {
        line_with(&self.lines, text).unwrap_or_else(|e| panic!("no line with {text:?}: {e}"))
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// The port, as a string for command lines.
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// SIGTERM; the exit status (bounded wait) and the lines printed.
    pub fn sigterm(self) -> (std::process::ExitStatus, Vec<String>) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        self.wait_exit()
    }

    /// Waits for the process to exit (bounded); its status and the lines
    /// it printed.
    pub fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = wait_exit(&mut self.child, WAIT);
        // Until the reader thread has seen the end of the output.
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        (status, lines)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line from `lines` that contains `text`, the others skipped,
/// waiting at most [`WAIT`] in all.
fn line_with(lines: &mpsc::Receiver<String>, text: &str) -> Result<String, mpsc::RecvTimeoutError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
        if line.contains(text) {
            return Ok(line);
        }
    }
}

/// Waits for `child` to exit, at most `limit`; kills it and panics past it.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The path of client tool `name`, or `None` when it is not installed,
/// said by [`skip`](super::skip) (which fails the test under CI: `.ci/run`
/// installs them all).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        super::skip(
            &format!("a test that runs {name}"),
            format!("{name} is not installed (.ci/run installs it)"),
        );
    }
    found
}

/// Runs `cmd` to its end, at most `limit`, with no standard input.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the pipes on threads so that a chatty tool cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = wait_exit(&mut child, limit);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs `cmd` like [`run`] and returns its standard output as text,
/// panicking with its standard error if it failed.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> String {
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fresh directory for a test's files (sockets, configs, logs), removed
/// on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pool-manager-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The number in `line` just before `word` (`"… 12 connections in all"`).
pub fn number_before(line: &str, word: &str) -> u64 {
    let head = &line[..line
        .find(word)
        .unwrap_or_else(|| panic!("{word} in {line}"))];
    head.split_whitespace().last().unwrap().parse().unwrap()
}

/// The number in `line` just after `word` (`"… local 3"`).
pub fn number_after(line: &str, word: &str) -> u64 {
    let at = line
        .find(word)
        .unwrap_or_else(|| panic!("{word} in {line}"));
    let token = line[at + word.len()..].split_whitespace().next().unwrap();
    token.trim_end_matches([',', ')']).parse().unwrap()
}

/// A loopback port that was free a moment ago, for a tool that cannot
/// bind port 0 itself. Another process may take it first: the caller
/// retries with another if its tool fails to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of process `pid`, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // `pid (comm) state …`: the name may hold spaces and parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The CPU process `pid` uses over the next `period`, in clock ticks
/// (printed as `what`).
pub fn cpu_ticks_over(pid: u32, period: Duration, what: &str) -> u64 {
    let before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(period);
    let used = cpu_ticks(pid) - before;
    println!(
        "CPU {what}: {} ms over {:.1?}",
        used * 10,
        started.elapsed()
    );
    used
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
