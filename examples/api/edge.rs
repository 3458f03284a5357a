//! What the edge decides before a call goes in, each piece on its own and testable alone:
//! who is calling ([`Keys`], a signed token), whether they may ([`Claims::allows`], scopes),
//! whether they are calling too often ([`RateLimit`], a token bucket per client), whether the
//! service behind is failing ([`Breaker`], per service), and whether the request is too big
//! ([`json_depth`] and the bounds in `gateway.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// A JSON Web Token's claims that the gateway reads: who (`sub`), what they may call
/// (`scope`, space-separated), and until when (`exp`, seconds since 1970).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub scope: String,
    pub exp: u64,
}

impl Claims {
    /// A scope is `<service>` (every method of it) or `<service>/<method>` (that one).
    pub fn allows(&self, service: &str, method: &str) -> bool {
        self.scope.split(' ').any(|scope| match scope.split_once('/') {
            Some((s, m)) => s == service && m == method,
            None => scope == service,
        })
    }
}

/// Why a token was refused: each is 401 (Unauthenticated), and the reason goes back.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed(&'static str),
    BadSignature,
    Expired,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Missing => f.write_str("no bearer token"),
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::BadSignature => f.write_str("the token's signature does not verify"),
            TokenError::Expired => f.write_str("the token has expired"),
        }
    }
}

/// The only header this gateway accepts: HS256. Comparing the whole header (rather than
/// reading `alg` from it) rules out `"alg":"none"` and every algorithm confusion.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The shared secret tokens are signed with (HMAC-SHA256, JWT's HS256).
pub struct Keys {
    key: hmac::Key,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Keys { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// `header.claims.signature`, each part base64url without padding.
    pub fn sign(&self, claims: &Claims) -> String {
        let claims = serde_json::to_vec(claims).expect("claims serialize");
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(claims));
        let signature = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// The claims of `token` if its signature verifies (in constant time) and it has not
    /// expired at `now` (seconds since 1970).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, signature) =
            token.rsplit_once('.').ok_or(TokenError::Malformed("no signature"))?;
        let (header, claims) =
            signed.split_once('.').ok_or(TokenError::Malformed("not three parts"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Only a signed token is read further: nobody without the secret gets to the parser.
        if URL_SAFE_NO_PAD.decode(header).ok().as_deref() != Some(HEADER.as_bytes()) {
            return Err(TokenError::Malformed("not an HS256 JWT"));
        }
        let claims = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims not base64url"))?;
        let claims: Claims = serde_json::from_slice(&claims)
            .map_err(|_| TokenError::Malformed("claims unreadable"))?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// A token bucket per client: each holds up to `burst` tokens, refilled at `per_second`; a
/// call takes one, and a client whose bucket is empty is told how long until the next.
pub struct RateLimit {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The most clients the limiter remembers. Past it, buckets that have filled up again (whose
/// clients have been quiet) are forgotten, which loses nothing: a new bucket starts full.
const MAX_CLIENTS: usize = 10_000;

impl RateLimit {
    pub fn new(burst: u32, per_second: f64) -> Self {
        RateLimit { burst: f64::from(burst), per_second, buckets: Mutex::default() }
    }

    /// Takes a token from `client`'s bucket, or says how long until one is there.
    pub fn take(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let fresh = Bucket { tokens: self.burst, at: now };
        let bucket = buckets.entry(client.to_owned()).or_insert(fresh);
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
    }
}

/// A circuit breaker's three states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls go through; failures in a row are counted.
    Closed,
    /// Calls are refused at once, without reaching the service, until the pause is over.
    Open,
    /// One trial call goes through; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        })
    }
}

/// A change of state, for whoever prints or counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// A breaker for one service: `threshold` failures in a row open it for `pause`.
pub struct Breaker {
    threshold: u32,
    pause: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    failures: u32,
    opened_at: Instant,
    /// A half-open breaker lets one call through at a time.
    trial_out: bool,
}

/// What a call that was let through did, as the breaker judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The service answered (any answer that is not its own failure: a NotFound is fine).
    Healthy,
    /// The service failed: unreachable, timed out, or an internal error.
    Failed,
    /// The call ended before the service was judged (the client's JSON was refused).
    Unjudged,
}

/// A call the breaker let through. It must be ended with [`Admitted::finish`]; one dropped
/// unfinished (its client went away) counts as [`Verdict::Unjudged`], so a half-open
/// breaker is never left waiting for a trial that will not come back.
pub struct Admitted<'a> {
    breaker: &'a Breaker,
    trial: bool,
    done: bool,
}

impl Breaker {
    pub fn new(threshold: u32, pause: Duration) -> Self {
        let inner = Inner {
            state: State::Closed,
            failures: 0,
            opened_at: Instant::now(),
            trial_out: false,
        };
        Breaker { threshold, pause, inner: Mutex::new(inner) }
    }

    pub fn state(&self) -> State {
        self.inner.lock().unwrap().state
    }

    /// Lets a call through, or refuses it saying how long the breaker stays open. An open
    /// breaker whose pause is over turns half-open here, and the transition is returned.
    pub fn admit(&self, now: Instant) -> (Result<Admitted<'_>, Duration>, Option<Transition>) {
        let mut inner = self.inner.lock().unwrap();
        let mut changed = None;
        if inner.state == State::Open {
            let reopens = inner.opened_at + self.pause;
            // exercise begins: refuse every call at once while the breaker's pause lasts
            if now < reopens {
                return (Err(reopens - now), None);
            }
            // exercise ends
            inner.state = State::HalfOpen;
            changed = Some(Transition { from: State::Open, to: State::HalfOpen });
        }
        if inner.state == State::HalfOpen {
            if inner.trial_out {
                return (Err(Duration::ZERO), changed);
            }
            inner.trial_out = true;
        }
        let trial = inner.state == State::HalfOpen;
        (Ok(Admitted { breaker: self, trial, done: false }), changed)
    }

    fn record(&self, trial: bool, verdict: Verdict, now: Instant) -> Option<Transition> {
        let mut inner = self.inner.lock().unwrap();
        if trial {
            inner.trial_out = false;
        }
        let from = inner.state;
        match (verdict, from) {
            (Verdict::Unjudged, _) => return None,
            (Verdict::Healthy, _) => {
                inner.failures = 0;
                inner.state = State::Closed;
            }
            (Verdict::Failed, State::HalfOpen) => {
                inner.state = State::Open;
                inner.opened_at = now;
            }
            (Verdict::Failed, _) => {
                inner.failures += 1;
                if inner.state == State::Closed && inner.failures >= self.threshold {
                    inner.state = State::Open;
                    inner.opened_at = now;
                }
            }
        }
        (inner.state != from).then_some(Transition { from, to: inner.state })
    }
}

impl Admitted<'_> {
    /// Records the call's outcome; a transition it caused is returned.
    pub fn finish(mut self, verdict: Verdict) -> Option<Transition> {
        self.done = true;
        self.breaker.record(self.trial, verdict, Instant::now())
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.trial, Verdict::Unjudged, Instant::now());
        }
    }
}

/// How deeply a JSON text nests (`{}` is 1, `{"a":[1]}` is 2), read in one pass without
/// parsing, so a body that would nest past a bound is refused before a parser recurses into
/// it. Brackets inside strings do not count.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}
