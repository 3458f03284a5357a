//! The same desk, against each stand-in.

use mockall::Sequence;
use tokio::sync::Mutex;
use tonic::Status;

use crate::Args;
use crate::in_process::{GrpcGreet, in_process_client};
use crate::seam::{MockGreet, Welcome, WelcomeDesk};

pub async fn run(args: Args) -> anyhow::Result<()> {
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

/// A mock that expects each of `names` once, in that order, and answers for it.
pub fn mock_expecting(names: &[&str]) -> MockGreet {
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
pub fn failing_mock(names: &[&str]) -> MockGreet {
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
