//! The proxy as a process (`proxy proxy`) over a private nats-server, in front of services
//! this test writes and registers itself: what a caller sends arrives as it was sent
//! (metadata, deadline), what a node answers comes back as it was (headers, status,
//! trailers), what cannot be routed is refused, and a node that dies mid-stream fails the
//! stream instead of hanging it. Python's grpcio calls both of the example's services
//! through it, with stubs it generates from the repository's protos, hears a node's refusals
//! with their codes and messages, and checks the proxy's own health. Then the faults: a hung
//! service, a loop through the registry, unknown names, connections that send nothing or
//! answer no ping, the per-connection stream limit, the file limit, and a stop with calls
//! that will not end.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::uri::PathAndQuery;
use microkit::proto::greeter::greeter_client::GreeterClient;
use microkit::proto::greeter::greeter_server::{Greeter, GreeterServer};
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use microkit::server::RunningServer;
use microkit_testing::NatsServer;
use registry::Registered;
use registry::{NatsRegistry, Registry};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// Only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(30);
/// Calls named "hold" that have reached the node (and now hang there), and a signal on each.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static HELD_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();
const GREETER: &str = "greeter.v1.Greeter";

/// A Greeter that tells what reached it: the caller's metadata and deadline come back in
/// the reply, and it answers with headers, errors and trailers of its own.
#[derive(Clone)]
struct Echo;

fn metadata(map: &MetadataMap, key: &str) -> String {
    map.get(key).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
}

#[tonic::async_trait]
impl Greeter for Echo {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let md = request.metadata();
        let trace = md.get_bin("x-trace-bin").and_then(|v| v.to_bytes().ok()).unwrap_or_default();
        let message = format!(
            "user={} trace={:?} timeout={}",
            metadata(md, "x-user"),
            trace.as_ref(),
            metadata(md, "grpc-timeout")
        );
        match request.get_ref().name.as_str() {
            "fail" => return Err(Status::not_found("no such name")),
            "invalid" => return Err(Status::invalid_argument("the name is invalid")),
            "internal" => return Err(Status::internal("something broke inside")),
            "slow" => tokio::time::sleep(PATIENCE * 2).await,
            "hold" => {
                HELD.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                HELD_CHANGED.notify_waiters();
                tokio::time::sleep(PATIENCE * 2).await
            }
            _ => {}
        }
        let mut response = Response::new(HelloReply { message, node: "echo".into(), seq: 0 });
        response.metadata_mut().insert("x-served-by", MetadataValue::from_static("echo"));
        Ok(response)
    }

    /// `count` replies, then an error whose status and metadata travel in the trailers;
    /// `count` 0: replies until the caller (or the node) goes away.
    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<microkit::greeter::ReplyStream>, Status> {
        let GreetingsRequest { count, interval_ms, .. } = request.into_inner();
        let limit = if count == 0 { u32::MAX } else { count };
        let replies = futures::stream::iter(1..=limit).then(move |seq| async move {
            tokio::time::sleep(Duration::from_millis(interval_ms.into())).await;
            Ok(HelloReply { message: "hi".into(), node: "echo".into(), seq })
        });
        let mut trailer = MetadataMap::new();
        trailer.insert("x-reason", MetadataValue::from_static("done"));
        let end = Status::with_metadata(Code::Aborted, "enough", trailer);
        Ok(Response::new(Box::pin(replies.chain(futures::stream::iter([Err(end)])))))
    }
}

/// A private NATS, its registry, and the proxy role running against it.
struct Setup {
    nats: NatsServer,
    registry: Arc<dyn Registry>,
    proxy: Role,
    addr: String,
    channel: Channel,
}

/// A role of the example running as a process, and the rest of its stdout.
struct Role {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Role {
    /// Asks it to stop as every long-running role is asked (SIGTERM); its last line and
    /// whether it exited 0.
    async fn stop(mut self) -> (String, bool) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let mut last = String::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(PATIENCE, self.stdout.next_line()).await
        {
            last = line;
        }
        let exit = tokio::time::timeout(PATIENCE, self.child.wait()).await.unwrap().unwrap();
        (last, exit.success())
    }
}

async fn setup(extra: &[&str]) -> Setup {
    setup_with(&[], extra).await
}

/// The proxy role started as `wrapper` (a shell line, the binary and arguments after it).
async fn setup_with(wrapper: &[&str], extra: &[&str]) -> Setup {
    let nats = NatsServer::start().await.unwrap();
    let client = microkit_backend::connect(&nats.url(), Default::default()).await.unwrap();
    let registry: Arc<dyn Registry> = Arc::new(NatsRegistry::new(client));
    let args = ["proxy", "--listen", "127.0.0.1:0"];
    let (proxy, addr) = spawn_role_with(&nats, wrapper, &args, extra).await;
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    Setup { nats, registry, proxy, addr, channel }
}

/// Runs a role of the example; returns it and the address its first line names.
async fn spawn_role(nats: &NatsServer, args: &[&str], extra: &[&str]) -> (Role, String) {
    spawn_role_with(nats, &[], args, extra).await
}

/// [`spawn_role`], the binary run by `wrapper` when it names one (`sh -c '...' <binary>`).
async fn spawn_role_with(
    nats: &NatsServer,
    wrapper: &[&str],
    args: &[&str],
    extra: &[&str],
) -> (Role, String) {
    let mut command = common::example("proxy");
    if let [program, before @ ..] = wrapper {
        let binary = command.as_std().get_program().to_owned();
        let mut wrapped = tokio::process::Command::new(program);
        wrapped.args(before).arg(binary);
        wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        wrapped.kill_on_drop(true).env_remove("RUST_LOG").env_remove("MICRO_BACKEND");
        command = wrapped;
    }
    command.env("NATS_URL", nats.url()).args(args).args(extra);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap();
    let first = first.expect("the role prints its address");
    // "proxy listening on 127.0.0.1:<port>; ..." or "calc-a serving calc.v1.Calculator on ..."
    let addr = first.split(" on ").nth(1).unwrap().split(';').next().unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{first}");
    (Role { child, stdout: lines }, addr)
}

async fn echo_node(registry: &Arc<dyn Registry>, id: &str) -> Registered {
    let server = RunningServer::start(Routes::new(GreeterServer::new(Echo))).await.unwrap();
    Registered::new(registry, server, GREETER, id, Duration::from_secs(30)).await.unwrap()
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

/// A unary gRPC call by hand over HTTP/2: its response headers and trailers, merged.
async fn raw_unary(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    message: &impl prost::Message,
) -> http::HeaderMap {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let executor = hyper_util::rt::TokioExecutor::new();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(executor, io).await.unwrap();
    tokio::spawn(connection);
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8]; // not compressed
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(frame));
    let response = sender.send_request(request.body(body).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let mut answer = parts.headers;
    if let Some(trailers) = body.collect().await.unwrap().trailers() {
        answer.extend(trailers.clone());
    }
    answer
}

/// A unary call to any path: the status the proxy (or a node) answers with.
async fn call_path(channel: Channel, path: &str) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let path = PathAndQuery::try_from(path).unwrap();
    match grpc.unary(Request::new(hello("x")), path, codec).await {
        Ok(_) => Status::ok("answered"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn metadata_deadline_status_and_trailers_pass_through() {
    let setup = setup(&[]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let mut greeter = GreeterClient::new(setup.channel.clone());

    let mut request = Request::new(hello("ada"));
    request.metadata_mut().insert("x-user", MetadataValue::from_static("ada"));
    request.metadata_mut().insert_bin("x-trace-bin", MetadataValue::from_bytes(&[0, 1, 255]));
    request.set_timeout(Duration::from_secs(7));
    let response = greeter.say_hello(request).await.unwrap();
    assert_eq!(metadata(response.metadata(), "x-served-by"), "echo", "response headers");
    let message = response.into_inner().message;
    let (sent, timeout) = message.split_once(" timeout=").unwrap();
    assert_eq!(sent, "user=ada trace=[0, 1, 255]", "{message}");
    // tonic writes 7 s as microseconds or nanoseconds; the node must see the same bound.
    let (digits, unit) = timeout.split_at(timeout.len() - 1);
    let nanos = digits.parse::<u64>().unwrap() * if unit == "u" { 1000 } else { 1 };
    assert!(matches!(unit, "u" | "n") && nanos == 7_000_000_000, "grpc-timeout {timeout}");

    let status = greeter.say_hello(hello("fail")).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "no such name"));

    // The deadline binds the node: a caller with no timer of its own (a raw HTTP/2 client
    // here; tonic's would give up by itself) still hears DeadlineExceeded at the deadline.
    let started = Instant::now();
    let headers = [("grpc-timeout", "300m")];
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        raw_unary(&setup.addr, "/greeter.v1.Greeter/SayHello", &headers, &hello("slow")),
    )
    .await
    .expect("the deadline must end the call");
    // Two timers race for the same deadline, and either answer is the deadline binding:
    // the proxy's own (DeadlineExceeded, 4) or the node's, which tonic arms from the
    // `grpc-timeout` the proxy passed on (Cancelled "Timeout expired", 1). Under load
    // either may fire first.
    let status = answer.get("grpc-status").map(|v| v.as_bytes().to_vec());
    let message = answer.get("grpc-message").map(|v| v.as_bytes().to_vec());
    let proxy_fired = status.as_deref() == Some(&b"4"[..]);
    let node_fired = status.as_deref() == Some(&b"1"[..])
        && message.as_deref() == Some(&b"Timeout%20expired"[..]);
    assert!(proxy_fired || node_fired, "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let request = GreetingsRequest { name: "bo".into(), count: 2, interval_ms: 0 };
    let mut stream = greeter.greetings(request).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 2);
    let end = stream.message().await.unwrap_err();
    assert_eq!((end.code(), end.message()), (Code::Aborted, "enough"), "status in the trailers");
    assert_eq!(metadata(end.metadata(), "x-reason"), "done", "trailer metadata");
    drop(setup.nats);
}

#[tokio::test]
async fn what_cannot_be_routed_is_refused_and_streams_are_bounded() {
    let setup = setup(&["--max-streams", "4"]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;

    let status = call_path(setup.channel.clone(), "/billing.v1.Billing/Charge").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "no node of service \"billing.v1.Billing\" in the registry");
    for path in ["/no-service", "/greeter.v1.Greeter/", "/a/b/c", "//SayHello", "/greeter v1/X"] {
        let path = path.replace(' ', "%20");
        let status = call_path(setup.channel.clone(), &path).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        assert!(status.message().starts_with("malformed gRPC path"), "{path}: {status:?}");
    }
    // A method the node lacks is the node's answer, passed on.
    let status = call_path(setup.channel.clone(), "/greeter.v1.Greeter/Shout").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(!status.message().starts_with("malformed"), "{status:?}");

    let mut greeter = GreeterClient::new(setup.channel.clone());
    let endless = || GreetingsRequest { name: "x".into(), count: 0, interval_ms: 20 };
    let mut first = greeter.greetings(endless()).await.unwrap().into_inner();
    let mut second = greeter.greetings(endless()).await.unwrap().into_inner();
    assert!(first.message().await.unwrap().is_some() && second.message().await.unwrap().is_some());
    // Half of the 4 slots is the Greeter's share.
    let status = greeter.say_hello(hello("third")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "greeter.v1.Greeter already holds its share of the proxy's streams (2 at once)"
    );

    // A stream that ends gives its slot back (the proxy learns of it a moment later).
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match greeter.say_hello(hello("fourth")).await {
            Ok(_) => break,
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("the freed slot was never given back: {status:?}"),
        }
    }
    drop(setup.proxy);
}

#[tokio::test]
async fn a_node_that_dies_mid_stream_fails_the_stream_instead_of_hanging_it() {
    let setup = setup(&[]).await;
    let node = echo_node(&setup.registry, "echo-1").await;
    let mut greeter = GreeterClient::new(setup.channel.clone());
    let endless = GreetingsRequest { name: "x".into(), count: 0, interval_ms: 5 };
    let mut stream = greeter.greetings(endless).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    node.crash().await;
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the caller must see the node go, not wait for ever");
    let status = end.expect_err("a dead node is an error, not a clean end of the stream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "node echo-1 went away mid-stream");

    // It is still listed until its TTL ends: the next call to it is refused, not hung.
    let status = greeter.say_hello(hello("after")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("node echo-1 of greeter.v1.Greeter unreachable"),
        "{status:?}"
    );
}

/// Python's grpcio, with stubs it generates now from `shared/proto/greeter.proto` and the
/// example's `calc.proto`, calls both services through the proxy: unary, server- and
/// bidi-streaming, and an unknown service refused.
const PYTHON_CLIENT: &str = r#"
import sys
import grpc
import calc_pb2, calc_pb2_grpc, greeter_pb2, greeter_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
greeter = greeter_pb2_grpc.GreeterStub(channel)
calc = calc_pb2_grpc.CalculatorStub(channel)
reply = greeter.SayHello(greeter_pb2.HelloRequest(name="py"), timeout=10)
print("SayHello:", reply.message, "from", reply.node)
replies = greeter.Greetings(greeter_pb2.GreetingsRequest(name="py", count=3), timeout=10)
print("Greetings:", [r.seq for r in replies])
names = iter([greeter_pb2.HelloRequest(name=n) for n in ["x", "y"]])
print("Chat:", [r.message for r in greeter.Chat(names, timeout=10)])
print("Add:", calc.Add(calc_pb2.AddRequest(terms=[40, 2]), timeout=10).sum)
print("Count:", [r.n for r in calc.Count(calc_pb2.CountRequest(up_to=3), timeout=10)])
try:
    channel.unary_unary("/billing.v1.Billing/Charge")(b"", timeout=10)
except grpc.RpcError as e:
    print("Billing:", e.code().name, e.details())
"#;

#[tokio::test]
async fn python_grpcio_calls_both_services_through_the_proxy() {
    let python = common::python();
    let setup = setup(&[]).await;
    let (greeter, _) = spawn_role(&setup.nats, &["greeter", "--name", "greeter-a"], &[]).await;
    let (calc, _) = spawn_role(&setup.nats, &["calc", "--name", "calc-a"], &[]).await;

    let stubs = tempfile::tempdir().unwrap();
    let root = common::root();
    let mut protoc = tokio::process::Command::new(&python);
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", root.join("shared/proto").display()))
        .arg(format!("-I{}", root.join("examples/proxy").display()))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args(["greeter.proto", "calc.proto"]);
    protoc.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = common::run_within(protoc, PATIENCE).await;
    assert!(output.status.success(), "protoc: {}", common::text(&output.stderr));
    std::fs::write(stubs.path().join("client.py"), PYTHON_CLIENT).unwrap();

    let mut client = tokio::process::Command::new(&python);
    client.arg(stubs.path().join("client.py")).arg(&setup.addr).env("PYTHONPATH", stubs.path());
    client.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = common::run_within(client, PATIENCE).await;
    let stdout = common::text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", common::text(&output.stderr));
    assert_eq!(
        stdout,
        "SayHello: hello py from greeter-a\n\
         Greetings: [1, 2, 3]\n\
         Chat: ['hello x', 'hello y']\n\
         Add: 42\n\
         Count: [1, 2, 3]\n\
         Billing: UNAVAILABLE no node of service \"billing.v1.Billing\" in the registry\n"
    );
    // Every role stops the same way: its tally, exit 0. Five calls went through, one
    // (the unknown service) was refused.
    let (last, ok) = setup.proxy.stop().await;
    assert_eq!(last, "proxy stopped: 5 calls forwarded, 1 refused, every call finished");
    assert!(ok, "the proxy exits 0 when asked to stop");
    for (role, name) in [(greeter, "greeter-a"), (calc, "calc-a")] {
        assert_eq!(role.stop().await, (format!("{name} deregistered and stopped"), true));
    }
}

/// Runs a Python program given as text, with `args`; its stdout, after checking it succeeded.
async fn python_program(source: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("program.py"), source).unwrap();
    let mut program = tokio::process::Command::new(common::python());
    program.arg(dir.path().join("program.py")).args(args);
    program.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = common::run_within(program, PATIENCE).await;
    let stdout = common::text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", common::text(&output.stderr));
    stdout
}

/// A node's refusals, called through the proxy by grpcio with no stubs (the request encoded
/// by hand): each code and message as the node sent it.
const PYTHON_REFUSALS: &str = r#"
import sys
import grpc

channel = grpc.insecure_channel(sys.argv[1])

def hello(name):
    return b"\x0a" + bytes([len(name)]) + name.encode()

def show(path, call):
    try:
        call()
        print(path, "OK")
    except grpc.RpcError as e:
        print(path, e.code().name, repr(e.details()))

for name in ["invalid", "internal", "fail"]:
    say = channel.unary_unary("/greeter.v1.Greeter/SayHello")
    show("SayHello " + name, lambda: say(hello(name), timeout=10))
collect = channel.stream_unary("/greeter.v1.Greeter/CollectNames")
show("CollectNames", lambda: collect(iter([hello("x")]), timeout=10))
shout = channel.unary_unary("/greeter.v1.Greeter/Shout")
show("Shout", lambda: shout(hello("x"), timeout=10))
"#;

#[tokio::test]
async fn a_node_refusals_reach_grpcio_with_their_code_and_message() {
    let setup = setup(&[]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let stdout = python_program(PYTHON_REFUSALS, &[&setup.addr]).await;
    // CollectNames is the Greeter's default stub on the node: tonic's own message.
    assert_eq!(
        stdout,
        "SayHello invalid INVALID_ARGUMENT 'the name is invalid'\n\
         SayHello internal INTERNAL 'something broke inside'\n\
         SayHello fail NOT_FOUND 'no such name'\n\
         CollectNames UNIMPLEMENTED 'Not yet implemented'\n\
         Shout UNIMPLEMENTED ''\n"
    );
}

/// The proxy's own health ("" is the proxy itself) and reflection, asked by grpcio's health
/// and reflection clients at the proxy's address.
const PYTHON_OWN_SERVICES: &str = r#"
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
health = health_pb2_grpc.HealthStub(channel)
reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
asked = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
for answer in reflection.ServerReflectionInfo(asked, timeout=10):
    names = [s.name for s in answer.list_services_response.service]
    print("lists health:", "grpc.health.v1.Health" in names)
"#;

#[tokio::test]
async fn the_proxy_answers_its_own_health_and_reflection() {
    let setup = setup(&[]).await;
    let stdout = python_program(PYTHON_OWN_SERVICES, &[&setup.addr]).await;
    assert_eq!(stdout, "health: SERVING\nlists health: True\n");
    let (last, ok) = setup.proxy.stop().await;
    // Its own answers are neither forwarded calls nor refusals.
    assert_eq!(last, "proxy stopped: 0 calls forwarded, 0 refused, every call finished");
    assert!(ok);
}

/// A Calculator node as grpcio sees it, straight, not through the proxy: its health knows
/// `calc.v1.Calculator`, and its reflection, asked three questions on one stream, answers
/// each in turn, a miss included, and describes the Calculator rather than the Greeter.
const PYTHON_CALC_NODE: &str = r#"
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
health = health_pb2_grpc.HealthStub(channel)
reply = health.Check(health_pb2.HealthCheckRequest(service="calc.v1.Calculator"), timeout=10)
print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
Request = reflection_pb2.ServerReflectionRequest
asked = iter([
    Request(file_containing_symbol="no.such.Service"),
    Request(list_services=""),
    Request(file_containing_symbol="calc.v1.Calculator"),
])
reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
for answer in reflection.ServerReflectionInfo(asked, timeout=10):
    kind = answer.WhichOneof("message_response")
    if kind == "error_response":
        print("miss:", grpc.StatusCode.NOT_FOUND.value[0] == answer.error_response.error_code)
    elif kind == "list_services_response":
        names = sorted(s.name for s in answer.list_services_response.service)
        print("lists:", ", ".join(n for n in names if not n.startswith("grpc.")))
    else:
        print("files:", len(answer.file_descriptor_response.file_descriptor_proto))
"#;

#[tokio::test]
async fn grpcio_sees_a_calculator_node_describe_the_calculator() {
    let setup = setup(&[]).await;
    let (calc, addr) = spawn_role(&setup.nats, &["calc", "--name", "calc-a"], &[]).await;
    let stdout = python_program(PYTHON_CALC_NODE, &[&addr]).await;
    assert_eq!(stdout, "health: SERVING\nmiss: True\nlists: calc.v1.Calculator\nfiles: 1\n");
    assert_eq!(calc.stop().await, ("calc-a deregistered and stopped".to_owned(), true));
    assert!(setup.proxy.stop().await.1);
}

/// A call to a name with no node must cost the registry nothing: on NATS a watch is a
/// JetStream consumer on the registry's stream, which outlives the watch by half a minute.
#[tokio::test]
async fn an_unknown_service_is_refused_without_a_watch() {
    let setup = setup(&[]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let client = microkit_backend::connect(&setup.nats.url(), Default::default()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = format!("KV_{}", registry::DEFAULT_BUCKET);
    let consumers = || async {
        let mut stream = jetstream.get_stream(&stream).await.unwrap();
        stream.info().await.unwrap().state.consumer_count
    };
    let before = consumers().await;
    for n in 0..20 {
        let path = format!("/billing{n}.v1.Billing/Charge");
        let status = call_path(setup.channel.clone(), &path).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(consumers().await, before, "refused calls left consumers behind");
    // A known service is watched, and that shows: the count above would have seen a watch.
    // (Not "exactly one": an ordered consumer may be replaced while the old one lingers.)
    GreeterClient::new(setup.channel.clone()).say_hello(hello("x")).await.unwrap();
    assert!(consumers().await > before, "a watch shows as a consumer");
}

/// Four slots, so two for each service: a Greeter whose calls hang (no deadline) holds its
/// two, is refused a third, and the Calculator is still served.
#[tokio::test]
async fn a_hung_service_cannot_starve_another() {
    let setup = setup(&["--max-streams", "4"]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let (calc, _) = spawn_role(&setup.nats, &["calc", "--name", "calc-a"], &[]).await;
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel();
    let hanging: Vec<_> = (0..4)
        .map(|_| {
            let (mut greeter, done) = (GreeterClient::new(setup.channel.clone()), done.clone());
            tokio::spawn(async move {
                let _ = done.send(greeter.say_hello(hello("slow")).await.map(|_| ()));
            })
        })
        .collect();
    for _ in 0..2 {
        let refused = tokio::time::timeout(PATIENCE, results.recv()).await.unwrap().unwrap();
        let status = refused.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("its share"), "{status:?}");
    }
    let answer = tokio::time::timeout(
        PATIENCE,
        raw_unary(&setup.addr, "/calc.v1.Calculator/Add", &[], &hello("")),
    )
    .await
    .expect("the Calculator answers");
    assert_eq!(answer.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]), "{answer:?}");
    for call in hanging {
        call.abort();
    }
    drop(calc);
}

#[tokio::test]
async fn a_call_with_no_deadline_waits_for_a_node_only_so_long() {
    let setup = setup(&["--answer-within-ms", "1500"]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let started = Instant::now();
    let mut greeter = GreeterClient::new(setup.channel.clone());
    let call = greeter.say_hello(hello("slow"));
    let status = tokio::time::timeout(PATIENCE, call).await.expect("bounded").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with("no answer from echo-1 within the proxy's bound"),
        "{status:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_registry_entry_naming_the_proxy_itself_is_refused_at_once() {
    let setup = setup(&[]).await;
    let node = registry::Node::new(GREETER, "the-proxy", &setup.addr);
    setup.registry.register(&node, Duration::from_secs(30)).await.unwrap();
    let mut greeter = GreeterClient::new(setup.channel.clone());
    let call = greeter.say_hello(hello("x"));
    let status = tokio::time::timeout(PATIENCE, call).await.expect("no endless loop").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("a forwarding loop"), "{status:?}");
}

/// Connections that never send a request: nothing at all, half a preface, and a preface
/// with its SETTINGS and then silence. Each is closed by the proxy after its 10 s header
/// timeout.
#[tokio::test]
async fn a_connection_that_sends_no_request_is_cut_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let setup = setup(&[]).await;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let sends: [&[u8]; 3] = [b"", &PREFACE[..10], &[PREFACE, SETTINGS].concat()];
    let started = Instant::now();
    let mut held = Vec::new();
    for sent in sends {
        let mut stream = tokio::net::TcpStream::connect(&setup.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        held.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10) + PATIENCE, async {
                stream.read_to_end(&mut seen).await
            });
            (read.await.is_ok(), started.elapsed())
        }));
    }
    for held in held {
        let (closed, after) = held.await.unwrap();
        assert!(closed, "a connection that sent no request was never closed");
        assert!(after >= Duration::from_secs(9), "closed after {after:?}, before the timeout");
    }
}

/// At the file limit (a proxy run with `ulimit -n 40`, then more connections than that),
/// accept fails for as long as connections wait: the loop rests between tries instead of
/// spinning and logging each failure; once connections close, it accepts again.
#[tokio::test]
async fn at_the_file_limit_the_accept_loop_rests_and_recovers() {
    let wrapper = ["sh", "-c", "ulimit -n 40 && exec \"$0\" \"$@\""];
    let mut setup = setup_with(&wrapper, &[]).await;
    let mut stderr = setup.proxy.child.stderr.take().unwrap();
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(tokio::net::TcpStream::connect(&setup.addr).await.unwrap());
    }
    // Read its log until the first failed accept, then count what it writes in 2 s.
    let first = std::sync::Arc::new(tokio::sync::Notify::new());
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (first, counted) = (first.clone(), counted.clone());
        async move {
            use tokio::io::AsyncReadExt;
            let mut buffer = vec![0; 64 * 1024];
            let mut seen = String::new();
            loop {
                let n = stderr.read(&mut buffer).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                if seen.len() < 4096 {
                    seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
                    if seen.contains("accept") {
                        first.notify_one();
                    }
                }
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    tokio::time::timeout(PATIENCE, first.notified()).await.expect("accept failed at the limit");
    let before = counted.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await; // a window to measure, not a wait
    let written = counted.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(written < 16 * 1024, "{written} bytes of log in 2 s at the file limit");

    drop(held);
    let status = call_path(setup.channel.clone(), "/billing.v1.Billing/Charge").await;
    assert_eq!(status.code(), Code::Unavailable, "it serves again: {status:?}");
    reader.abort();
}

/// A stop lets calls in flight finish for its 5 s drain deadline, then cuts them: a stream
/// that never ends cannot keep the proxy from stopping.
#[tokio::test]
async fn a_stop_cuts_what_is_still_running_at_its_drain_deadline() {
    let setup = setup(&[]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let mut greeter = GreeterClient::new(setup.channel.clone());
    let endless = GreetingsRequest { name: "x".into(), count: 0, interval_ms: 20 };
    let mut stream = greeter.greetings(endless).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    // The proxy's own health, watched: NOT_SERVING as the stop begins, then the watch ends.
    let mut statuses = Box::pin(microkit::health::watch(setup.channel.clone(), "").await.unwrap());
    let first = statuses.next().await.unwrap().unwrap();
    assert_eq!(first, microkit::health::WireStatus::Serving);
    let watched = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(status)) = statuses.next().await {
            seen.push(status);
        }
        seen
    });
    let started = Instant::now();
    let (last, ok) = setup.proxy.stop().await;
    let took = started.elapsed();
    assert_eq!(last, "proxy stopped: 1 calls forwarded, 0 refused, calls cut at the deadline");
    assert!(ok, "it exits 0");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(9), "stopped in {took:?}");
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    });
    assert!(end.await.expect("the stream ends").is_err(), "a cut stream ends in an error");
    let seen = tokio::time::timeout(PATIENCE, watched).await.unwrap().unwrap();
    assert_eq!(seen, [microkit::health::WireStatus::NotServing]);
}

/// A peer that made its request and then answers nothing, not even HTTP/2's pings (a
/// machine that vanished looks like this): the proxy pings every 10 s and cuts the
/// connection when a ping goes unanswered for 10 s more.
#[tokio::test]
async fn a_peer_that_answers_no_ping_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let setup = setup(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(&setup.addr).await.unwrap();
    // One request by hand, its headers HPACK-encoded without compression: a call the proxy
    // refuses at once (no node), so the connection has done its first request and is idle.
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    for (index, value) in [(0x44, "/billing.v1.Billing/Charge"), (0x5f, "application/grpc")] {
        block.extend([index, value.len() as u8]); // :path, content-type
        block.extend(value.as_bytes());
    }
    block.extend([0x40, 2]); // te: trailers, a name of its own
    block.extend(b"te");
    block.push(8);
    block.extend(b"trailers");
    let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    sent.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    sent.extend(&(block.len() as u32).to_be_bytes()[1..]);
    sent.extend([1, 0x5, 0, 0, 0, 1]); // HEADERS, END_STREAM | END_HEADERS, stream 1
    sent.extend(block);
    stream.write_all(&sent).await.unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(20) + PATIENCE, stream.read_to_end(&mut seen));
    assert!(read.await.is_ok(), "a peer that answers no ping was never cut");
    assert!(started.elapsed() >= Duration::from_secs(15), "cut after {:?}", started.elapsed());
    // Its frames: the refusal's HEADERS on stream 1, and at least one PING.
    let (mut at, mut types) = (0, Vec::new());
    while at + 9 <= seen.len() {
        let length = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
        types.push(seen[at + 3]);
        at += 9 + length;
    }
    assert!(types.contains(&0x1) && types.contains(&0x6), "frame types {types:?}");
}

/// One connection may open 64 streams at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS):
/// with 64 calls hanging on it, a 65th waits for a stream, while another connection is
/// served at once.
#[tokio::test]
async fn one_connection_opens_at_most_64_streams() {
    let setup = setup(&[]).await;
    let _node = echo_node(&setup.registry, "echo-1").await;
    let one = Endpoint::from_shared(format!("http://{}", setup.addr)).unwrap().connect_lazy();
    let hanging: Vec<_> = (0..64)
        .map(|_| {
            let mut greeter = GreeterClient::new(one.clone());
            tokio::spawn(async move {
                let _ = greeter.say_hello(hello("hold")).await;
            })
        })
        .collect();
    let all_held = async {
        loop {
            let changed = HELD_CHANGED.notified();
            if HELD.load(std::sync::atomic::Ordering::SeqCst) >= 64 {
                break;
            }
            changed.await;
        }
    };
    tokio::time::timeout(PATIENCE, all_held).await.expect("64 calls reach the node");
    let mut other = GreeterClient::new(setup.channel.clone());
    let status = tokio::time::timeout(PATIENCE, other.say_hello(hello("fail"))).await.unwrap();
    assert_eq!(status.unwrap_err().code(), Code::NotFound, "another connection is served");
    let mut sixty_fifth = GreeterClient::new(one.clone());
    let waited = tokio::time::timeout(Duration::from_secs(3), sixty_fifth.say_hello(hello("fail")));
    assert!(waited.await.is_err(), "a 65th stream opened on the same connection");
    for call in hanging {
        call.abort();
    }
}
