//! # mocking: testing code that calls another service
//!
//! The code under test, a [`WelcomeDesk`] that greets guests, skips blank names and retries a
//! call once when the service is unavailable, depends on the Greeter only through a small
//! trait, [`Greet`]. It meets two stand-ins: a mockall mock, which answers as told and checks
//! every call (its argument, how many times, in what order), and the real Greeter server in
//! the same process, reached by a real tonic client whose transport is an in-memory pipe
//! (`tokio::io::duplex`): no socket, no port. The tests at the bottom are the point: each
//! fails if the desk stops calling the service as it should.
//!
//! go-micro's example swapped in a hand-written mock when a flag said so, at run time, and
//! had no tests at all: nothing checked that the code called the service as it should.
//!
//! Run it:
//!
//! ```text
//! cargo run --example mocking
//! cargo run --example mocking -- --guests ada,bo,cy
//! cargo test --example mocking
//! ```
//!
//! Prints `tests/golden/mocking.txt`; explained in `notes/mocking.md`.

use std::io;

use clap::Parser;
use futures::future::{Ready, ready};
use hyper_util::rt::TokioIo;
use microkit::greeter::HelloGreeter;
use microkit::proto::greeter::HelloRequest;
use microkit::proto::greeter::greeter_client::GreeterClient;
use mockall::Sequence;
use tokio::io::DuplexStream;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Code, Status};

// ---- the code under test, and the one seam it needs ----

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

// ---- the production implementation, and the real server in-process ----

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
    let incoming = futures::stream::iter([Ok::<_, io::Error>(server_end)]);
    tokio::spawn(Server::builder().add_service(greeter).serve_with_incoming(incoming));

    // The URI is required but unused: the connector decides where bytes go.
    let channel = Endpoint::from_static("http://in-process")
        .connect_with_connector(tower::service_fn(connect_once(client_end)))
        .await?;
    Ok(GreeterClient::new(channel))
}

/// A connector, for `tower::service_fn`, that hands tonic the client end of a pipe, once. A
/// second call would mean tonic is reconnecting, which a pipe cannot do: that is an error,
/// not a hang.
fn connect_once(pipe: DuplexStream) -> impl FnMut(Uri) -> Ready<io::Result<TokioIo<DuplexStream>>> {
    let mut pipe = Some(pipe);
    move |_| {
        ready(
            pipe.take()
                .map(TokioIo::new)
                .ok_or_else(|| io::Error::other("the in-process pipe is used up")),
        )
    }
}

// ---- the story: the same desk, against each stand-in ----

/// A mock that expects each of `names` once, in that order, and answers for it.
fn mock_expecting(names: &[&str]) -> MockGreet {
    let mut mock = MockGreet::new();
    let mut order = Sequence::new();
    for name in names.iter().map(|n| n.to_string()) {
        mock.expect_say_hello()
            .withf(move |asked| asked == name)
            .times(1)
            .in_sequence(&mut order)
            .returning(|name| Ok(format!("hello {name} (from the mock)")));
    }
    mock
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

fn print(welcome: &Welcome) {
    for reply in &welcome.greeted {
        println!("   greeted: {reply}");
    }
    for (guest, code) in &welcome.failed {
        println!("   failed: {guest}: {code:?}");
    }
    println!("   blank names skipped: {}", welcome.skipped);
}

async fn run(args: Args) -> anyhow::Result<()> {
    let guests = args.guests;
    let names: Vec<&str> = guests.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).collect();
    println!("guests: {guests:?}");

    println!("1. a mockall mock: each named guest greeted once, in order");
    let mut desk = WelcomeDesk { greeter: mock_expecting(&names) };
    print(&desk.welcome(&guests).await);
    // Panics if an expected call did not happen (an unexpected call panicked already).
    desk.greeter.checkpoint();
    println!("   the mock saw every call it expected, and no other");

    println!("2. a mock that fails: Unavailable once for the first guest, refused for the last");
    let desk = WelcomeDesk { greeter: failing_mock(&names) };
    print(&desk.welcome(&guests).await);

    println!("3. the real Greeter in-process: tonic over tokio::io::duplex, no socket");
    let desk = WelcomeDesk {
        greeter: GrpcGreet { client: Mutex::new(in_process_client("in-process").await?) },
    };
    print(&desk.welcome(&guests).await);
    Ok(())
}

// ---- the command line ----

#[derive(Parser, Debug)]
#[command(
    about = "Testing code that calls a service: mockall mocks, and the real server in-process"
)]
struct Args {
    /// The guests to greet; blank names are skipped.
    #[arg(long, value_delimiter = ',', default_value = "ada, ,bo")]
    guests: Vec<String>,
}

fn main() -> std::process::ExitCode {
    microkit::main(run)
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

    // Sequences: guests are greeted in the order given (`mock_expecting` puts one
    // expectation a guest into one `Sequence`).
    #[tokio::test]
    async fn guests_are_greeted_in_order() {
        let mock = mock_expecting(&["cy", "ada", "bo"]);
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

    // The story's two mocks, on its default guests: what steps 1 and 2 print.
    #[tokio::test]
    async fn the_story_mocks_greet_retry_and_refuse_as_they_say() {
        let guests = guests(&["ada", " ", "bo"]);
        let mut desk = WelcomeDesk { greeter: mock_expecting(&["ada", "bo"]) };
        let welcome = desk.welcome(&guests).await;
        desk.greeter.checkpoint();
        assert_eq!(welcome.greeted, ["hello ada (from the mock)", "hello bo (from the mock)"]);
        assert_eq!(welcome.skipped, 1);

        let desk = WelcomeDesk { greeter: failing_mock(&["ada", "bo"]) };
        let expected = Welcome {
            greeted: vec!["hello ada (from the mock, on the retry)".into()],
            failed: vec![("bo".into(), Code::PermissionDenied)],
            skipped: 1,
        };
        assert_eq!(desk.welcome(&guests).await, expected);
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
        let channel = Endpoint::from_static("http://in-process")
            .connect_with_connector_lazy(tower::service_fn(connect_once(client_end)));
        let desk =
            WelcomeDesk { greeter: GrpcGreet { client: Mutex::new(GreeterClient::new(channel)) } };
        let welcome = tokio::time::timeout(microkit::PATIENCE, desk.welcome(&guests(&["ada"])))
            .await
            .expect("a lost server must fail the call, not hang it");
        assert!(welcome.greeted.is_empty());
        assert_eq!(welcome.failed.len(), 1, "{welcome:?}");
    }

    #[test]
    fn the_guests_flag_splits_on_commas_and_an_unknown_flag_is_refused() {
        let args = Args::try_parse_from(["mocking", "--guests", "ada,bo,cy"]).unwrap();
        assert_eq!(args.guests, ["ada", "bo", "cy"]);
        assert!(Args::try_parse_from(["mocking", "--colour"]).is_err());
    }
}
