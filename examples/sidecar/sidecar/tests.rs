//! The sidecar's routes, checked one by one: answers, refusals and ownership.

use super::*;
use axum::http::Method;
use broker::MemoryBroker;
use futures::StreamExt;
use microkit::PATIENCE;
use microkit_http::body_text;
use registry::MemoryRegistry;
use tower::ServiceExt;

use crate::owners::MAX_REGISTRATIONS;

/// A sidecar router over a fresh registry, and that registry.
fn sidecar() -> (Router, Arc<dyn Registry>) {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let broker = Arc::new(MemoryBroker::new());
    (router(Sidecar::new(registry.clone(), broker)), registry)
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    call_with(router, method, path, body, None).await
}

/// [`call`], with `authorization: Bearer <token>` when a token is given.
async fn call_with(
    router: &Router,
    method: Method,
    path: &str,
    body: impl Into<Body>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(body.into()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let text = body_text(response.into_body(), 1 << 20).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

fn error_of(answer: &Value) -> &str {
    answer["error"].as_str().unwrap_or_else(|| panic!("no error in {answer}"))
}

#[tokio::test]
async fn every_greeter_method_is_converted_from_and_to_json() {
    let (router, registry) = sidecar();
    let greeter = microkit::greeter::serve("greeter-3").await.unwrap();
    registry.register(&Node::new("greeter", "greeter-3", greeter.addr()), PATIENCE).await.unwrap();

    let (status, reply) =
        call(&router, Method::POST, "/greeter/SayHello", r#"{"name":"ada"}"#).await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"message": "hello ada", "node": "greeter-3", "seq": 0}))
    );
    let (_, replies) =
        call(&router, Method::POST, "/greeter/Greetings", r#"{"name":"bo","count":3}"#).await;
    let seqs: Vec<u64> =
        replies.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3], "every streamed reply, in order");
    let (_, summary) =
        call(&router, Method::POST, "/greeter/CollectNames", r#"[{"name":"a"},{"name":"b"}]"#)
            .await;
    assert_eq!(summary["count"], 2);
    let (_, chat) =
        call(&router, Method::POST, "/greeter/Chat", r#"[{"name":"x"},{"name":"y"}]"#).await;
    let messages: Vec<&str> =
        chat.as_array().unwrap().iter().map(|r| r["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["hello x", "hello y"]);
    // Missing fields take their defaults, as protobuf's do.
    let (status, reply) = call(&router, Method::POST, "/greeter/SayHello", "{}").await;
    assert_eq!((status, reply["message"].as_str()), (StatusCode::OK, Some("hello ")));
    greeter.shutdown().await.unwrap();
}

#[tokio::test]
async fn mistakes_get_the_status_that_fits_and_say_which() {
    let (router, registry) = sidecar();
    let greeter = microkit::greeter::serve("greeter-3").await.unwrap();
    registry.register(&Node::new("greeter", "greeter-3", greeter.addr()), PATIENCE).await.unwrap();

    let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", "{oops").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&answer).starts_with("bad JSON for greeter.SayHello: key must be a string"),
        "{answer}"
    );
    let (status, answer) =
        call(&router, Method::POST, "/greeter/CollectNames", r#"{"name":"a"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&answer).contains("expected a sequence"), "{answer}");
    let (status, answer) =
        call(&router, Method::POST, "/greeter/Greetings", r#"{"count":101}"#).await;
    assert_eq!(
        (status, error_of(&answer)),
        (
            StatusCode::BAD_REQUEST,
            "bad request for greeter.Greetings: count must be 1 to 100, not 101"
        )
    );
    let (status, answer) = call(&router, Method::POST, "/greeter/Nope", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&answer).starts_with("greeter has no method \"Nope\""), "{answer}");
    let (status, answer) = call(&router, Method::POST, "/ghost/Hello", "{}").await;
    assert_eq!(
        (status, error_of(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, "no node for service \"ghost\"")
    );
    let big = vec![b' '; BODY_LIMIT + 1];
    let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", big.clone()).await;
    assert_eq!(
        (status, error_of(&answer)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body over the 64 KiB limit")
    );
    let (status, _) = call(&router, Method::POST, "/registry", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    greeter.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_registered_node_that_is_down_is_a_bad_gateway_naming_its_address() {
    let (router, registry) = sidecar();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    registry.register(&Node::new("greeter", "greeter-0", closed), PATIENCE).await.unwrap();
    let (status, answer) = call(&router, Method::POST, "/greeter/SayHello", "{}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let error = error_of(&answer);
    assert!(error.starts_with(&format!("greeter at {closed} unreachable: ")), "{answer}");
    assert!(error.to_lowercase().contains("refused"), "the cause is kept: {answer}");
}

#[tokio::test]
async fn calls_to_a_node_reuse_one_connection() {
    let (router, registry) = sidecar();
    let greeter = microkit::greeter::serve("greeter-3").await.unwrap();
    // A relay in front of the node that counts the connections made to it.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let target = greeter.addr();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    registry.register(&Node::new("greeter", "greeter-3", relay_addr), PATIENCE).await.unwrap();
    for name in ["a", "b", "c"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let (status, _) = call(&router, Method::POST, "/greeter/SayHello", body).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection, reused");
    greeter.shutdown().await.unwrap();
}

#[tokio::test]
async fn registry_routes_register_list_and_deregister_http_programs() {
    let (router, _) = sidecar();
    let join = r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":5}"#;
    let (status, answer) = call(&router, Method::POST, "/registry", join).await;
    let token = answer["token"].as_str().expect("the first registrant gets a token");
    assert_eq!(token.len(), 32, "a v4 UUID's 128 bits, in hex: {token}");
    assert_eq!(
        (status, answer.clone()),
        (StatusCode::OK, json!({"registered": "py/py-1", "ttl_secs": 5, "token": token}))
    );
    let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
    assert_eq!(nodes[0]["address"], "127.0.0.1:9");
    assert_eq!(nodes[0]["metadata"]["protocol"], "http");
    let leave = "/registry/py/py-1";
    let (status, _) = call_with(&router, Method::DELETE, leave, Body::empty(), Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
    assert_eq!(nodes, json!([]));
}

#[tokio::test]
async fn bad_registrations_are_refused_saying_why() {
    let (router, _) = sidecar();
    let cases = [
        (r#"{"service":"py","id":"py-1"}"#, "missing field `address`"),
        (r#"{"service":"py","id":"py-1","address":"nowhere"}"#, "is not ip:port"),
        (r#"{"service":"py","id":"py-1","address":"10.1.2.3:80"}"#, "is not on loopback"),
        (
            r#"{"service":"","id":"py-1","address":"127.0.0.1:9"}"#,
            "a service name must be 1 to 128 bytes",
        ),
        (
            r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":0}"#,
            "ttl_secs must be 1 to 600",
        ),
        (
            // The NATS registry's limit: a TTL it would refuse is refused here first.
            r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":601}"#,
            "ttl_secs must be 1 to 600",
        ),
        (
            r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","colour":"red"}"#,
            "unknown field `colour`",
        ),
        ("[", "bad JSON for /registry"),
    ];
    for (body, reason) in cases {
        let (status, answer) = call(&router, Method::POST, "/registry", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&answer).contains(reason), "{body}: {answer}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_program_that_stops_re_registering_expires() {
    let (router, _) = sidecar();
    let join = r#"{"service":"py","id":"py-1","address":"127.0.0.1:9","ttl_secs":3}"#;
    let (_, answer) = call(&router, Method::POST, "/registry", join).await;
    let token = answer["token"].as_str();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = call_with(&router, Method::POST, "/registry", join, token).await; // its heartbeat
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1, "alive: it re-registered in time");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, nodes) = call(&router, Method::GET, "/registry/py", Body::empty()).await;
    assert_eq!(nodes, json!([]), "silent for longer than its TTL: gone");
}

#[tokio::test]
async fn an_http_program_is_called_with_the_json_as_is() {
    let (router, registry) = sidecar();
    let program =
        microkit_http::start(crate::story::shouter("http://127.0.0.1:9".into())).await.unwrap();
    let mut node = Node::new("shouter", "s-1", program.addr());
    node.metadata.insert(PROTOCOL.into(), HTTP.into());
    registry.register(&node, PATIENCE).await.unwrap();
    let (status, answer) = call(&router, Method::POST, "/shouter/upper", r#"{"text":"hi"}"#).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"text": "HI", "by": "shouter-1"})));
    // Its own errors come back as its own: here axum's 404 for a route it lacks.
    let request = Request::post("/shouter/missing").body(Body::from("{}")).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    program.shutdown().await.unwrap();
}

#[tokio::test]
async fn publishing_is_accepted_once_the_broker_has_it_and_reaches_subscribers() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let broker = MemoryBroker::new();
    let mut listener = broker.connect_another().subscribe("orders.created", None).await.unwrap();
    let router = router(Sidecar::new(registry, Arc::new(broker.clone())));

    let request = Request::post("/broker/orders.created")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"id":7}"#))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let message = tokio::time::timeout(PATIENCE, listener.next()).await.unwrap().unwrap();
    assert_eq!(&message.payload[..], br#"{"id":7}"#);
    assert_eq!(message.headers["content-type"], "application/json");

    for topic in ["a%20b", "orders.*", "orders.%3E", "a..b"] {
        let (status, answer) = call(&router, Method::POST, &format!("/broker/{topic}"), "{}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{topic}");
        assert!(error_of(&answer).starts_with("invalid topic"), "{answer}");
    }
    let big = vec![b'x'; BODY_LIMIT + 1];
    assert_eq!(
        call(&router, Method::POST, "/broker/orders", big).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    broker.drain().await.unwrap();
    let (status, answer) = call(&router, Method::POST, "/broker/orders.created", "{}").await;
    assert_eq!(
        (status, error_of(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, "the broker is closed")
    );
}

fn join(service: &str, id: &str, address: &str) -> String {
    json!({ "service": service, "id": id, "address": address, "ttl_secs": 5 }).to_string()
}

#[tokio::test]
async fn a_service_belongs_to_its_first_registrant() {
    let (router, registry) = sidecar();
    // A gRPC service that joined the registry by itself: not the sidecar's to hand out.
    registry.register(&Node::new("greeter", "greeter-1", "127.0.0.1:7"), PATIENCE).await.unwrap();
    let evil = join("greeter", "0-evil", "127.0.0.1:9");
    let (status, answer) = call(&router, Method::POST, "/registry", evil).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(error_of(&answer).contains("belongs to its first registrant"), "{answer}");
    let (status, _) =
        call(&router, Method::DELETE, "/registry/greeter/greeter-1", Body::empty()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let greeters = registry.nodes("greeter").await.unwrap();
    assert_eq!(greeters.len(), 1, "no node added or removed: {greeters:?}");

    // A program's service: its token adds and renews nodes, no token or another does not.
    let (status, answer) =
        call(&router, Method::POST, "/registry", join("py", "py-1", "127.0.0.1:9")).await;
    assert_eq!(status, StatusCode::OK);
    let token = answer["token"].as_str().unwrap().to_owned();
    for wrong in [None, Some("guess"), Some(&token[1..])] {
        let body = join("py", "py-evil", "127.0.0.1:10");
        let (status, answer) = call_with(&router, Method::POST, "/registry", body, wrong).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{wrong:?}: {answer}");
        assert!(error_of(&answer).contains("authorization: Bearer"), "{answer}");
        let leave = "/registry/py/py-1";
        let (status, _) = call_with(&router, Method::DELETE, leave, Body::empty(), wrong).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{wrong:?}");
    }
    let ids: Vec<String> = registry.nodes("py").await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["py-1"]);
    for (id, address) in [("py-1", "127.0.0.1:9"), ("py-2", "127.0.0.1:11")] {
        let body = join("py", id, address);
        let (status, answer) =
            call_with(&router, Method::POST, "/registry", body, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer.get("token"), None, "a token is handed out once");
    }

    // Once its last node leaves, the name is free for the next first registrant.
    for id in ["py-1", "py-2"] {
        let leave = format!("/registry/py/{id}");
        let (status, _) =
            call_with(&router, Method::DELETE, &leave, Body::empty(), Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, answer) =
        call(&router, Method::POST, "/registry", join("py", "py-3", "127.0.0.1:12")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(answer["token"].as_str(), Some(token.as_str()), "a new owner, a new token");
}

#[tokio::test]
async fn registrations_are_bounded() {
    let (router, _) = sidecar();
    let mut tokens = Vec::new();
    for i in 0..MAX_REGISTRATIONS {
        let body = join(&format!("py{i}"), "n", "127.0.0.1:9");
        let (status, answer) = call(&router, Method::POST, "/registry", body).await;
        assert_eq!(status, StatusCode::OK);
        tokens.push(answer["token"].as_str().unwrap().to_owned());
    }
    let (status, answer) =
        call(&router, Method::POST, "/registry", join("py", "one-more", "127.0.0.1:9")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(error_of(&answer).contains(&MAX_REGISTRATIONS.to_string()), "{answer}");
    // Heartbeats of those it holds still pass, and a leave makes room.
    let again = join("py0", "n", "127.0.0.1:9");
    let token = Some(tokens[0].as_str());
    let (status, _) = call_with(&router, Method::POST, "/registry", again, token).await;
    assert_eq!(status, StatusCode::OK);
    call_with(&router, Method::DELETE, "/registry/py0/n", Body::empty(), token).await;
    let body = join("py", "one-more", "127.0.0.1:9");
    assert_eq!(call(&router, Method::POST, "/registry", body).await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn an_expired_registration_no_longer_counts() {
    let (router, _) = sidecar();
    for i in 0..MAX_REGISTRATIONS {
        call(&router, Method::POST, "/registry", join(&format!("py{i}"), "n", "127.0.0.1:9")).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // past their TTL of 5 s
    let body = join("py0", "late", "127.0.0.1:9");
    let (status, answer) = call(&router, Method::POST, "/registry", body).await;
    assert_eq!(status, StatusCode::OK, "room again, and py0's name is free: {answer}");
}

#[tokio::test]
async fn calls_take_turns_over_the_nodes_of_a_service() {
    let (router, registry) = sidecar();
    let mut greeters = Vec::new();
    for id in ["greeter-1", "greeter-2"] {
        let greeter = microkit::greeter::serve(id).await.unwrap();
        registry.register(&Node::new("greeter", id, greeter.addr()), PATIENCE).await.unwrap();
        greeters.push(greeter);
    }
    let mut answered = Vec::new();
    for _ in 0..4 {
        let (_, reply) = call(&router, Method::POST, "/greeter/SayHello", "{}").await;
        answered.push(reply["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered, ["greeter-1", "greeter-2", "greeter-1", "greeter-2"]);
}

#[tokio::test]
async fn names_too_long_or_not_a_plain_word_are_refused_before_any_backend_sees_them() {
    let (router, registry) = sidecar();
    let mut node = Node::new("shouter", "s-1", "127.0.0.1:9");
    node.metadata.insert(PROTOCOL.into(), HTTP.into());
    registry.register(&node, PATIENCE).await.unwrap();
    let long = "x".repeat(4096);
    let requests = [
        (Method::POST, format!("/{long}/SayHello"), "{}".to_owned()),
        (Method::POST, format!("/shouter/{long}"), "{}".to_owned()),
        (Method::POST, "/shouter/a%20b".to_owned(), "{}".to_owned()),
        // Decoded, each would change the URL the program is sent: a query, a fragment,
        // another path.
        (Method::POST, "/shouter/a%3Fx=injected".to_owned(), "{}".to_owned()),
        (Method::POST, "/shouter/a%23x".to_owned(), "{}".to_owned()),
        (Method::POST, "/shouter/a%2Fx".to_owned(), "{}".to_owned()),
        (Method::POST, "/shouter/..".to_owned(), "{}".to_owned()),
        (Method::GET, format!("/registry/{long}"), String::new()),
        (Method::DELETE, format!("/registry/py/{long}"), String::new()),
        (Method::POST, "/registry".to_owned(), join(&long, "py-1", "127.0.0.1:9")),
        (Method::POST, "/registry".to_owned(), join("py", &long, "127.0.0.1:9")),
        (Method::POST, format!("/broker/{long}"), "{}".to_owned()),
    ];
    for (method, path, body) in requests {
        let shown = format!("{method} {}", &path[..path.len().min(40)]);
        let (status, answer) = call(&router, method, &path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {answer}");
    }
}
