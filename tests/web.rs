//! The web example's page in a real browser: headless Chromium loads it through the
//! gateway, asks for a stream of greetings over the websocket, and every one arrives.
//!
//! Chromium is driven through the DevTools protocol (a websocket of its own): the page's
//! stream ends after the page has loaded, so `--dump-dom` would read it too early. This
//! test never skips: without Chromium it fails and says how to install it.
//!
//! A second test runs the web service and the gateway as separate processes that find each
//! other through a private NATS server, as a learner would in three terminals.

mod common;

use std::time::Duration;

use common::browser::Browser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn web_nodes_in_other_processes_join_and_leave_the_gateway() {
    tokio::time::timeout(LIMIT, separate_processes())
        .await
        .expect("the multi-process test timed out");
}

async fn separate_processes() {
    let nats = microkit_testing::NatsServer::start().await.expect("this test needs nats-server");
    let role = |args: &[&str]| {
        let mut command = common::example("web");
        command.args(args).env("NATS_URL", nats.url());
        command
    };
    let (hello_1, _) = start(role(&["service", "--id", "hello-1"])).await;
    let (hello_2, _) = start(role(&["service", "--id", "hello-2"])).await;
    let (gateway_role, first) = start(role(&["gateway", "--port", "0"])).await;
    // "gateway on http://127.0.0.1:<port>; ctrl-c stops"
    let gateway = first.split_whitespace().nth(2).unwrap().trim_end_matches(';').to_owned();

    assert_eq!(get(&gateway, "/").await, "hello: 2 node(s) -> /hello/\n");
    let mut served_by: Vec<String> = Vec::new();
    for _ in 0..4 {
        served_by.push(
            get(&gateway, "/hello/greet?name=x").await.rsplit(' ').next().unwrap().to_owned(),
        );
    }
    served_by.sort();
    assert_eq!(
        served_by,
        ["hello-1", "hello-1", "hello-2", "hello-2"],
        "both nodes serve, in turn"
    );

    // SIGTERM: hello-2 deregisters on its way out, so the gateway forgets it at once. Every
    // role then says what it did and exits 0.
    assert_eq!(hello_2.terminate().await, "hello-2 stopped: 2 request(s) served\n");
    assert_eq!(get(&gateway, "/").await, "hello: 1 node(s) -> /hello/\n");
    assert_eq!(gateway_role.terminate().await, "gateway stopped: 4 request(s) forwarded\n");
    assert_eq!(hello_1.terminate().await, "hello-1 stopped: 2 request(s) served\n");
}

/// A running role: the process and the rest of its stdout, kept open so it can print more.
struct Role {
    child: tokio::process::Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Role {
    /// Stops the role as an operator would (SIGTERM) and returns what it printed on its way
    /// out, after checking that it exited 0.
    async fn terminate(mut self) -> String {
        let pid = self.child.id().unwrap().to_string();
        let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(kill.success());
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "a clean exit after SIGTERM, not {status}");
        let mut rest = String::new();
        self.stdout.into_inner().read_to_string(&mut rest).await.unwrap();
        rest
    }
}

/// Starts an example role and returns it with the first line it printed.
async fn start(mut command: Command) -> (Role, String) {
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next_line().await.unwrap().expect("a role prints one line when ready");
    (Role { child, stdout }, first)
}

async fn get(base: &str, path: &str) -> String {
    let request =
        http::Request::get(format!("{base}{path}")).body(axum::body::Body::empty()).unwrap();
    let response = microkit_http::Forwarder::default().send(request).await.unwrap();
    microkit_http::body_text(response.into_body(), 1 << 16).await
}

#[tokio::test]
async fn a_real_browser_sees_every_streamed_message_arrive() {
    tokio::time::timeout(LIMIT, browser_check()).await.expect("the browser check timed out");
}

async fn browser_check() {
    // The example in its `serve` role, on a free port; its first stdout line names the URL.
    let mut web = common::example("web");
    web.args(["serve", "--port", "0"]);
    let mut web = web.spawn().unwrap();
    let mut lines = BufReader::new(web.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("web serve prints its URL");
    let page = first.split_whitespace().nth(1).expect("`open <url> ...`").to_owned();
    assert!(page.starts_with("http://127.0.0.1:") && page.ends_with("/hello/"), "{first}");

    let mut browser = Browser::open(&format!("{page}?name=bo&count=5")).await;

    // Waits, inside the page, until the socket has closed; then reads what the page shows.
    let expression = r##"new Promise((resolve) => {
        const done = () => {
            const status = document.getElementById("status");
            if (status && status.textContent.startsWith("closed")) {
                const items = [...document.querySelectorAll("#messages li")].map((li) => li.textContent);
                resolve({ status: status.textContent, items });
            } else {
                setTimeout(done, 50);
            }
        };
        done();
    })"##;
    let shown = browser.evaluate(expression, 100).await;
    let shown = shown.expect("the page never finished its stream");

    let items: Vec<&str> =
        shown["items"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    let expected: Vec<String> =
        (1..=5).map(|seq| format!("hello bo (seq {seq}, from greeter-1)")).collect();
    assert_eq!(items, expected, "every message arrived, in order");
    assert_eq!(shown["status"], "closed 1000: 5 messages; 5 shown");

    browser.close().await;
    let tally = Role { child: web, stdout: lines }.terminate().await;
    assert!(tally.starts_with("stopped: the gateway forwarded "), "{tally}");
}
