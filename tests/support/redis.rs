//! Real `redis-server` processes for the shared-tier tests: started on free
//! ports, stopped (or SIGKILLed) by their own PID, never by name; a 3-master
//! Cluster made with `redis-cli --cluster create`; and dashcache itself as a
//! child process, for the tests that kill a replica mid-fill.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{eventually, spawn_proxy, ProxyHandle, PATIENCE};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// One `redis-server` on 127.0.0.1, without persistence unless asked.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// Serves TLS only (on `port`): readiness is a TCP connect.
    tls: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            tls: false,
        };
        server.launch();
        server
    }

    /// Starts one that speaks TLS only, with `cert`/`key` (rediss://).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir for redis"),
            extra: vec![
                "--tls-port".into(),
                port.to_string(),
                "--port".into(),
                "0".into(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: true,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        if self.tls {
            wait_for_listener(self.port);
        } else {
            wait_for_pong(self.port, self.extra.iter().any(|a| a == "--requirepass"));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, by PID; the data is gone with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// A plain connection for a test to look into Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(PATIENCE))
            .set_connection_timeout(Some(PATIENCE));
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("test connects to redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `PING` on `port` answers (`-NOAUTH` counts when a password is set).
fn wait_for_pong(port: u16, auth: bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            if stream.write_all(b"PING\r\n").is_ok() {
                let mut reply = [0u8; 64];
                if let Ok(n) = stream.read(&mut reply) {
                    let reply = &reply[..n];
                    if reply.starts_with(b"+PONG") || (auth && reply.starts_with(b"-NOAUTH")) {
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_listener(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three cluster-enabled masters joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        // Wait until every node agrees that all slots are served.
        let deadline = Instant::now() + PATIENCE;
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The seed node list, as `[redis] url` takes it.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// dashcache as its own process (so a test can SIGKILL it).
pub struct DashcacheProcess {
    pub addr: SocketAddr,
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl DashcacheProcess {
    /// Starts the binary in front of `upstream` with `toml`, and waits for
    /// its "dashcache listening" line.
    pub fn start(upstream: &str, toml: &str) -> Self {
        Self::start_with_env(upstream, toml, &[])
    }

    /// Like [`DashcacheProcess::start`], with environment variables set.
    pub fn start_with_env(upstream: &str, toml: &str, env: &[(&str, &str)]) -> Self {
        let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        config.write_all(toml.as_bytes()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dashcache"))
            .arg("--config")
            .arg(config.path())
            .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the dashcache binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let addr = loop {
            let line = lines
                .recv_timeout(PATIENCE)
                .expect("a \"dashcache listening\" line");
            if line.contains("dashcache listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("listen=")?.parse::<SocketAddr>().ok())
                    .unwrap_or_else(|| panic!("no listen address in {line:?}"));
                break addr;
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Self {
            addr,
            child,
            _config: config,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DashcacheProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A replica in this process (its own store, connections and listener)
/// with `toml` (which names the Redis), once it has reached Redis and
/// subscribed to the other replicas' events.
pub async fn spawn_replica(upstream: &str, toml: &str) -> ProxyHandle {
    let handle = spawn_proxy(upstream, toml).await;
    let tier = handle
        .proxy
        .store
        .shared()
        .expect("redis configured")
        .clone();
    eventually("the replica to reach redis and subscribe", || {
        tier.is_up() && tier.is_listening()
    })
    .await;
    handle
}
