//! Who is calling: host agents authenticate with a ServiceAccount token bound
//! to our audience (`portplane.dev/agent`), sent as `authorization: Bearer
//! <token>`; the API server vouches for it through a TokenReview (the pattern
//! Linkerd and Istio use for their proxies).
//!
//! The naming rule (one ServiceAccount per host): ServiceAccount
//! `portplane-agent-<name>` in the agents' namespace (config
//! `agents.namespace`, default the controller's own namespace) is agent
//! `<name>`, and may only report as `<name>`. `portplane-agent enroll` creates
//! exactly that ServiceAccount.
//!
//! Results are cached briefly (config `agents.tokenCacheSeconds` for a good
//! token, [`NEGATIVE_TTL`] for a bad one), so a report every 10 s costs well
//! under one TokenReview; the count is the metric
//! `portplane_tokenreviews_total`. Tokens are never logged: only the
//! ServiceAccount they resolve to.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::metrics::Metrics;

/// The audience agent tokens must be bound to.
pub const AUDIENCE: &str = "portplane.dev/agent";
/// ServiceAccount `portplane-agent-<name>` is agent `<name>`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "portplane-agent-";
/// Longer bearer tokens are refused unread: a ServiceAccount JWT is ~1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How long a refused token stays refused without asking again; short, so a
/// freshly enrolled token works at once, long enough that one misconfigured
/// agent does not cost a TokenReview per call.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Cached tokens at most (each at most [`MAX_TOKEN_BYTES`]): bounds memory
/// whatever strangers send.
const CACHE_ENTRIES: usize = 512;
/// TokenReviews in flight at most: a flood of bad tokens must not become a
/// flood of API requests.
const REVIEWS_IN_FLIGHT: usize = 4;

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub authenticated: bool,
    /// `system:serviceaccount:<namespace>:<name>` for a ServiceAccount.
    pub username: String,
    /// The audiences the token is valid for, of those asked for.
    pub audiences: Vec<String>,
    /// The API server's reason when not authenticated.
    pub error: String,
}

/// Asks the API server (or, in unit tests, a stand-in) about one token.
pub type ReviewFn =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<Reviewed, String>> + Send + Sync>;

/// A TokenReview through `client` (needs `tokenreviews create`).
pub fn token_review(client: kube::Client) -> ReviewFn {
    Arc::new(move |token, audience| {
        let api: Api<TokenReview> = Api::all(client.clone());
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token,
                    audiences: Some(vec![audience]),
                },
                ..Default::default()
            };
            let reviewed = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            let status = reviewed.status.unwrap_or_default();
            Ok(Reviewed {
                authenticated: status.authenticated.unwrap_or(false),
                username: status.user.and_then(|u| u.username).unwrap_or_default(),
                audiences: status.audiences.unwrap_or_default(),
                error: status.error.unwrap_or_default(),
            })
        })
    })
}

/// Why a call was refused, as the gRPC status it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, a malformed header, or a token the API server rejects
    /// (expired, wrong audience, deleted ServiceAccount): UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token of an identity that may not do this: PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
    /// The API server could not be asked: UNAVAILABLE (the agent retries).
    #[error("{0}")]
    Unavailable(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Unauthenticated(m) => Status::unauthenticated(m),
            AuthError::PermissionDenied(m) => Status::permission_denied(m),
            AuthError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// The agent name a ServiceAccount username maps to, by the naming rule.
///
/// `username` is the TokenReview's `system:serviceaccount:<ns>:<sa>`.
/// Errors (PERMISSION_DENIED: the caller is someone, just not an agent) say
/// what the rule expected.
pub fn agent_name(username: &str, namespace: &str) -> Result<String, AuthError> {
    let expected = || {
        AuthError::PermissionDenied(format!(
            "{username} is not a portplane agent: expected ServiceAccount \
             {SERVICE_ACCOUNT_PREFIX}<name> in namespace {namespace} \
             (portplane-agent enroll creates it)"
        ))
    };
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(expected)?;
    let (ns, sa) = rest.split_once(':').ok_or_else(expected)?;
    if ns != namespace {
        return Err(expected());
    }
    match sa.strip_prefix(SERVICE_ACCOUNT_PREFIX) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(expected()),
    }
}

/// The bearer token of an `authorization` header value.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let header = header.ok_or_else(|| {
        AuthError::Unauthenticated(
            "no credential: expected `authorization: Bearer <ServiceAccount token>` \
             (portplane-agent enroll writes one to [controller] token_file)"
                .into(),
        )
    })?;
    if header.len() > MAX_TOKEN_BYTES + 7 {
        return Err(AuthError::Unauthenticated(format!(
            "authorization header longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(header)
        .map_err(|_| AuthError::Unauthenticated("authorization header is not text".into()))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Unauthenticated(
            "authorization header: expected `Bearer <token>`".into(),
        ));
    }
    Ok(token)
}

#[derive(Clone)]
struct Cached {
    outcome: Result<String, AuthError>,
    until: Instant,
}

/// Turns bearer tokens into agent names; cached, bounded, counted.
pub struct Authenticator {
    review: ReviewFn,
    namespace: String,
    audience: String,
    positive_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// `namespace`: where agent ServiceAccounts live; `positive_ttl`: how
    /// long a good token is trusted without asking again.
    pub fn new(
        review: ReviewFn,
        namespace: String,
        audience: String,
        positive_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Authenticator {
        Authenticator {
            review,
            namespace,
            audience,
            positive_ttl,
            cache: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(REVIEWS_IN_FLIGHT),
            metrics,
        }
    }

    /// The agent name `token` stands for.
    pub async fn agent(&self, token: &str) -> Result<String, AuthError> {
        // ServiceAccount tokens are JWTs (three base64url parts); anything
        // else is refused without costing the API server a TokenReview.
        let parts: Vec<&str> = token.split('.').collect();
        let base64url = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        };
        if parts.len() != 3 || !parts.iter().all(base64url) {
            return Err(AuthError::Unauthenticated(
                "not a ServiceAccount token (expected a JWT); portplane-agent enroll writes one"
                    .into(),
            ));
        }
        if let Some(hit) = self.cached(token) {
            return hit;
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| AuthError::Unavailable("controller shutting down".into()))?;
        // Another call may have asked about the same token meanwhile.
        if let Some(hit) = self.cached(token) {
            return hit;
        }
        self.metrics.token_reviews.fetch_add(1, Ordering::Relaxed);
        let reviewed = (self.review)(token.to_string(), self.audience.clone())
            .await
            .map_err(|e| {
                self.metrics
                    .token_review_errors
                    .fetch_add(1, Ordering::Relaxed);
                AuthError::Unavailable(format!("cannot review the token: {e}"))
            })?;
        let outcome = self.judge(&reviewed);
        let ttl = if outcome.is_ok() {
            self.positive_ttl
        } else {
            NEGATIVE_TTL
        };
        self.remember(token, outcome.clone(), ttl);
        outcome
    }

    /// The rule, on what the API server said.
    fn judge(&self, r: &Reviewed) -> Result<String, AuthError> {
        if !r.authenticated {
            let why = if r.error.is_empty() {
                "token rejected".to_string()
            } else {
                r.error.clone()
            };
            return Err(AuthError::Unauthenticated(format!(
                "{why} (expected a ServiceAccount token for audience {}; \
                 portplane-agent enroll writes one)",
                self.audience
            )));
        }
        if !r.audiences.iter().any(|a| a == &self.audience) {
            return Err(AuthError::Unauthenticated(format!(
                "token is not bound to audience {}",
                self.audience
            )));
        }
        agent_name(&r.username, &self.namespace)
    }

    fn cached(&self, token: &str) -> Option<Result<String, AuthError>> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.get(token)?;
        (hit.until > Instant::now()).then(|| hit.outcome.clone())
    }

    fn remember(&self, token: &str, outcome: Result<String, AuthError>, ttl: Duration) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() >= CACHE_ENTRIES {
            // Still full of live entries: start over rather than grow; the
            // cost is one TokenReview per agent.
            cache.clear();
        }
        cache.insert(
            token.to_string(),
            Cached {
                outcome,
                until: now + ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn reviewer(calls: Arc<AtomicU32>) -> ReviewFn {
        Arc::new(move |token: String, audience: String| {
            calls.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                Ok(match token.as_str() {
                    "good.x.y" => Reviewed {
                        authenticated: true,
                        username: "system:serviceaccount:portplane:portplane-agent-panda".into(),
                        audiences: vec![audience],
                        error: String::new(),
                    },
                    "other.audience.z" => Reviewed {
                        authenticated: true,
                        username: "system:serviceaccount:portplane:portplane-agent-panda".into(),
                        audiences: vec!["https://kubernetes.default.svc".into()],
                        error: String::new(),
                    },
                    _ => Reviewed {
                        authenticated: false,
                        username: String::new(),
                        audiences: Vec::new(),
                        error: "invalid bearer token".into(),
                    },
                })
            })
        })
    }

    fn auth(calls: Arc<AtomicU32>) -> Authenticator {
        Authenticator::new(
            reviewer(calls),
            "portplane".into(),
            AUDIENCE.into(),
            Duration::from_secs(60),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn the_naming_rule() {
        assert_eq!(
            agent_name(
                "system:serviceaccount:portplane:portplane-agent-panda",
                "portplane"
            ),
            Ok("panda".into())
        );
        for foreign in [
            "system:serviceaccount:other:portplane-agent-panda",
            "system:serviceaccount:portplane:default",
            "system:serviceaccount:portplane:portplane-agent-",
            "portplane-admin",
        ] {
            assert!(
                matches!(
                    agent_name(foreign, "portplane"),
                    Err(AuthError::PermissionDenied(_))
                ),
                "{foreign}"
            );
        }
    }

    #[test]
    fn bearer_header_shapes() {
        assert_eq!(bearer(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok("abc"));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"abc"] {
            assert!(matches!(
                bearer(Some(bad)),
                Err(AuthError::Unauthenticated(_))
            ));
        }
        assert!(matches!(bearer(None), Err(AuthError::Unauthenticated(_))));
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer(Some(long.as_bytes())).is_err());
    }

    #[tokio::test]
    async fn good_token_is_reviewed_once_then_cached() {
        let calls = Arc::new(AtomicU32::new(0));
        let a = auth(calls.clone());
        for _ in 0..10 {
            assert_eq!(a.agent("good.x.y").await, Ok("panda".into()));
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(a.metrics.token_reviews.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn bad_and_wrong_audience_tokens_are_unauthenticated() {
        let calls = Arc::new(AtomicU32::new(0));
        let a = auth(calls.clone());
        assert!(matches!(
            a.agent("forged.x.y").await,
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.agent("other.audience.z").await,
            Err(AuthError::Unauthenticated(_))
        ));
        // Negative results are cached too (briefly).
        let _ = a.agent("forged.x.y").await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // Not even shaped like a JWT: refused without a review.
        for junk in ["forged", "a.b", "a.b.c.d", "a.b c.d", "a..b"] {
            assert!(matches!(
                a.agent(junk).await,
                Err(AuthError::Unauthenticated(_))
            ));
        }
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn unreachable_api_server_is_unavailable_and_not_cached() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let review: ReviewFn = Arc::new(move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Err("connection refused".to_string()) })
        });
        let a = Authenticator::new(
            review,
            "portplane".into(),
            AUDIENCE.into(),
            Duration::from_secs(60),
            Arc::new(Metrics::default()),
        );
        assert!(matches!(
            a.agent("good.x.y").await,
            Err(AuthError::Unavailable(_))
        ));
        let _ = a.agent("good.x.y").await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let calls = Arc::new(AtomicU32::new(0));
        let a = auth(calls);
        for i in 0..(CACHE_ENTRIES * 3) {
            let _ = a.agent(&format!("stranger.{i}.x")).await;
        }
        assert!(a.cache.lock().unwrap().len() <= CACHE_ENTRIES);
    }
}
