use super::*;
use futures::StreamExt;
use microkit::backend::BackendChoice;
use microkit::nats::{INSTALL_HINT, NatsServer};
use microkit::proto::events::UserLoggedIn;

async fn nats_backend(server: &NatsServer) -> Backend {
    let args = BackendArgs { backend: BackendChoice::Nats };
    args.connect_with(Some(&server.url())).await.unwrap()
}

fn login_event(user: &str) -> Event {
    http::login_event(&UserLoggedIn { user: user.to_owned(), method: "test".to_owned() }).unwrap()
}

#[tokio::test]
async fn prints_its_golden_output_in_process() {
    let out = Out::capture();
    run(Args::parse_from(["event", "--backend", "memory"]), &out).await.unwrap();
    microkit::golden::assert_matches("event", &out.text());
}

#[tokio::test]
async fn prints_the_same_on_nats_jetstream() {
    let server = NatsServer::start().await.expect(INSTALL_HINT);
    let out = Out::capture();
    run_all_here(&nats_backend(&server).await, &out).await.unwrap();
    microkit::golden::assert_matches("event", &out.text());
}

#[tokio::test]
async fn bad_requests_publish_nothing() {
    // A broker of its own: the process-wide one is the golden test's, running alongside.
    let broker = Arc::new(microkit::broker::MemoryBroker::new());
    let bus = Arc::new(EventBus::in_process(broker));
    let mut live = bus.subscribe().await.unwrap();
    let router = http::router(bus.clone());
    let out = Out::capture();
    for (path, body) in [
        ("/user/login", "not json"),
        ("/user/login", r#"{"user":""}"#),
        ("/events", r#"{"specversion":"1.0","id":"x","type":"t"}"#), // no source
        ("/events", r#"{"specversion":"0.1","id":"x","source":"/s","type":"t"}"#),
        ("/events", r#"{"specversion":"1.0","id":"x","source":"/s","type":"other.type"}"#),
    ] {
        post(&router, path, body, &out).await.unwrap();
    }
    assert_eq!(out.text().matches("-> 400 Bad Request: ").count(), 5, "{}", out.text());
    login(&router, "ada", "password", &out).await.unwrap();
    // Order per publisher: had a bad request published anything, it would come first.
    let first = tokio::time::timeout(PATIENCE, live.next()).await.unwrap().unwrap();
    assert_eq!(user_of(&bus::decode(&first.payload).unwrap()), "ada");
}

/// Publishes through the bus, retrying while the client reconnects after a server restart.
async fn publish_when_back(bus: &EventBus, event: &Event) {
    tokio::time::timeout(PATIENCE, async {
        while let Err(error) = bus.publish(event).await {
            tracing::info!(%error, "not yet reconnected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the client reconnects to the restarted server");
}

#[tokio::test]
async fn the_durable_consumer_loses_nothing_across_a_nats_server_restart() {
    let mut server = NatsServer::start().await.expect(INSTALL_HINT);
    let backend = nats_backend(&server).await;
    let bus = EventBus::connect(&backend).await.unwrap();
    let audit = bus.durable(AUDIT).await.unwrap();

    let mut published = Vec::new();
    let mut received = Vec::new();
    let mut publish = async |user: &str| {
        let event = login_event(user);
        publish_when_back(&bus, &event).await;
        published.push(event.id().to_owned());
    };
    for user in ["u1", "u2", "u3"] {
        publish(user).await;
    }
    // The consumer takes the first three, then "goes down" (is not asked) for two more.
    audit.take_waiting(|e| received.extend(e.map(|e| e.id().to_owned()))).await.unwrap();
    for user in ["u4", "u5"] {
        publish(user).await;
    }
    drop(audit);

    // The server goes down and comes back with the same file store.
    server.restart().await.unwrap();
    for user in ["u6", "u7"] {
        publish(user).await;
    }

    let audit = tokio::time::timeout(PATIENCE, async {
        loop {
            match bus.durable(AUDIT).await {
                Ok(consumer) => return consumer,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the durable consumer is still there after the restart");
    tokio::time::timeout(PATIENCE, async {
        while received.len() < published.len() {
            audit.take_waiting(|e| received.extend(e.map(|e| e.id().to_owned()))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {} of {} events", received.len(), published.len()));
    assert_eq!(received, published, "every event once, in order: 0 lost, 0 duplicated");
}

#[tokio::test]
async fn the_roles_need_a_shared_server() {
    // Without NATS_URL a role explains what to do instead of starting a private server
    // that nobody else could reach.
    let args = Args::parse_from(["event", "audit"]);
    let error = run_with(args, None, &Out::capture()).await.unwrap_err();
    assert!(error.to_string().contains("NATS_URL"), "{error}");
}
