//! # mocking: testing code that calls another service
//!
//! go-micro's example swapped in a hand-written mock client when a flag said so, at run
//! time, and had no tests at all: nothing checked that the code called the service as it
//! should. Here the code under test (a `WelcomeDesk` that greets guests, skips blank names
//! and retries a call once when the service is unavailable) depends on the Greeter only
//! through a small trait, `Greet`. It then meets two stand-ins:
//!
//! 1. a mockall mock, which answers as told and checks every call: its argument, how
//!    many times, in what order;
//! 2. the real Greeter server, in the same process, reached by a real tonic client whose
//!    transport is an in-memory pipe (`tokio::io::duplex`): no socket, no port.
//!
//! The tests at the bottom are the point: each fails if the desk stops calling the
//! service as it should.
//!
//! Run it:
//!
//! ```text
//! cargo run --example mocking
//! cargo run --example mocking -- --guests ada,bo,cy
//! cargo test --example mocking
//! ```
//!
//! It prints (the golden file `tests/golden/mocking.txt` holds exactly this):
//!
//! ```text
//! guests: ["ada", " ", "bo"]
//! 1. a mockall mock: each named guest greeted once, in order
//!    greeted: hello ada (from the mock)
//!    greeted: hello bo (from the mock)
//!    blank names skipped: 1
//!    the mock saw every call it expected, and no other
//! 2. a mock that fails: Unavailable once for the first guest, refused for the last
//!    greeted: hello ada (from the mock, on the retry)
//!    failed: bo: PermissionDenied
//!    blank names skipped: 1
//! 3. the real Greeter in-process: tonic over tokio::io::duplex, no socket
//!    greeted: hello ada (from in-process)
//!    greeted: hello bo (from in-process)
//!    blank names skipped: 1
//! ```
//!
//! Read it beside `notes/mocking.md`.

use std::sync::Arc;

use clap::Parser;
use hyper_util::rt::TokioIo;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::{Out, say};
use mockall::Sequence;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};

#[derive(Parser, Debug)]
#[command(
    about = "Testing code that calls a service: mockall mocks, and the real server in-process"
)]
struct Args {
    /// The guests to greet; blank names are skipped.
    #[arg(long, value_delimiter = ',', default_value = "ada, ,bo")]
    guests: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    microkit::init_tracing();
    microkit::report(run(Args::parse(), &Out::stdout()).await)
}

// ---------------------------------------------------------------------------------------
// The code under test, and the one seam it needs.

/// What the desk needs from the Greeter service, in its own words: one method, not the
/// whole generated client. A small trait is easy to mock and easy to read in a test.
#[mockall::automock]
trait Greet {
    async fn say_hello(&self, name: &str) -> Result<String, Status>;
}

/// Greets a list of guests through whatever [`Greet`] it is given.
struct WelcomeDesk<G> {
    greeter: G,
}

/// What the desk did: who was greeted (with the reply), who was not (with the reason).
#[derive(Debug, Default, PartialEq)]
struct Welcome {
    greeted: Vec<String>,
    failed: Vec<(String, Code)>,
    skipped: usize,
}

impl<G: Greet> WelcomeDesk<G> {
    /// The rules the tests pin down:
    /// - a blank name is skipped, and the service is not called for it;
    /// - `Unavailable` is retried once (a node may have just restarted);
    /// - any other error is recorded for that guest, and the others are still greeted.
    async fn welcome(&self, guests: &[String]) -> Welcome {
        let mut welcome = Welcome::default();
        for guest in guests {
            let guest = guest.trim();
            if guest.is_empty() {
                welcome.skipped += 1;
                continue;
            }
            let reply = match self.greeter.say_hello(guest).await {
                Err(status) if status.code() == Code::Unavailable => {
                    self.greeter.say_hello(guest).await
                }
                reply => reply,
            };
            match reply {
                Ok(reply) => welcome.greeted.push(reply),
                Err(status) => welcome.failed.push((guest.to_owned(), status.code())),
            }
        }
        welcome
    }
}

// ---------------------------------------------------------------------------------------
// The production implementation: a tonic client.

/// `Greet` over gRPC. The generated client wants `&mut self`, so calls go through a lock
/// (cloning the client per call would do as well: a `Channel` clone is cheap).
struct GrpcGreet {
    client: Mutex<GreeterClient<Channel>>,
}

impl Greet for GrpcGreet {
    async fn say_hello(&self, name: &str) -> Result<String, Status> {
        let request = HelloRequest { name: name.to_owned() };
        let reply = self.client.lock().await.say_hello(request).await?.into_inner();
        Ok(format!("{} (from {})", reply.message, reply.node))
    }
}

/// A tonic client connected to a real Greeter server running in this process, over an
/// in-memory pipe instead of a socket: the whole gRPC stack (encoding, HTTP/2, status
/// codes) runs, with no port to pick and nothing to clean up.
async fn in_process_client(node: &str) -> anyhow::Result<GreeterClient<Channel>> {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);

    let greeter = HelloGreeter::new(node).into_service();
    // The server's "listener" yields exactly one connection: the server end of the pipe.
    let incoming = futures::stream::iter([Ok::<_, std::io::Error>(server_end)]);
    tokio::spawn(Server::builder().add_service(greeter).serve_with_incoming(incoming));

    // The connector hands tonic the client end once. A second call would mean tonic is
    // reconnecting, which a pipe cannot do: that is an error, not a hang.
    let client_end = Arc::new(std::sync::Mutex::new(Some(client_end)));
    let connector = tower::service_fn(move |_uri| {
        let pipe = client_end.lock().unwrap().take();
        async move {
            pipe.map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the in-process pipe is used up"))
        }
    });
    // The URI is required but unused: the connector decides where bytes go.
    let channel =
        Endpoint::from_static("http://in-process").connect_with_connector(connector).await?;
    Ok(GreeterClient::new(channel))
}

// ---------------------------------------------------------------------------------------
// The demo: the same desk, against each stand-in.

async fn run(args: Args, out: &Out) -> anyhow::Result<()> {
    let guests = args.guests;
    let names: Vec<&str> = guests.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).collect();
    say!(out, "guests: {:?}", guests);

    say!(out, "1. a mockall mock: each named guest greeted once, in order");
    let mut mock = MockGreet::new();
    let mut order = Sequence::new();
    for name in names.iter().map(|n| n.to_string()) {
        mock.expect_say_hello()
            .withf(move |asked| asked == name)
            .times(1)
            .in_sequence(&mut order)
            .returning(|name| Ok(format!("hello {name} (from the mock)")));
    }
    let mut desk = WelcomeDesk { greeter: mock };
    print(out, &desk.welcome(&guests).await);
    // Panics if an expected call did not happen (an unexpected call panicked already).
    desk.greeter.checkpoint();
    say!(out, "   the mock saw every call it expected, and no other");

    say!(out, "2. a mock that fails: Unavailable once for the first guest, refused for the last");
    let mock = failing_mock(&names);
    let desk = WelcomeDesk { greeter: mock };
    print(out, &desk.welcome(&guests).await);

    say!(out, "3. the real Greeter in-process: tonic over tokio::io::duplex, no socket");
    let desk = WelcomeDesk {
        greeter: GrpcGreet { client: Mutex::new(in_process_client("in-process").await?) },
    };
    print(out, &desk.welcome(&guests).await);
    Ok(())
}

/// The first guest meets `Unavailable`, then is greeted on the retry (two expectations
/// in a sequence); the last guest is refused; anyone between is greeted.
fn failing_mock(names: &[&str]) -> MockGreet {
    let mut mock = MockGreet::new();
    if let Some(first) = names.first().map(|n| n.to_string()) {
        let mut order = Sequence::new();
        let is_first = move |asked: &str| asked == first;
        mock.expect_say_hello()
            .withf(is_first.clone())
            .times(1)
            .in_sequence(&mut order)
            .returning(|_| Err(Status::unavailable("node restarting")));
        mock.expect_say_hello()
            .withf(is_first)
            .times(1)
            .in_sequence(&mut order)
            .returning(|name| Ok(format!("hello {name} (from the mock, on the retry)")));
    }
    // Expectations are tried first to last; used-up ones are passed over, so this
    // catch-all answers everyone else.
    let refused = names.last().filter(|_| names.len() > 1).map(|n| n.to_string());
    mock.expect_say_hello().returning(move |name| match refused.as_deref() {
        Some(last) if last == name => Err(Status::permission_denied("not on the list")),
        _ => Ok(format!("hello {name} (from the mock)")),
    });
    mock
}

fn print(out: &Out, welcome: &Welcome) {
    for reply in &welcome.greeted {
        say!(out, "   greeted: {reply}");
    }
    for (guest, code) in &welcome.failed {
        say!(out, "   failed: {guest}: {code:?}");
    }
    say!(out, "   blank names skipped: {}", welcome.skipped);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guests(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn hello(name: &str) -> Result<String, Status> {
        Ok(format!("hello {name}"))
    }

    #[tokio::test]
    async fn prints_its_golden_output() {
        let out = Out::capture();
        run(Args::parse_from(["mocking"]), &out).await.unwrap();
        microkit::golden::assert_matches("mocking", &out.text());
    }

    // Argument matching and call counts: each guest's name reaches the service once.
    // If the desk called twice, or sent another name, the mock would panic on that call;
    // if it did not call at all, the mock would panic when dropped.
    #[tokio::test]
    async fn each_guest_is_greeted_once_by_name() {
        let mut mock = MockGreet::new();
        for name in ["ada", "bo"] {
            mock.expect_say_hello().withf(move |asked| asked == name).times(1).returning(hello);
        }
        let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada", "bo"])).await;
        assert_eq!(welcome.greeted, ["hello ada", "hello bo"]);
    }

    // Sequences: guests are greeted in the order given.
    #[tokio::test]
    async fn guests_are_greeted_in_order() {
        let mut mock = MockGreet::new();
        let mut order = Sequence::new();
        for name in ["cy", "ada", "bo"] {
            mock.expect_say_hello()
                .withf(move |asked| asked == name)
                .times(1)
                .in_sequence(&mut order)
                .returning(hello);
        }
        WelcomeDesk { greeter: mock }.welcome(&guests(&["cy", "ada", "bo"])).await;
    }

    // `never`: a blank name must not cost a call.
    #[tokio::test]
    async fn blank_names_never_reach_the_service() {
        let mut mock = MockGreet::new();
        mock.expect_say_hello().never();
        let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["", "  "])).await;
        assert_eq!(welcome, Welcome { skipped: 2, ..Welcome::default() });
    }

    // Returning errors, in a sequence: Unavailable, then success on the one retry.
    #[tokio::test]
    async fn unavailable_is_retried_once_and_then_succeeds() {
        let mut mock = MockGreet::new();
        let mut order = Sequence::new();
        mock.expect_say_hello()
            .times(1)
            .in_sequence(&mut order)
            .returning(|_| Err(Status::unavailable("restarting")));
        mock.expect_say_hello().times(1).in_sequence(&mut order).returning(hello);
        let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada"])).await;
        assert_eq!(welcome.greeted, ["hello ada"]);
    }

    // The retry is bounded: a service that stays down is reported, not retried forever.
    #[tokio::test]
    async fn unavailable_twice_is_reported_after_exactly_two_calls() {
        let mut mock = MockGreet::new();
        mock.expect_say_hello().times(2).returning(|_| Err(Status::unavailable("down")));
        let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["ada"])).await;
        assert_eq!(welcome.failed, [("ada".to_owned(), Code::Unavailable)]);
    }

    // Other errors are not retried, and do not stop the desk greeting the others.
    #[tokio::test]
    async fn a_refusal_is_not_retried_and_the_others_are_still_greeted() {
        let mut mock = MockGreet::new();
        mock.expect_say_hello()
            .withf(|asked| asked == "mallory")
            .times(1)
            .returning(|_| Err(Status::permission_denied("not on the list")));
        mock.expect_say_hello().withf(|asked| asked == "ada").times(1).returning(hello);
        let welcome = WelcomeDesk { greeter: mock }.welcome(&guests(&["mallory", "ada"])).await;
        assert_eq!(welcome.greeted, ["hello ada"]);
        assert_eq!(welcome.failed, [("mallory".to_owned(), Code::PermissionDenied)]);
    }

    // What the tests above rely on: a mock whose expected call never came fails the test.
    #[tokio::test]
    #[should_panic(expected = "fewer than expected")]
    async fn a_call_that_never_happens_fails_the_test() {
        let mut mock = MockGreet::new();
        mock.expect_say_hello().times(1).returning(hello);
        // A desk given no guests makes no call: the mock's expectation is unmet.
        let mut desk = WelcomeDesk { greeter: mock };
        desk.welcome(&[]).await;
        desk.greeter.checkpoint();
    }

    // The in-process alternative: the real server, the real client, no socket.
    #[tokio::test]
    async fn the_real_greeter_in_process_greets_every_named_guest() {
        let client = in_process_client("node-x").await.unwrap();
        let desk = WelcomeDesk { greeter: GrpcGreet { client: Mutex::new(client) } };
        let welcome = desk.welcome(&guests(&["ada", "", "bo"])).await;
        assert_eq!(welcome.greeted, ["hello ada (from node-x)", "hello bo (from node-x)"]);
        assert_eq!(welcome.skipped, 1);
    }

    // The real transport gives real gRPC status codes: a server that is gone is
    // Unavailable (or Unknown), and the desk records it instead of hanging.
    #[tokio::test]
    async fn a_lost_in_process_server_is_an_error_not_a_hang() {
        let (client_end, server_end) = tokio::io::duplex(1024);
        drop(server_end); // the server is gone before the first call
        let client_end = std::sync::Mutex::new(Some(client_end));
        let connector = tower::service_fn(move |_uri| {
            let pipe = client_end.lock().unwrap().take();
            async move { pipe.map(TokioIo::new).ok_or_else(|| std::io::Error::other("used up")) }
        });
        let channel =
            Endpoint::from_static("http://in-process").connect_with_connector_lazy(connector);
        let desk =
            WelcomeDesk { greeter: GrpcGreet { client: Mutex::new(GreeterClient::new(channel)) } };
        let welcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            desk.welcome(&guests(&["ada"])),
        )
        .await
        .expect("a lost server must fail the call, not hang it");
        assert!(welcome.greeted.is_empty());
        assert_eq!(welcome.failed.len(), 1, "{welcome:?}");
    }

    #[test]
    fn an_unknown_flag_is_refused() {
        assert!(Args::try_parse_from(["mocking", "--colour"]).is_err());
    }
}
