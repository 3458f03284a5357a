//! Who may add or remove nodes of a service through this sidecar: the program that
//! registered the service's name first.
//!
//! A registry lists whatever is written into it. Without this, any local program could
//! register `greeter/0-evil` at its own address and receive a share of every Greeter call.
//! So the first program to register a name here is handed a token, and every later
//! registration or removal under that name must present it (`authorization: Bearer ..`).
//! A name that already has nodes this sidecar did not register (a gRPC service that joined
//! the registry by itself, or another host's sidecar) is not this sidecar's to hand out.
//!
//! The claim lasts as long as the sidecar holds a live node of the service: when the last
//! one leaves or expires, the name is free again. It lives in this process only; the
//! registry itself trusts every client that can write to it.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use tokio::time::Instant;

use crate::sidecar::JsonError;

/// The most programs the sidecar keeps registered at once: one sidecar serves one host's
/// programs, and a loop that registers new ids must not fill the registry.
pub const MAX_REGISTRATIONS: usize = 100;

/// The nodes registered through this sidecar and the token of each service's first
/// registrant.
#[derive(Default)]
pub struct Registrations {
    /// `(service, id)` and when it expires unless registered again.
    nodes: HashMap<(String, String), Instant>,
    /// Service name to its owner's token.
    owners: HashMap<String, String>,
}

impl Registrations {
    /// Admits `service/id` for `ttl`, presented with `token`, when the registry lists
    /// `listed` (the ids of the service's nodes). Answers the token to hand back: a new one
    /// for a service's first registrant, `None` for its later registrations.
    pub fn admit(
        &mut self,
        (service, id): (&str, &str),
        ttl: Duration,
        token: Option<&str>,
        listed: &[String],
    ) -> Result<Option<String>, JsonError> {
        let now = Instant::now();
        self.expire(now);
        let key = (service.to_owned(), id.to_owned());
        let held = self.nodes.contains_key(&key);
        match self.owners.get(service) {
            Some(owner) => {
                check_token(service, token, owner)?;
                if !held && listed.iter().any(|listed| listed == id) {
                    return Err(not_ours(service, id));
                }
            }
            None if !listed.is_empty() => {
                return Err(JsonError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "service {service} has nodes this sidecar did not register: a service \
                         name belongs to its first registrant"
                    ),
                ));
            }
            None => {}
        }
        if !held && self.nodes.len() >= MAX_REGISTRATIONS {
            return Err(JsonError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the sidecar holds {MAX_REGISTRATIONS} registrations, its limit: \
                     deregister one or wait for one to expire"
                ),
            ));
        }
        self.nodes.insert(key, now + ttl);
        if self.owners.contains_key(service) {
            return Ok(None);
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.owners.insert(service.to_owned(), token.clone());
        Ok(Some(token))
    }

    /// Checks that `service/id` may be removed with `token`: a node this sidecar
    /// registered, by its service's owner. A node the registry does not list is nobody's:
    /// removing it is a no-op, allowed.
    pub fn may_leave(
        &mut self,
        (service, id): (&str, &str),
        token: Option<&str>,
        listed: &[String],
    ) -> Result<(), JsonError> {
        self.expire(Instant::now());
        let held = self.nodes.contains_key(&(service.to_owned(), id.to_owned()));
        match self.owners.get(service) {
            Some(owner) if held => check_token(service, token, owner),
            _ if listed.iter().any(|listed| listed == id) => Err(not_ours(service, id)),
            _ => Ok(()),
        }
    }

    /// Forgets `service/id`; the service's name is free once it holds no node of it.
    pub fn release(&mut self, service: &str, id: &str) {
        self.nodes.remove(&(service.to_owned(), id.to_owned()));
        self.drop_unheld_owners();
    }

    fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, expires| *expires > now);
        self.drop_unheld_owners();
    }

    fn drop_unheld_owners(&mut self) {
        let nodes = &self.nodes;
        self.owners.retain(|service, _| nodes.keys().any(|(held, _)| held == service));
    }
}

/// The token of `authorization: Bearer <token>`, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

fn check_token(service: &str, token: Option<&str>, owner: &str) -> Result<(), JsonError> {
    match token {
        Some(token) if same(token, owner) => Ok(()),
        _ => Err(JsonError::new(
            StatusCode::FORBIDDEN,
            format!(
                "service {service} belongs to the program that registered it first: send its \
                 token as `authorization: Bearer <token>`"
            ),
        )),
    }
}

fn not_ours(service: &str, id: &str) -> JsonError {
    JsonError::new(
        StatusCode::CONFLICT,
        format!("{service}/{id} was not registered through this sidecar: choose another id"),
    )
}

/// Compares every byte whatever the first difference, so the time a refusal takes does
/// not tell a guesser how much of a token it got right.
fn same(given: &str, owner: &str) -> bool {
    let (given, owner) = (given.as_bytes(), owner.as_bytes());
    given.len() == owner.len()
        && given.iter().zip(owner).fold(0, |diff, (a, b)| diff | (a ^ b)) == 0
}
