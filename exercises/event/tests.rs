use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use bytes::Bytes;
use clap::Parser;
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use microkit::PATIENCE;
use microkit::proto::events::UserLoggedIn;
use microkit_backend::{Backend, BackendArgs, BackendChoice};
use microkit_testing::NatsServer;

use crate::bus::{self, EventBus};
use crate::story::{AUDIT, Got, Told, login, post, run_all_here, user_of};
use crate::{Args, http, run};

async fn memory_backend() -> Backend {
    BackendArgs { backend: BackendChoice::Memory }.connect_with(None).await.unwrap()
}

async fn nats_backend(server: &NatsServer) -> Backend {
    let args = BackendArgs { backend: BackendChoice::Nats };
    args.connect_with(Some(&server.url())).await.unwrap()
}

fn login_event(user: &str) -> Event {
    http::login_event(&UserLoggedIn { user: user.to_owned(), method: "test".to_owned() }).unwrap()
}

/// What the story must end with on either backend: the notifier lost the two logins
/// published while it was down, the durable consumer lost nothing.
fn assert_the_story_holds(told: &Told) {
    let users = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    let before = users(&["ada", "grace", "barbara"]);
    assert_eq!(told.notifier, Got { before: before.clone(), after: users(&["dennis"]) });
    assert_eq!(told.audit, Got { before, after: users(&["ken", "margaret", "dennis"]) });
    assert_eq!(told.duplicates, 0);
}

#[tokio::test]
async fn the_durable_consumer_misses_nothing_in_memory() {
    assert_the_story_holds(&run_all_here(&memory_backend().await).await.unwrap());
}

#[tokio::test]
async fn the_durable_consumer_misses_nothing_on_nats_jetstream() {
    let server = NatsServer::start().await.unwrap();
    assert_the_story_holds(&run_all_here(&nats_backend(&server).await).await.unwrap());
}

#[tokio::test]
async fn a_login_becomes_a_cloudevent_with_the_spec_attributes() {
    let event = login_event("ada");
    assert_eq!(event.specversion(), cloudevents::event::SpecVersion::V10);
    assert_eq!((event.ty(), event.source().as_str()), (http::LOGIN_TYPE, http::LOGIN_SOURCE));
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert!(!event.id().is_empty() && event.time().is_some());
    assert_ne!(event.id(), login_event("ada").id(), "an id per event");
    assert_eq!(user_of(&event), "ada");
}

#[tokio::test]
async fn bad_requests_publish_nothing() {
    let bus = Arc::new(EventBus::connect(&memory_backend().await).await.unwrap());
    let mut live = bus.subscribe().await.unwrap();
    let router = http::router(bus.clone());
    for (path, body) in [
        ("/user/login", "not json"),
        ("/user/login", r#"{"user":""}"#),
        ("/events", r#"{"specversion":"1.0","id":"x","type":"t"}"#), // no source
        ("/events", r#"{"specversion":"0.1","id":"x","source":"/s","type":"t"}"#),
        ("/events", r#"{"specversion":"1.0","id":"x","source":"/s","type":"other.type"}"#),
    ] {
        assert_eq!(post(&router, path, body).await.unwrap(), StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(login(&router, "ada", "password").await.unwrap(), StatusCode::ACCEPTED);
    // Order per publisher: had a bad request published anything, it would come first.
    let first = tokio::time::timeout(PATIENCE, live.next()).await.unwrap().unwrap();
    assert_eq!(user_of(&bus::decode(&first.payload).unwrap()), "ada");
}

#[tokio::test]
async fn a_durable_consumer_waits_for_the_next_event_and_gives_up_in_time() {
    let bus = EventBus::connect(&memory_backend().await).await.unwrap();
    let audit = bus.durable(AUDIT).await.unwrap();
    let mut got = Vec::new();
    let (taken, ()) = tokio::join!(
        audit.take(1, PATIENCE, |event| got.extend(event.as_ref().map(user_of))),
        async { bus.publish(&login_event("late")).await.unwrap() },
    );
    assert_eq!((taken.unwrap(), got), (1, vec!["late".to_owned()]), "woken by the publish");
    let nothing = audit.take(1, Duration::from_millis(20), |_| panic!("nothing was published"));
    assert_eq!(nothing.await.unwrap(), 0, "an empty stream ends the wait at its bound");
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
    let mut server = NatsServer::start().await.unwrap();
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
    let record = |e: Option<Event>| received.extend(e.map(|e| e.id().to_owned()));
    assert_eq!(audit.take(3, PATIENCE, record).await.unwrap(), 3);
    for user in ["u4", "u5"] {
        publish(user).await;
    }
    drop(audit);

    // The server goes down and comes back with the same file store.
    server.restart().await.unwrap();
    for user in ["u6", "u7"] {
        publish(user).await;
    }

    // Binding again is a request to the server: retried until the client has reconnected.
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
    let record = |e: Option<Event>| received.extend(e.map(|e| e.id().to_owned()));
    assert_eq!(audit.take(4, PATIENCE, record).await.unwrap(), 4, "{received:?}");
    assert_eq!(received, published, "every event once, in order: 0 lost, 0 duplicated");
}

/// Two deliveries of one event, as a redelivery after a lost ack looks to a consumer: the
/// same CloudEvent stored twice, here by publishing it straight to the stream without the
/// `Nats-Msg-Id` that the bus's own publish would add.
#[tokio::test]
async fn a_second_delivery_of_an_event_is_dropped_and_counted() {
    let server = NatsServer::start().await.unwrap();
    let backend = nats_backend(&server).await;
    let bus = EventBus::connect(&backend).await.unwrap();
    let audit = bus.durable(AUDIT).await.unwrap();
    let Backend::Nats { client, .. } = &backend else { panic!("not NATS") };
    let jetstream = async_nats::jetstream::new(client.clone());
    let (twice, once) = (login_event("twice"), login_event("once"));
    for event in [&twice, &twice, &once] {
        let json = Bytes::from(serde_json::to_vec(event).unwrap());
        jetstream.publish(bus::SUBJECT, json).await.unwrap().await.unwrap();
    }
    let mut ids = Vec::new();
    let record = |e: Option<Event>| ids.extend(e.map(|e| e.id().to_owned()));
    assert_eq!(audit.take(2, PATIENCE, record).await.unwrap(), 2);
    assert_eq!(ids, [twice.id(), once.id()], "each event handled once");
    assert_eq!(audit.duplicates(), 1);

    // Bound again in this process, the consumer still knows what it handled: `once` comes
    // again (dropped), then a new event (handled).
    let after = login_event("after");
    for event in [&once, &after] {
        let json = Bytes::from(serde_json::to_vec(event).unwrap());
        jetstream.publish(bus::SUBJECT, json).await.unwrap().await.unwrap();
    }
    let again = bus.durable(AUDIT).await.unwrap();
    let mut ids = Vec::new();
    let record = |e: Option<Event>| ids.extend(e.map(|e| e.id().to_owned()));
    assert_eq!(again.take(1, PATIENCE, record).await.unwrap(), 1);
    assert_eq!((ids, again.duplicates()), (vec![after.id().to_owned()], 2));
}

/// A delivery that never reached the consumer (here: a pull by another client of the same
/// durable consumer, never acknowledged, as a pull lost in a partition is) comes again once
/// the ack wait has passed, not after the server's default 30 s.
#[tokio::test]
async fn an_event_delivered_but_never_acknowledged_comes_again_after_the_ack_wait() {
    let server = NatsServer::start().await.unwrap();
    let backend = nats_backend(&server).await;
    let bus = EventBus::connect(&backend).await.unwrap();
    let audit = bus.durable(AUDIT).await.unwrap();
    let lost = login_event("lost");
    bus.publish(&lost).await.unwrap();

    // Another pull of the same consumer takes the event and never acknowledges it.
    let Backend::Nats { client, .. } = &backend else { panic!("not NATS") };
    let jetstream = async_nats::jetstream::new(client.clone());
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        jetstream.get_stream(bus::STREAM).await.unwrap().get_consumer(AUDIT).await.unwrap();
    let mut taken = consumer.fetch().max_messages(1).messages().await.unwrap();
    let delivered_at = tokio::time::Instant::now();
    assert!(taken.next().await.unwrap().is_ok(), "the first delivery");

    let mut ids = Vec::new();
    let record = |e: Option<Event>| ids.extend(e.map(|e| e.id().to_owned()));
    let limit = bus::ACK_WAIT + PATIENCE;
    assert_eq!(audit.take(1, limit, record).await.unwrap(), 1, "delivered again within {limit:?}");
    assert_eq!(ids, [lost.id()]);
    let waited = delivered_at.elapsed();
    assert!(waited >= bus::ACK_WAIT - Duration::from_millis(500), "came again after {waited:?}");
}

#[tokio::test]
async fn the_roles_need_a_shared_server() {
    // A role explains what to do instead of running alone on a backend nobody else shares.
    let args = Args::parse_from(["event", "--backend", "memory", "audit"]);
    let error = run(args).await.unwrap_err();
    assert!(error.to_string().contains("NATS_URL"), "{error}");
}

/// Waits until the backend's own NATS client is (or is not) connected: an outage as the
/// example's client sees it, not only as the server's process table does.
async fn until_connected(backend: &Backend, connected: bool) {
    let Backend::Nats { client, .. } = backend else { panic!("not NATS") };
    let state = || client.connection_state() == async_nats::connection::State::Connected;
    tokio::time::timeout(PATIENCE, async {
        while state() != connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the client never became connected={connected}"));
}

/// A CloudEvent as another system would POST it to `/events`, with its own id.
fn sso_login(id: &str, user: &str) -> String {
    let ty = http::LOGIN_TYPE;
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/sso","type":"{ty}","data":{{"user":"{user}"}}}}"#
    )
}

/// A client that retries until its event is accepted, as one should after a 503.
async fn post_until_accepted(router: &Router, body: &str) {
    tokio::time::timeout(PATIENCE, async {
        while post(router, "/events", body).await.unwrap() != StatusCode::ACCEPTED {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("accepted once NATS is back");
}

#[tokio::test]
async fn a_503_means_not_stored_and_a_retried_id_is_stored_once() {
    let mut server = NatsServer::start().await.unwrap();
    let backend = nats_backend(&server).await;
    let bus = Arc::new(EventBus::connect(&backend).await.unwrap());
    let audit = bus.durable(AUDIT).await.unwrap();
    let router = http::router(bus.clone());
    let mut ids = Vec::new();
    let mut take = async |count| {
        let record = |e: Option<Event>| ids.extend(e.map(|e| e.id().to_owned()));
        audit.take(count, PATIENCE, record).await.unwrap();
        std::mem::take(&mut ids)
    };

    server.stop().await.unwrap();
    until_connected(&backend, false).await;
    let refused = post(&router, "/events", &sso_login("sso-1", "ada")).await.unwrap();
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);

    server.restart().await.unwrap();
    until_connected(&backend, true).await;
    // What the client held back during the outage reaches the server ahead of this one.
    post_until_accepted(&router, &sso_login("sso-2", "grace")).await;
    assert_eq!(take(1).await, ["sso-2"], "the event answered 503 was stored after all");

    // The client retries sso-1, twice, as if the first 202 had been lost on its way back.
    post_until_accepted(&router, &sso_login("sso-1", "ada")).await;
    post_until_accepted(&router, &sso_login("sso-1", "ada")).await;
    post_until_accepted(&router, &sso_login("sso-3", "linus")).await;
    assert_eq!(take(2).await, ["sso-1", "sso-3"], "a retried id is stored once");
}

#[test]
fn a_504_says_the_outcome_is_unknown_and_a_retry_with_the_same_id_is_safe() {
    use async_nats::jetstream::context::{PublishError as JetStreamError, PublishErrorKind};
    let event = serde_json::from_str(&sso_login("sso-9", "ada")).unwrap();
    let timed_out = JetStreamError::new(PublishErrorKind::TimedOut);
    let answer = http::not_accepted(&event, bus::PublishError::Unconfirmed(timed_out));
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    let reason = answer.reason;
    assert!(reason.starts_with("event sso-9 from /sso: unknown whether"), "{reason}");
    assert!(reason.contains("again with the same source and id is safe"), "{reason}");
    assert!(!reason.contains("not stored"), "{reason}");

    // Nothing sent: then, and only then, "not stored".
    let answer = http::not_accepted(&event, bus::PublishError::Unreachable);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.reason.contains("not stored"), "{}", answer.reason);
}

#[tokio::test]
async fn a_retried_id_is_stored_once_in_memory_too() {
    let bus = Arc::new(EventBus::connect(&memory_backend().await).await.unwrap());
    let audit = bus.durable(AUDIT).await.unwrap();
    let router = http::router(bus.clone());
    for body in [sso_login("sso-1", "ada"), sso_login("sso-1", "ada"), sso_login("sso-2", "ken")] {
        assert_eq!(post(&router, "/events", &body).await.unwrap(), StatusCode::ACCEPTED);
    }
    let mut ids = Vec::new();
    audit.take(2, PATIENCE, |e| ids.extend(e.map(|e| e.id().to_owned()))).await.unwrap();
    assert_eq!(ids, ["sso-1", "sso-2"]);
}

#[tokio::test]
async fn what_the_cloudevents_spec_forbids_is_refused() {
    let bus = Arc::new(EventBus::connect(&memory_backend().await).await.unwrap());
    let mut live = bus.subscribe().await.unwrap();
    let router = http::router(bus.clone());
    let ty = http::LOGIN_TYPE;
    for (body, reason) in [
        (format!(r#"{{"specversion":"1.0","id":"","source":"/s","type":"{ty}"}}"#), "id"),
        (format!(r#"{{"specversion":"1.0","id":"x","source":"","type":"{ty}"}}"#), "source"),
        (
            format!(r#"{{"specversion":"1.0","id":"x","source":"/s","type":"{ty}","subject":""}}"#),
            "subject",
        ),
        (format!(r#"{{"specversion":"0.3","id":"x","source":"/s","type":"{ty}"}}"#), "0.3"),
        (
            format!(r#"{{"specversion":"1.0","id":"x","source":"/s","type":"{ty}","Tenant":"a"}}"#),
            "Tenant",
        ),
        (
            format!(
                r#"{{"specversion":"1.0","id":"x","source":"/s","type":"{ty}","ten_ant":"a"}}"#
            ),
            "ten_ant",
        ),
    ] {
        assert_eq!(
            post(&router, "/events", &body).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "{body}"
        );
        assert!(http::check(&serde_json::from_str(&body).unwrap()).unwrap_err().contains(reason));
    }
    let fine =
        format!(r#"{{"specversion":"1.0","id":"x","source":"/s","type":"{ty}","tenant2":"a"}}"#);
    assert_eq!(post(&router, "/events", &fine).await.unwrap(), StatusCode::ACCEPTED);
    // Order per publisher: had a refused event been published, it would come first.
    let first = tokio::time::timeout(PATIENCE, live.next()).await.unwrap().unwrap();
    assert_eq!(bus::decode(&first.payload).unwrap().id(), "x");
}

#[tokio::test]
async fn an_event_over_the_bound_is_413_on_both_backends() {
    let server = NatsServer::start().await.unwrap();
    let big = |bytes: usize| sso_login("big", &"a".repeat(bytes));
    for backend in [memory_backend().await, nats_backend(&server).await] {
        let router = http::router(Arc::new(EventBus::connect(&backend).await.unwrap()));
        // Just over the bound; and over NATS's own message limit (1 MiB), which the server
        // would refuse as "could not publish".
        for body in [big(bus::MAX_EVENT_BYTES), big(1 << 20)] {
            let status = post(&router, "/events", &body).await.unwrap();
            assert_eq!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{} on {}",
                body.len(),
                backend.name()
            );
        }
        // A login whose event, not its body, goes over the bound.
        let login =
            format!(r#"{{"user":"{}","method":"m"}}"#, "a".repeat(bus::MAX_EVENT_BYTES - 40));
        let status = post(&router, "/user/login", &login).await.unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", backend.name());
        assert_eq!(post(&router, "/events", &big(1000)).await.unwrap(), StatusCode::ACCEPTED);
    }
}
