//! The web gateway's live front page in a real browser: headless Chromium opens `/`, sees
//! hello-1 ready, and sees it turn "not ready" when hello-1 is asked to stop (it stays listed
//! for its grace period), then leave. The page follows a server-sent event stream, so the
//! check runs inside the page through the DevTools protocol. It never skips: without
//! Chromium or nats-server it fails and says what to install.

mod common;

use common::terminate;

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_front_page_shows_a_node_turn_not_ready_then_leave() {
    tokio::time::timeout(LIMIT, dashboard()).await.expect("the dashboard check timed out");
}

async fn dashboard() {
    let nats = microkit::nats::NatsServer::start().await.expect("this test needs nats-server");
    let role = |args: &[&str]| {
        let mut command = common::example("web");
        command.args(args).env("NATS_URL", nats.url());
        command
    };
    let (hello, _) = start(role(&["service", "--id", "hello-1", "--grace-ms", "3000"])).await;
    let (gateway, first) = start(role(&["gateway", "--port", "0"])).await;
    // "gateway on http://127.0.0.1:<port>; ctrl-c stops"
    let url = first.split_whitespace().nth(2).unwrap().trim_end_matches(';').to_owned();

    let profile = tempfile::tempdir().unwrap();
    let mut chromium = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{url}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(chromium.stderr.take().unwrap()).lines();
    let devtools = loop {
        let line = stderr.next_line().await.unwrap().expect("Chromium exited before listening");
        if let Some(url) = line.strip_prefix("DevTools listening on ") {
            break url.trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let (mut cdp, _) = tokio_tungstenite::connect_async(&devtools).await.unwrap();
    let mut page = Page { cdp: &mut cdp, ids: 0, session: String::new() };
    page.attach().await;

    assert_eq!(page.health_of("hello-1", "ready").await, "ready");
    terminate(&hello);
    assert_eq!(page.health_of("hello-1", "not ready").await, "not ready", "still listed");
    assert_eq!(page.health_of("hello-1", "gone").await, "gone", "then it left");

    let _ = page.call(false, "Browser.close", json!({})).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), chromium.wait()).await;
    let _ = chromium.start_kill();
    terminate(&gateway);
    assert!(gateway.wait_with_output().await.unwrap().status.success());
}

/// A role's child and its first stdout line.
async fn start(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().expect("starting a role");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a role says it is ready");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, first)
}

fn chromium() -> String {
    for name in ["chromium", "chromium-browser"] {
        let found = std::process::Command::new(name).arg("--version").output();
        if found.is_ok_and(|o| o.status.success()) {
            return name.to_owned();
        }
    }
    panic!("the browser check needs Chromium on PATH: `apt-get install chromium`");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Page<'a> {
    cdp: &'a mut Socket,
    ids: u64,
    session: String,
}

impl Page<'_> {
    async fn attach(&mut self) {
        let targets = self.call(false, "Target.getTargets", json!({})).await.unwrap();
        let target = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("the page's target")["targetId"]
            .clone();
        let params = json!({ "targetId": target, "flatten": true });
        let attached = self.call(false, "Target.attachToTarget", params).await.unwrap();
        self.session = attached["sessionId"].as_str().unwrap().to_owned();
    }

    /// Waits, inside the page, until the row of `node` shows `wanted` ("gone": no row).
    async fn health_of(&mut self, node: &str, wanted: &str) -> String {
        let expression = format!(
            r#"new Promise((resolve) => {{
                const look = () => {{
                    const row = document.querySelector('tr[data-node="{node}"]');
                    const shown = row ? row.cells[3].textContent : "gone";
                    if (shown === "{wanted}") resolve(shown); else setTimeout(look, 50);
                }};
                look();
            }})"#
        );
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        // The first tries may land before the page has loaded (its context is then replaced).
        for _ in 0..300 {
            if let Ok(result) = self.call(true, "Runtime.evaluate", params.clone()).await
                && result.get("exceptionDetails").is_none()
                && let Some(shown) = result["result"]["value"].as_str()
            {
                return shown.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {node} {wanted}");
    }

    /// One DevTools call: sends it and waits for the answer with the same id.
    async fn call(&mut self, in_page: bool, method: &str, params: Value) -> Result<Value, Value> {
        self.ids += 1;
        let mut request = json!({ "id": self.ids, "method": method, "params": params });
        if in_page {
            request["sessionId"] = json!(self.session);
        }
        self.cdp.send(Message::text(request.to_string())).await.unwrap();
        while let Some(message) = self.cdp.next().await {
            let Ok(Message::Text(text)) = message else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(self.ids) {
                return match answer.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(answer["result"].clone()),
                };
            }
        }
        Err(json!("the DevTools socket closed"))
    }
}
