//! JSON in, protobuf out, and back, for a service this program was never compiled against.
//!
//! The gateway holds no proto. When a call names `greeter.v1.Greeter/SayHello`, it asks the
//! node that will serve the call for the file that defines `greeter.v1.Greeter` (server
//! reflection, which every server here mounts), builds a descriptor pool from the answer, and
//! from then on the method's input and output types are data: a JSON body becomes a
//! [`DynamicMessage`] through proto3's JSON mapping, is encoded as protobuf, sent as a gRPC call,
//! and the reply is decoded the same way and written back as JSON.

use std::collections::HashSet;

use bytes::Buf;
use prost::Message;
use prost_reflect::prost_types::FileDescriptorProto;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ServiceDescriptor,
};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Asks a node by reflection for the files that define `service` (and those they import),
/// and returns the service as the node describes it: its methods, their input and output
/// types, whether they stream.
pub async fn learn(channel: Channel, service: &str) -> Result<ServiceDescriptor, Status> {
    let mut reflection = ServerReflectionClient::new(channel);
    let mut pool = DescriptorPool::new();
    let mut files = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol(service.to_owned())];
    let mut seen = HashSet::new();
    // Each answer may name imports not sent with it; ask for those by name, at most 64 files.
    while let Some(request) = wanted.pop() {
        if seen.len() >= 64 {
            return Err(Status::internal(format!("{service} imports more than 64 files")));
        }
        for file in ask(&mut reflection, request).await? {
            if !seen.insert(file.name().to_owned()) {
                continue;
            }
            for import in &file.dependency {
                wanted.push(MessageRequest::FileByFilename(import.clone()));
            }
            files.push(file);
        }
        wanted.retain(|w| !matches!(w, MessageRequest::FileByFilename(f) if seen.contains(f)));
    }
    pool.add_file_descriptor_protos(files)
        .map_err(|e| Status::internal(format!("the descriptors of {service} do not build: {e}")))?;
    pool.get_service_by_name(service)
        .ok_or_else(|| Status::unimplemented(format!("the node does not describe {service}")))
}

/// `method` of `service`, if it has one this gateway converts: unary or server-streaming (a
/// JSON body is one message, so a call whose client streams has nothing to send more).
pub fn method(service: &ServiceDescriptor, method: &str) -> Result<MethodDescriptor, Status> {
    let name = service.full_name();
    let found = service.methods().find(|m| m.name() == method);
    let found =
        found.ok_or_else(|| Status::unimplemented(format!("{name} has no method {method}")))?;
    if found.is_client_streaming() {
        let why = "streams from the client; the gateway converts unary and server-streaming calls";
        return Err(Status::unimplemented(format!("{name}/{method} {why}")));
    }
    Ok(found)
}

/// One reflection request on its own stream: the file descriptors in its answer.
async fn ask(
    reflection: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> Result<Vec<FileDescriptorProto>, Status> {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers = reflection.server_reflection_info(futures::stream::iter([request])).await?;
    let answer: Option<ServerReflectionResponse> = answers.get_mut().message().await?;
    match answer.and_then(|a| a.message_response) {
        Some(MessageResponse::FileDescriptorResponse(found)) => found
            .file_descriptor_proto
            .iter()
            .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| Status::internal(format!("reflection sent an undecodable file: {e}"))),
        Some(MessageResponse::ErrorResponse(e)) => {
            Err(Status::unimplemented(format!("reflection: {}", e.error_message)))
        }
        _ => Err(Status::internal("reflection gave no file descriptors")),
    }
}

/// A JSON body as the method's input message (proto3's JSON mapping: lowerCamelCase or the
/// proto's own field names, 64-bit integers as strings or numbers; unknown fields refused).
pub fn from_json(input: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, Status> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let mut json = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize(input.clone(), &mut json)
        .and_then(|m| json.end().map(|()| m))
        .map_err(|e| Status::invalid_argument(format!("not a {}: {e}", input.full_name())))?;
    Ok(message)
}

/// A reply as JSON: fields left at their defaults are omitted, as the mapping says.
pub fn to_json(message: &DynamicMessage) -> Vec<u8> {
    serde_json::to_vec(message).expect("a dynamic message always serializes")
}

/// tonic's codec for messages known only at run time: it encodes whatever it is handed and
/// decodes replies as `output`.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    pub output: MessageDescriptor,
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }
    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding: {e}")))
    }
}

impl Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let message =
            DynamicMessage::decode(self.output.clone(), src.copy_to_bytes(src.remaining()))
                .map_err(|e| {
                    Status::internal(format!(
                        "the node's reply is no {}: {e}",
                        self.output.full_name()
                    ))
                })?;
        Ok(Some(message))
    }
}

/// The HTTP status for a gRPC status: the standard mapping (as grpc-gateway and Google's
/// APIs use it), so an HTTP client reads the outcome without knowing gRPC.
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as H;
    use tonic::Code as G;
    match code {
        G::Ok => H::OK,
        G::Cancelled => H::from_u16(499).expect("499 is a valid status"),
        G::InvalidArgument | G::FailedPrecondition | G::OutOfRange => H::BAD_REQUEST,
        G::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        G::NotFound => H::NOT_FOUND,
        G::AlreadyExists | G::Aborted => H::CONFLICT,
        G::PermissionDenied => H::FORBIDDEN,
        G::Unauthenticated => H::UNAUTHORIZED,
        G::ResourceExhausted => H::TOO_MANY_REQUESTS,
        G::Unimplemented => H::NOT_IMPLEMENTED,
        G::Unavailable => H::SERVICE_UNAVAILABLE,
        G::Unknown | G::Internal | G::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

/// A gRPC status as the JSON body of a refusal: `{"code":"NOT_FOUND","message":"..."}`.
pub fn status_json(status: &Status) -> Vec<u8> {
    let body = serde_json::json!({ "code": code_name(status.code()), "message": status.message() });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// The code's name as gRPC's specification spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as G;
    match code {
        G::Ok => "OK",
        G::Cancelled => "CANCELLED",
        G::Unknown => "UNKNOWN",
        G::InvalidArgument => "INVALID_ARGUMENT",
        G::DeadlineExceeded => "DEADLINE_EXCEEDED",
        G::NotFound => "NOT_FOUND",
        G::AlreadyExists => "ALREADY_EXISTS",
        G::PermissionDenied => "PERMISSION_DENIED",
        G::ResourceExhausted => "RESOURCE_EXHAUSTED",
        G::FailedPrecondition => "FAILED_PRECONDITION",
        G::Aborted => "ABORTED",
        G::OutOfRange => "OUT_OF_RANGE",
        G::Unimplemented => "UNIMPLEMENTED",
        G::Internal => "INTERNAL",
        G::Unavailable => "UNAVAILABLE",
        G::DataLoss => "DATA_LOSS",
        G::Unauthenticated => "UNAUTHENTICATED",
    }
}
