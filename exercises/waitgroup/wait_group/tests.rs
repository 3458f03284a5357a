use super::*;
use http_body::Body as _;
use tower::{Layer, Service, ServiceExt};

/// A stand-in for the server's routes: answers after `work`, with a one-frame body.
#[derive(Clone)]
struct SlowRoutes(Duration);

impl Service<http::Request<()>> for SlowRoutes {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        let work = self.0;
        Box::pin(async move {
            tokio::time::sleep(work).await;
            let reply = OneFrame(Some(Bytes::from_static(b"reply")));
            Ok(http::Response::new(Body::new(reply)))
        })
    }
}

struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

async fn read_body(body: Body) -> Vec<Frame<Bytes>> {
    let mut body = std::pin::pin!(body);
    let mut frames = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        frames.push(frame.unwrap());
    }
    frames
}

#[tokio::test(start_paused = true)]
async fn a_call_counts_until_its_body_has_ended() {
    let group = WaitGroup::new();
    let mut service = group.layer(SlowRoutes(Duration::from_millis(10)));
    let response = service.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    assert_eq!(group.in_flight(), 1, "the handler returned, but the reply is unwritten");
    let frames = read_body(response.into_body()).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(group.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn after_stop_taking_calls_a_call_is_refused_with_unavailable() {
    let group = WaitGroup::new();
    let mut service = group.layer(SlowRoutes(Duration::from_millis(10)));
    group.stop_taking_calls();
    let response = service.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    let status = Status::from_header_map(response.headers()).expect("a trailers-only status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), REFUSED);
    assert_eq!(group.in_flight(), 0, "a refused call is not tracked");
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_calls_within_the_deadline_and_cuts_the_rest_exactly() {
    let group = WaitGroup::new();
    let quick = group.layer(SlowRoutes(Duration::from_millis(50)));
    let slow = group.layer(SlowRoutes(Duration::from_secs(3600)));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..7 {
        let service = if i < 3 { quick.clone() } else { slow.clone() };
        calls.spawn(async move {
            let response = service.oneshot(http::Request::new(())).await.unwrap();
            read_body(response.into_body()).await.len()
        });
    }
    group.admitted(7).await;
    assert_eq!(group.in_flight(), 7);
    let cut = group.drain(Duration::from_millis(500)).await.unwrap();
    assert_eq!(cut, 4, "the four one-hour calls, and only they");
    assert_eq!(group.in_flight(), 0);
    let mut frames: Vec<usize> = calls.join_all().await;
    frames.sort();
    // A cut call gets its status in the headers (trailers-only): no body frames.
    assert_eq!(frames, [0, 0, 0, 0, 1, 1, 1]);
}
