//! The status page's *Suspected volatile fields* section, in headless
//! Chromium: hidden while nothing is suspected, and listing each suspected
//! field's summary with its route once a dashboard sends a fresh request id
//! on every request. (The rest of the page is tested in `status_page.rs`.)
//!
//! Without `/usr/bin/chromium` (or `DASHCACHE_CHROMIUM`) this test fails,
//! unless `DASHCACHE_SKIP_BROWSER=1` says to skip it.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{spawn_proxy, Client, Origin};

const ROUTES: &str = r#"
[[route]]
name = "get_metrics"
path = "/api/metrics"
methods = ["POST"]
"#;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("DASHCACHE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("DASHCACHE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: {} not found", path.display());
        return None;
    }
    panic!(
        "{} not found: install chromium, point DASHCACHE_CHROMIUM at it, or set \
         DASHCACHE_SKIP_BROWSER=1",
        path.display()
    );
}

/// The page's DOM once its first stats poll has been rendered.
async fn dump_dom(chromium: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=1500",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finishes in time")
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The opening tag of the section, and its list's text.
fn section(dom: &str) -> (String, String) {
    let start = dom
        .find(r#"<section id="volatile-section""#)
        .expect("the section");
    let tag_end = start + dom[start..].find('>').unwrap();
    let end = start + dom[start..].find("</section>").unwrap();
    (
        dom[start..=tag_end].to_owned(),
        dom[tag_end..end].to_owned(),
    )
}

#[tokio::test]
async fn the_page_lists_suspected_volatile_fields_only_once_there_are_some() {
    let Some(chromium) = chromium() else { return };
    let origin = Origin::start().await;
    let proxy = spawn_proxy(&origin.url(), ROUTES).await;
    let page = proxy.url("/api/cache/");

    let (tag, _) = section(&dump_dom(&chromium, &page).await);
    assert!(tag.contains("hidden"), "nothing suspected yet: {tag}");

    let client = Client::new();
    for i in 0..80 {
        let body = format!(
            r#"{{"requestId":"r-{i}","org":"{}"}}"#,
            ["Vale", "Itau"][i % 2]
        );
        client.post(&proxy.url("/api/metrics"), &body).await;
    }
    let (tag, list) = section(&dump_dom(&chromium, &page).await);
    assert!(!tag.contains("hidden"), "{tag}");
    assert!(
        list.contains(r#"<li data-route="get_metrics">get_metrics — requestId: distinct on"#),
        "{list}"
    );
    assert!(list.contains("key_ignore_fields"), "{list}");
}
