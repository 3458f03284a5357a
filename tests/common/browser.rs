//! Headless Chromium driven through the DevTools protocol (a websocket of its own), for the
//! tests that check a page as a person would see it. It never skips: without Chromium it
//! fails and says how to install it.

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Debian's `chromium`, or the name other systems use.
fn chromium() -> String {
    for name in ["chromium", "chromium-browser"] {
        let found = std::process::Command::new(name).arg("--version").output();
        if found.is_ok_and(|o| o.status.success()) {
            return name.to_owned();
        }
    }
    panic!(
        "the browser check needs Chromium on PATH: `apt-get install chromium` \
         (scripts/test.sh installs it when run as root)"
    );
}

/// One headless Chromium with one page open, attached over DevTools.
pub struct Browser {
    child: Child,
    cdp: Socket,
    ids: u64,
    session: String,
    /// What the page reported as an error since `watch_errors`: console errors, uncaught
    /// exceptions, resources that failed to load.
    errors: Vec<String>,
    /// Its own profile, so no state leaks between runs; deleted on drop.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and attaches to that page.
    pub async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let devtools = loop {
            let line = stderr.next_line().await.unwrap().expect("Chromium exited before listening");
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let (cdp, _) = tokio_tungstenite::connect_async(&devtools).await.unwrap();
        let mut browser = Browser {
            child,
            cdp,
            ids: 0,
            session: String::new(),
            errors: Vec::new(),
            _profile: profile,
        };
        browser.attach().await;
        browser
    }

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

    /// Evaluates `expression` (a promise) in the page until it gives a value. The first
    /// tries may land before the page has loaded (its context is then replaced).
    pub async fn evaluate(&mut self, expression: &str, tries: usize) -> Option<Value> {
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        for _ in 0..tries {
            if let Ok(result) = self.call(true, "Runtime.evaluate", params.clone()).await
                && result.get("exceptionDetails").is_none()
            {
                return Some(result["result"]["value"].clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// From now on, records every console error, uncaught exception and failed load of the
    /// page (and of the pages it navigates to); `take_errors` hands them over.
    pub async fn watch_errors(&mut self) {
        for domain in ["Runtime.enable", "Log.enable"] {
            self.call(true, domain, json!({})).await.unwrap();
        }
    }

    /// The errors recorded since the last call (see `watch_errors`).
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Loads `url` in the page. It returns at once: `evaluate` waits for the new page.
    pub async fn navigate(&mut self, url: &str) {
        let answer = self.call(true, "Page.navigate", json!({ "url": url })).await.unwrap();
        assert!(answer.get("errorText").is_none(), "{url} did not load: {answer}");
    }

    /// Keeps what an event says about an error, if it is one.
    fn record(&mut self, event: &Value) {
        let params = &event["params"];
        let error = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                let args = params["args"].as_array().cloned().unwrap_or_default();
                let text: Vec<String> = args
                    .iter()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map_or_else(|| a["description"].to_string(), str::to_owned)
                    })
                    .collect();
                format!("console.error: {}", text.join(" "))
            }
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                format!(
                    "uncaught: {} {} ({}:{})",
                    details["text"].as_str().unwrap_or(""),
                    details["exception"]["description"].as_str().unwrap_or(""),
                    details["url"].as_str().unwrap_or(""),
                    details["lineNumber"]
                )
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => format!(
                "{}: {} {}",
                params["entry"]["source"].as_str().unwrap_or(""),
                params["entry"]["text"].as_str().unwrap_or(""),
                params["entry"]["url"].as_str().unwrap_or("")
            ),
            _ => return,
        };
        self.errors.push(error);
    }

    /// Closes the browser, and kills it if it does not go.
    pub async fn close(mut self) {
        let _ = self.call(false, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.start_kill();
    }

    /// One DevTools call: sends it and waits for the answer with the same id, skipping events.
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
            if answer.get("method").is_some() {
                self.record(&answer);
                continue;
            }
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
