//! The real `dashcache` binary as a child process, on 127.0.0.1:0, with
//! its stderr collected line by line (for tests of what it logs, and of
//! what survives a restart).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::{DASHBOARD_ROUTES, PATIENCE};

/// The `dashcache` binary on 127.0.0.1:0 with its stderr collected line by line.
pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
    /// Lines logged up to and including the listening line.
    pub early: Vec<String>,
    reader: Option<JoinHandle<()>>,
    _config: tempfile::NamedTempFile,
}

impl Binary {
    /// Starts the binary with the dashboard routes, `toml` appended, in
    /// front of `upstream`, and waits for its "dashcache listening" line.
    pub fn start(upstream: &str, toml: &str, args: &[&str]) -> Self {
        Self::start_with_config(upstream, &format!("{toml}\n{DASHBOARD_ROUTES}"), args)
    }

    /// Starts the binary with `config_toml` as its whole configuration file.
    pub fn start_with_config(upstream: &str, config_toml: &str, args: &[&str]) -> Self {
        let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        write!(config, "{config_toml}").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dashcache"))
            .arg("--config")
            .arg(config.path())
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the dashcache binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut early = Vec::new();
        let addr = loop {
            let line = lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no \"dashcache listening\" line; got {early:#?}"));
            let addr = line
                .contains("dashcache listening")
                .then(|| listen_address(&line));
            early.push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        Self {
            child,
            addr,
            lines,
            early,
            reader: Some(reader),
            _config: config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Resident memory, from /proc/<pid>/status.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// The line logged at start that contains `needle`.
    pub fn early_line(&self, needle: &str) -> &str {
        self.early
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line in {:#?}", self.early))
    }

    /// Sends SIGTERM, waits for a clean exit and returns every line logged.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM delivered");
        let status = self.child.wait().expect("the binary exits");
        assert!(status.success(), "exit status {status}");
        self.reader.take().unwrap().join().unwrap();
        let mut lines = std::mem::take(&mut self.early);
        lines.extend(self.lines.try_iter());
        lines
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only reached with the child still running when a test failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bound address from the listening line, in either format.
fn listen_address(line: &str) -> SocketAddr {
    let start = line
        .find("\"listen\":\"")
        .map(|i| i + "\"listen\":\"".len())
        .or_else(|| line.find(" listen=").map(|i| i + " listen=".len()))
        .unwrap_or_else(|| panic!("no listen address in {line}"));
    let rest = &line[start..];
    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{:?} is no address ({e}): {line}", &rest[..end]))
}
