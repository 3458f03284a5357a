//! Metadata set on every call (an interceptor) and on one call, read by the server, and
//! sent back as response headers and as trailers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use microkit::greeter::ReplyStream;
use microkit::proto::greeter::greeter_server::Greeter;
use microkit::proto::greeter::{GreetingsRequest, HelloReply, HelloRequest};
use tonic::metadata::{Ascii, Binary, KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Code, Request, Response, Status};

// ---- the client half: metadata on every call ----

/// Adds a request id and a binary trace id to every outgoing call: go-micro's client wrapper.
#[derive(Clone, Default)]
pub struct TraceEveryCall {
    calls: Arc<AtomicU32>,
}

impl Interceptor for TraceEveryCall {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // EXERCISE: put the request id (text) and the trace (binary, under a `-bin` key) on every outgoing call
        // Check it with `scripts/exercise.sh metadata`; `scripts/exercise.sh metadata hint` helps.
        // END OF EXERCISE
        Ok(request)
    }
}

/// A text value for an ASCII key, by gRPC's rule (its spec of gRPC over HTTP/2):
/// `ASCII-Value → 1*( %x20-%x7E )`, space and printable ASCII, and no space at either end,
/// which a receiver "may strip". HTTP/2 is looser, and so is the parser: it lets a tab and
/// bytes above 127 through, and a tab even reaches the server's `to_str()` intact.
pub fn ascii(text: &str) -> Result<MetadataValue<Ascii>, Status> {
    let refused = |why: &str| Status::invalid_argument(format!("{why}: {text:?}"));
    if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(refused("not printable ASCII (gRPC allows space to '~')"));
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err(refused("a space at either end, which gRPC lets a receiver strip"));
    }
    text.parse().map_err(|_| refused("not a metadata value"))
}

// ---- the server half: read what came, answer with metadata of its own ----

/// A Greeter that reads the client's metadata and sends some back, before and after replies.
pub struct MetadataGreeter {
    /// What the server read, kept for the story to print beside the reply.
    pub seen: Seen,
}

#[tonic::async_trait]
impl Greeter for MetadataGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.seen.record(application_metadata(request.metadata()));
        let name = request.into_inner().name;
        if name == "nobody" {
            // An error's metadata travels in the trailers that carry the status itself.
            let mut trailers = MetadataMap::new();
            trailers.insert("x-denied-by", MetadataValue::from_static("policy-7"));
            let message = "nobody may not be greeted";
            return Err(Status::with_metadata(Code::PermissionDenied, message, trailers));
        }
        let mut response =
            Response::new(HelloReply { message: format!("hello {name}"), ..Default::default() });
        // Response metadata is sent as HTTP/2 headers, before the reply message.
        response.metadata_mut().insert("x-served-by", MetadataValue::from_static("greeter-1"));
        Ok(response)
    }

    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let GreetingsRequest { name, count, .. } = request.into_inner();
        let replies = (1..=count).map(move |seq| {
            Ok(HelloReply { message: format!("hello {name}"), seq, ..Default::default() })
        });
        // A stream ends with a status, sent as trailers. Ending it with an OK status that
        // carries metadata is how tonic sends trailers on success.
        let mut trailers = MetadataMap::new();
        trailers.insert("x-replies-sent", ascii(&count.to_string())?);
        let end = Err(Status::with_metadata(Code::Ok, "", trailers));
        Ok(Response::new(Box::pin(futures::stream::iter(replies.chain([end])))))
    }
}

/// The application metadata of a request, sorted, `key = value`, binary values in hex.
/// Transport headers (content-type, te, user-agent...) are left out.
pub fn application_metadata(metadata: &MetadataMap) -> Vec<String> {
    let mut seen = Vec::new();
    for entry in metadata.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with("x-") => {
                seen.push(format!("{key} = {}", value.to_str().unwrap_or("<not text>")));
            }
            KeyAndValueRef::Binary(key, value) => {
                let bytes = value.to_bytes().map(|b| b.to_vec()).unwrap_or_default();
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                seen.push(format!("{key} = {} (binary)", hex.join(" ")));
            }
            KeyAndValueRef::Ascii(..) => {}
        }
    }
    seen.sort();
    seen
}

/// What the server read from the last call's metadata.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn record(&self, entries: Vec<String>) {
        *self.0.lock().unwrap() = entries;
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

// ---- the rules, as tonic's types and parsers enforce them ----

/// gRPC's key and value rules, as tonic's types and parsers enforce them.
pub struct KeyRules {
    /// What `X-User-Name` is sent as: HTTP/2 header names are lower case.
    pub sent_as: String,
    /// Why a value with a line break is refused: ASCII values must be printable.
    pub multi_line_value: Option<String>,
    /// Why [`ascii`] refuses a tab, which the parser (and HTTP/2) would let through.
    pub tab_value: Option<String>,
    /// Why a binary value's key without `-bin` is refused: a separate type, checked on parse.
    pub binary_key_without_bin: Option<String>,
}

pub fn key_rules() -> KeyRules {
    let key = MetadataKey::<Ascii>::from_bytes(b"X-User-Name").expect("a valid name");
    KeyRules {
        sent_as: key.as_str().to_owned(),
        multi_line_value: "two\nlines".parse::<MetadataValue<Ascii>>().err().map(|e| e.to_string()),
        tab_value: ascii("a\tb").err().map(|status| status.message().to_owned()),
        binary_key_without_bin: MetadataKey::<Binary>::from_bytes(b"trace")
            .err()
            .map(|e| e.to_string()),
    }
}
