//! The snapshot file through the real binary: entries cached before a
//! SIGTERM answer as hits after the restart, with their remaining TTL and a
//! growing `Age`, and no backend request; an expired entry inside its
//! stale window still answers for a failing upstream; a corrupt file is
//! logged and the proxy starts empty; a path that cannot be written stops
//! the start naming the setting.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::binary::Binary;
use support::{closed_port_url, Behaviour, Client, Origin};

fn snapshot_arg(path: &Path) -> [&str; 2] {
    ["--snapshot-file", path.to_str().unwrap()]
}

const FILTERS: [&str; 2] = [r#"{"org":"Vale"}"#, r#"{"org":"Acme","year":2025}"#];

#[tokio::test]
async fn cached_answers_survive_a_restart_as_hits_with_their_remaining_ttl() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snap");
    let client = Client::new();

    let first = Binary::start(&origin.url(), "[cache]\nttl = 3600\n", &snapshot_arg(&path));
    assert!(first.early_line("no snapshot yet").contains("cache.snap"));
    let filled_at = Instant::now();
    let mut answers = Vec::new();
    for filters in FILTERS {
        let reply = client.post(&first.url("/api/metrics"), filters).await;
        assert_eq!(reply.x_cache(), "MISS");
        answers.push(reply);
    }
    assert_eq!(origin.total(), 2);
    // Let a whole second pass, so the restored `Age` must have moved on.
    std::thread::sleep(Duration::from_millis(1100));
    let lines = first.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("snapshot written") && l.contains("entries=2")),
        "{lines:#?}"
    );
    assert!(path.is_file());

    let second = Binary::start(&origin.url(), "[cache]\nttl = 3600\n", &snapshot_arg(&path));
    let loaded = second.early_line("snapshot loaded");
    assert!(loaded.contains("entries=2"), "{loaded}");
    for (filters, before) in FILTERS.iter().zip(&answers) {
        let reply = client.post(&second.url("/api/metrics"), filters).await;
        let elapsed = filled_at.elapsed().as_secs();
        assert_eq!(reply.x_cache(), "HIT", "{filters}");
        assert_eq!(reply.body, before.body, "the same answer");
        assert_eq!(
            reply.header("x-origin-serial"),
            before.header("x-origin-serial")
        );
        let age: u64 = reply.header("age").parse().unwrap();
        assert!(
            (1..=elapsed).contains(&age),
            "age {age}, {elapsed}s since the fill"
        );
        let ttl = reply.cache_status_ttl().unwrap();
        assert!(
            (3600 - elapsed - 1..3600).contains(&ttl),
            "ttl {ttl}, {elapsed}s since the fill"
        );
    }
    assert_eq!(origin.total(), 2, "no backend request after the restart");
    second.stop();
}

#[tokio::test]
async fn an_expired_entry_inside_its_stale_window_still_answers_for_a_failing_upstream() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snap");
    let toml = "[cache]\nttl = 1\nstale_if_error = \"1h\"\n";

    let first = Binary::start(&origin.url(), toml, &snapshot_arg(&path));
    let reply = Client::new()
        .post(&first.url("/api/metrics"), FILTERS[0])
        .await;
    assert_eq!(reply.x_cache(), "MISS");
    first.stop();
    std::thread::sleep(Duration::from_millis(1100));

    let down = closed_port_url().await;
    let second = Binary::start(&down, toml, &snapshot_arg(&path));
    assert!(second.early_line("snapshot loaded").contains("entries=1"));
    let stale = Client::new()
        .post(&second.url("/api/metrics"), FILTERS[0])
        .await;
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.body, reply.body);
    second.stop();
}

#[tokio::test]
async fn a_corrupt_snapshot_is_logged_and_the_proxy_starts_empty() {
    let origin = Origin::start().await;
    origin.on("/api/metrics", Behaviour::new());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snap");
    std::fs::write(&path, b"DCSNAP\r\n\x01\xff\xff\xff\x7fgarbage").unwrap();

    let binary = Binary::start(&origin.url(), "", &snapshot_arg(&path));
    let line = binary.early_line("snapshot not loaded");
    assert!(line.contains("truncated"), "{line}");
    let reply = Client::new()
        .post(&binary.url("/api/metrics"), FILTERS[0])
        .await;
    assert_eq!(reply.x_cache(), "MISS");
    assert_eq!(origin.total(), 1);
    binary.stop();
    // Replaced at shutdown by a good one.
    let written = std::fs::read(&path).unwrap();
    assert!(written.starts_with(b"DCSNAP\r\n\x01"));
    assert!(written.len() > reply.body.len());
}

/// A way to set the path: its name, the flags, the environment.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a Path)>);

#[test]
fn a_snapshot_path_that_cannot_be_written_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("cache.snap");
    let cases: [Case; 3] = [
        (
            "flag",
            vec!["--snapshot-file", missing.to_str().unwrap()],
            vec![],
        ),
        ("env", vec![], vec![("DASHCACHE_SNAPSHOT_FILE", &missing)]),
        (
            "a directory",
            vec!["--snapshot-file", dir.path().to_str().unwrap()],
            vec![],
        ),
    ];
    for (name, args, env) in cases {
        for check in [false, true] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_dashcache"));
            command
                .args(["--listen", "127.0.0.1:0"])
                .args(&args)
                .env_clear()
                .envs(env.iter().copied());
            if check {
                command.arg("--check");
            }
            let output = command.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{name}, --check {check}: {stderr}"
            );
            assert!(
                stderr.contains("cache.snapshot_file")
                    && stderr.contains("DASHCACHE_SNAPSHOT_FILE")
                    && stderr.contains("--snapshot-file"),
                "{name}, --check {check}: {stderr}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
