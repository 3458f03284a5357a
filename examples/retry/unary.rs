//! The Greeter service has four methods; this example's servers answer only the unary one.
//! `unary_greeter!(T)` implements the service for a type with
//! `async fn hello(&self, Request<HelloRequest>) -> Result<HelloReply, Status>`, and refuses
//! the three streaming methods with `Unimplemented`.

macro_rules! unary_greeter {
    ($server:ty) => {
        #[tonic::async_trait]
        impl microkit::proto::greeter::greeter_server::Greeter for $server {
            async fn say_hello(
                &self,
                request: tonic::Request<microkit::proto::greeter::HelloRequest>,
            ) -> Result<tonic::Response<microkit::proto::greeter::HelloReply>, tonic::Status> {
                self.hello(request).await.map(tonic::Response::new)
            }

            type GreetingsStream = $crate::unary::NoStream;

            async fn greetings(
                &self,
                _: tonic::Request<microkit::proto::greeter::GreetingsRequest>,
            ) -> Result<tonic::Response<Self::GreetingsStream>, tonic::Status> {
                Err($crate::unary::unary_only())
            }

            async fn collect_names(
                &self,
                _: tonic::Request<tonic::Streaming<microkit::proto::greeter::HelloRequest>>,
            ) -> Result<tonic::Response<microkit::proto::greeter::NamesSummary>, tonic::Status>
            {
                Err($crate::unary::unary_only())
            }

            type ChatStream = $crate::unary::NoStream;

            async fn chat(
                &self,
                _: tonic::Request<tonic::Streaming<microkit::proto::greeter::HelloRequest>>,
            ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
                Err($crate::unary::unary_only())
            }
        }
    };
}

pub type NoStream =
    futures::stream::Empty<Result<microkit::proto::greeter::HelloReply, tonic::Status>>;

pub fn unary_only() -> tonic::Status {
    tonic::Status::unimplemented("the retry example serves unary calls only")
}
