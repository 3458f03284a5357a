//! Health checking and reflection: the two standard services every server here mounts.
//!
//! The registry says a node *exists*; health says whether it is *fit to serve*: a node that
//! is draining, or has lost something it needs, is still listed but should get no new work.
//! [`Health`] reports it over `grpc.health.v1.Health` and `GET /health/ready` alike.
//! [`Health::mount`] adds server reflection (v1, and v1alpha for Python's grpcio-reflection),
//! so a tool that has never seen our protos can list the services and call them.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_reflection::server::{v1, v1alpha};

use tonic_health::ServingStatus;
pub use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

/// The protos of this crate, as `build.rs` encoded them for reflection.
pub(crate) const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// One node's health: what its health service and its readiness probe both report.
/// Clones share the status.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Services reported on besides "" (the whole server), e.g. `greeter.v1.Greeter`.
    services: Arc<[String]>,
    ready: Arc<watch::Sender<bool>>,
    /// Cancelled when the server drains: open `Watch` streams end, so a watcher never holds
    /// a graceful stop open (a Watch stream is otherwise endless).
    closing: CancellationToken,
}

impl Health {
    /// SERVING, for the whole server ("") and for each of `services`.
    pub fn new(services: &[&str]) -> Self {
        let reporter = HealthReporter::new();
        for service in services {
            // A new reporter's lock is uncontended, so this completes at once.
            reporter
                .set_service_status(service, ServingStatus::Serving)
                .now_or_never()
                .expect("a new reporter is not locked");
        }
        Health {
            reporter,
            services: services.iter().map(|s| s.to_string()).collect(),
            ready: Arc::new(watch::channel(true).0),
            closing: CancellationToken::new(),
        }
    }

    /// Reports SERVING or NOT_SERVING on the health service and the readiness route alike.
    pub async fn set_serving(&self, serving: bool) {
        // Watchers are told of changes only: the same status again is no news.
        if self.ready.send_replace(serving) == serving {
            return;
        }
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        for service in self.services.iter() {
            self.reporter.set_service_status(service, status).await;
        }
    }

    fn is_serving(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows the status as it changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Ends every open `Watch` stream: called when the server starts to drain.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// The `grpc.health.v1.Health` service reporting this `Health`.
    fn service(&self) -> HealthServer<impl HealthApi + use<>> {
        HealthServer::new(HealthEndpoint {
            inner: HealthService::from_health_reporter(self.reporter.clone()),
            closing: self.closing.clone(),
        })
    }

    /// `routes` with health and reflection added, reflection describing this crate's protos.
    pub fn mount(&self, routes: Routes) -> Routes {
        self.mount_describing(routes, DESCRIPTORS)
    }

    /// [`Health::mount`], reflection describing `descriptors` instead.
    pub(crate) fn mount_describing(&self, routes: Routes, descriptors: &'static [u8]) -> Routes {
        routes
            .add_service(self.service())
            .add_service(reflection(descriptors))
            .add_service(reflection_v1alpha(descriptors))
    }
}

/// SERVING for the whole server, and no service named.
impl Default for Health {
    fn default() -> Self {
        Health::new(&[])
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("serving", &self.is_serving()).finish()
    }
}

/// tonic-health's service, with `Watch` streams that end when the server drains.
struct HealthEndpoint {
    inner: HealthService,
    closing: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for HealthEndpoint {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let statuses: WatchStream = match self.inner.watch(request).await {
            Ok(statuses) => Box::pin(statuses.into_inner()),
            // gRPC's health protocol: "If the requested service is unknown when the call is
            // received, the server must send a message setting the status field to
            // SERVICE_UNKNOWN but must not terminate the call." tonic-health ends it with
            // NOT_FOUND instead. A service cannot become known later here (a `Health`
            // reports the services it was made with), so nothing follows but the drain.
            Err(status) if status.code() == tonic::Code::NotFound => {
                let unknown = HealthCheckResponse { status: WireStatus::ServiceUnknown.into() };
                Box::pin(futures::stream::iter([Ok(unknown)]).chain(futures::stream::pending()))
            }
            Err(status) => return Err(status),
        };
        // A change waiting to be sent goes out before the end: a watcher of a stopping
        // server always sees its NOT_SERVING, however fast the drain follows it.
        let watch = futures::stream::unfold(
            (statuses, self.closing.clone()),
            |(mut statuses, closing)| async move {
                tokio::select! {
                    biased;
                    status = statuses.next() => status.map(|s| (s, (statuses, closing))),
                    () = closing.cancelled() => None,
                }
            },
        );
        Ok(Response::new(Box::pin(watch)))
    }
}

/// Server reflection v1 over `descriptors` and the health service's.
fn reflection(descriptors: &'static [u8]) -> v1::ServerReflectionServer<impl v1::ServerReflection> {
    let inner = reflection_builder(descriptors).build_v1().expect("descriptors that decode");
    let inner =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(inner);
    v1::ServerReflectionServer::new(ReflectionV1 { inner })
}

/// The same, as v1alpha: the version grpcio-reflection's Python client still asks for.
fn reflection_v1alpha(
    descriptors: &'static [u8],
) -> v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection> {
    let inner = reflection_builder(descriptors).build_v1alpha().expect("descriptors that decode");
    let inner =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(inner);
    v1alpha::ServerReflectionServer::new(ReflectionV1alpha { inner })
}

/// tonic-reflection's service, asked one request at a time, so that a miss (an unknown file
/// or symbol) is an `ErrorResponse` on a stream that stays open, as reflection.proto says;
/// tonic-reflection itself ends the whole stream. Each request is one in-process call to it
/// (its server is the client's transport), in order, so answers keep the requests' order.
macro_rules! reflection_per_request {
    ($module:ident, $version:ident, $endpoint:ident) => {
        mod $module {
            use super::*;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::{
                ErrorResponse, ServerReflectionRequest, ServerReflectionResponse,
            };
            use tonic_reflection::server::$version::{ServerReflection, ServerReflectionServer};

            /// Generic over the service inside, which tonic-reflection's builder returns
            /// as an opaque type.
            pub struct $endpoint<S> {
                pub inner: ServerReflectionClient<ServerReflectionServer<S>>,
            }

            type Answers =
                Pin<Box<dyn Stream<Item = Result<ServerReflectionResponse, Status>> + Send>>;

            #[tonic::async_trait]
            impl<S: ServerReflection> ServerReflection for $endpoint<S> {
                type ServerReflectionInfoStream = Answers;

                async fn server_reflection_info(
                    &self,
                    request: Request<tonic::Streaming<ServerReflectionRequest>>,
                ) -> Result<Response<Answers>, Status> {
                    let inner = self.inner.clone();
                    let answers = request.into_inner().then(move |asked| {
                        let mut inner = inner.clone();
                        async move {
                            let asked = asked?;
                            let once = futures::stream::iter([asked.clone()]);
                            let answer = match inner.server_reflection_info(once).await {
                                Ok(answers) => answers.into_inner().message().await,
                                Err(status) => Err(status),
                            };
                            Ok(match answer {
                                Ok(Some(answer)) => answer,
                                Ok(None) => refused(asked, Status::internal("no answer")),
                                Err(status) => refused(asked, status),
                            })
                        }
                    });
                    Ok(Response::new(Box::pin(answers)))
                }
            }

            fn refused(asked: ServerReflectionRequest, status: Status) -> ServerReflectionResponse {
                let error = ErrorResponse {
                    error_code: status.code() as i32,
                    error_message: status.message().to_owned(),
                };
                ServerReflectionResponse {
                    valid_host: asked.host.clone(),
                    original_request: Some(asked),
                    message_response: Some(MessageResponse::ErrorResponse(error)),
                }
            }
        }
        use $module::$endpoint;
    };
}

reflection_per_request!(reflection_v1, v1, ReflectionV1);
reflection_per_request!(reflection_v1alpha, v1alpha, ReflectionV1alpha);

/// What both reflection versions describe: `descriptors` and the health service's.
fn reflection_builder(descriptors: &'static [u8]) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The serving status of `service` ("" for the whole server) behind `channel`, as a stream
/// of changes: what a client watches to know whether to send a node work.
pub async fn watch(
    channel: tonic::transport::Channel,
    service: &str,
) -> Result<impl Stream<Item = Result<WireStatus, Status>> + use<>, Status> {
    let request = HealthCheckRequest { service: service.to_owned() };
    let stream = HealthClient::new(channel).watch(request).await?.into_inner();
    Ok(stream.map(|reply| reply.map(|r| r.status())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::RunningServer;

    #[tokio::test]
    async fn watch_sees_not_serving_then_ends_when_the_server_drains() {
        let server = crate::greeter::serve("n").await.unwrap();
        let health = server.health().unwrap().clone();
        let channel = tonic::transport::Channel::from_shared(server.url()).unwrap();
        let channel = channel.connect().await.unwrap();
        let mut statuses = Box::pin(watch(channel, "greeter.v1.Greeter").await.unwrap());
        assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::Serving);
        health.set_serving(false).await;
        assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::NotServing);
        tokio::time::timeout(crate::PATIENCE, server.shutdown()).await.unwrap().unwrap();
        assert!(statuses.next().await.is_none(), "the stream ends instead of holding the drain");
    }

    #[tokio::test]
    async fn watching_an_unknown_service_says_so_and_stays_open_until_the_drain() {
        let server = RunningServer::start(Routes::default()).await.unwrap();
        let channel = tonic::transport::Channel::from_shared(server.url()).unwrap();
        let channel = channel.connect().await.unwrap();
        let mut statuses = Box::pin(watch(channel, "no.such.Service").await.unwrap());
        assert_eq!(statuses.next().await.unwrap().unwrap(), WireStatus::ServiceUnknown);
        // Open: nothing more comes, neither an end nor an error, until the server drains.
        let next = tokio::time::timeout(std::time::Duration::from_millis(300), statuses.next());
        assert!(next.await.is_err(), "the call ended after SERVICE_UNKNOWN");
        tokio::time::timeout(crate::PATIENCE, server.shutdown()).await.unwrap().unwrap();
        assert!(statuses.next().await.is_none(), "the drain ends it cleanly");
    }

    #[tokio::test]
    async fn a_reflection_miss_is_an_error_response_on_a_stream_that_stays_open() {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let server = RunningServer::start(Routes::default()).await.unwrap();
        let channel = tonic::transport::Channel::from_shared(server.url()).unwrap();
        let mut client = ServerReflectionClient::new(channel.connect().await.unwrap());
        let ask = |request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let requests = futures::stream::iter([
            ask(MessageRequest::FileContainingSymbol("no.such.Symbol".into())),
            ask(MessageRequest::FileByFilename("no/such.proto".into())),
            ask(MessageRequest::ListServices(String::new())),
        ]);
        let answers: Vec<_> = client
            .server_reflection_info(requests)
            .await
            .unwrap()
            .into_inner()
            .map(|answer| answer.unwrap().message_response.unwrap())
            .collect()
            .await;
        let [missed_symbol, missed_file, MessageResponse::ListServicesResponse(listed)] =
            &answers[..]
        else {
            panic!("three answers, the last a list: {answers:?}");
        };
        for missed in [missed_symbol, missed_file] {
            let MessageResponse::ErrorResponse(error) = missed else { panic!("{missed:?}") };
            assert_eq!(error.error_code, tonic::Code::NotFound as i32, "{error:?}");
        }
        let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        server.shutdown().await.unwrap();
    }
}
