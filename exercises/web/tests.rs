//! The story, checked, and the command line's bounds.

use std::sync::Arc;

use clap::Parser;
use registry::{MemoryRegistry, Registry};

use crate::Args;
use crate::edge::Edge;
use crate::story::{Seen, demo};

#[test]
fn a_count_out_of_range_is_refused_by_the_parser() {
    for count in ["0", "101", "many"] {
        assert!(Args::try_parse_from(["web", "--count", count]).is_err(), "{count}");
    }
}

fn seen(status: u16, lines: &[&str]) -> Seen {
    Seen { status, lines: lines.iter().map(|l| l.to_string()).collect() }
}

#[tokio::test]
async fn the_story_browses_streams_and_sees_the_service_leave() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let mut edge = Edge::start(&registry, 0).await.unwrap();
    let story = demo(&mut edge, 2).await.unwrap();
    let gets: Vec<(&str, &Seen)> = story.gets.iter().map(|(p, s)| (p.as_str(), s)).collect();
    let missing = |name| format!("no web service named \"{name}\" is registered");
    assert_eq!(
        gets,
        [
            ("/", &seen(200, &["hello: 1 node(s) -> /hello/"])),
            ("/hello/greet?name=ada", &seen(200, &["hello ada, from hello-1"])),
            ("/nobody/greet", &seen(404, &[&missing("nobody")])),
            ("/hello", &seen(308, &["location: /hello/"])),
            ("/hello/", &seen(200, &["html page: greetings over a websocket"])),
            // After hello-1 left:
            ("/", &seen(200, &["no web services registered"])),
            ("/hello/greet?name=ada", &seen(404, &[&missing("hello")])),
        ]
    );
    assert_eq!(
        story.greetings,
        ["hello ada (seq 1, from greeter-1)", "hello ada (seq 2, from greeter-1)"]
    );
    assert_eq!(story.closed, "1000 2 messages");
    // Forwarded: the greet, the page and the websocket; the last greet found no node.
    assert_eq!(edge.stop().await.unwrap(), (3, 3));
}
