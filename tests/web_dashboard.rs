//! The web gateway's live front page in a real browser: headless Chromium opens `/`, sees
//! hello-1 ready, and sees it turn "not ready" when hello-1 is asked to stop (it stays listed
//! for its grace period), then leave. The page follows a server-sent event stream, so the
//! check runs inside the page through the DevTools protocol. It never skips: without
//! Chromium or nats-server it fails and says what to install.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::terminate;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_front_page_shows_a_node_turn_not_ready_then_leave() {
    tokio::time::timeout(LIMIT, dashboard()).await.expect("the dashboard check timed out");
}

async fn dashboard() {
    let nats = microkit_testing::NatsServer::start().await.expect("this test needs nats-server");
    let role = |args: &[&str]| {
        let mut command = common::example("web");
        command.args(args).env("NATS_URL", nats.url());
        command
    };
    let (hello, _) = start(role(&["service", "--id", "hello-1", "--grace-ms", "3000"])).await;
    let (gateway, first) = start(role(&["gateway", "--port", "0"])).await;
    // "gateway on http://127.0.0.1:<port>; ctrl-c stops"
    let url = first.split_whitespace().nth(2).unwrap().trim_end_matches(';').to_owned();

    let mut page = Browser::open(&format!("{url}/")).await;

    assert_eq!(page.health_of("hello-1", "ready").await, "ready");
    terminate(&hello);
    assert_eq!(page.health_of("hello-1", "not ready").await, "not ready", "still listed");
    assert_eq!(page.health_of("hello-1", "gone").await, "gone", "then it left");

    page.close().await;
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

/// The dashboard's one question to the page.
trait Dashboard {
    /// Waits, inside the page, until the row of `node` shows `wanted` ("gone": no row).
    async fn health_of(&mut self, node: &str, wanted: &str) -> String;
}

impl Dashboard for Browser {
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
        let shown = self.evaluate(&expression, 300).await;
        match shown.as_ref().and_then(|v| v.as_str()) {
            Some(shown) => shown.to_owned(),
            None => panic!("the page never showed {node} {wanted}: {shown:?}"),
        }
    }
}
