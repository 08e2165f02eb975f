//! Who may call the API. With `FASTWORKER_GUI_API_KEY`, every write (POST) needs
//! `Authorization: Bearer KEY`. With a cluster key, every read needs a bearer token
//! too: the cluster key (its 64 hex digits) or the API key. The page itself, its
//! assets, `/healthz` and `/readyz` carry no cluster data and stay open, so a browser
//! can load the page (which then asks for the token) and a probe can check liveness.

use axum::http::{header::AUTHORIZATION, HeaderMap};

use crate::transport::auth::ClusterKey;

/// The keys a request is checked against.
#[derive(Clone)]
pub struct Auth {
    api_key: Option<String>,
    cluster_key: Option<ClusterKey>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or not one of the keys.
    Unauthorized(&'static str),
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    /// Checks against `api_key` (writes) and `cluster_key` (everything).
    pub fn new(api_key: Option<String>, cluster_key: Option<ClusterKey>) -> Self {
        Auth {
            api_key: api_key.filter(|k| !k.is_empty()),
            cluster_key,
        }
    }

    /// Whether requests need a token at all.
    pub fn reads_need_token(&self) -> bool {
        self.cluster_key.is_some()
    }

    fn token(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    /// May a request with `headers` read (`write` false) or write?
    pub fn check(&self, headers: &HeaderMap, write: bool) -> Result<(), Refusal> {
        let token = Self::token(headers);
        let is_api_key = |t: &str| self.api_key.as_deref().is_some_and(|k| same(k, t));
        let is_cluster_key = |t: &str| self.cluster_key.as_ref().is_some_and(|k| k.accepts_hex(t));
        if write && self.api_key.is_some() {
            return match token {
                Some(t) if is_api_key(t) => Ok(()),
                Some(_) => Err(Refusal::Unauthorized("the bearer token is not the API key")),
                None => Err(Refusal::Unauthorized(
                    "this dashboard has an API key: send Authorization: Bearer KEY",
                )),
            };
        }
        if self.cluster_key.is_some() {
            return match token {
                Some(t) if is_cluster_key(t) || is_api_key(t) => Ok(()),
                Some(_) => Err(Refusal::Unauthorized(
                    "the bearer token is neither the cluster key nor the API key",
                )),
                None => Err(Refusal::Unauthorized(
                    "this cluster has a key: send Authorization: Bearer <the cluster key's 64 hex digits>",
                )),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn an_api_key_guards_writes_and_a_cluster_key_guards_everything() {
        let none = HeaderMap::new();
        let open = Auth::new(None, None);
        assert!(open.check(&none, true).is_ok());

        let api = Auth::new(Some("s3cret".into()), None);
        assert!(api.check(&none, false).is_ok());
        assert!(api.check(&none, true).is_err());
        assert!(api.check(&bearer("nope"), true).is_err());
        assert!(api.check(&bearer("s3cret"), true).is_ok());

        let hex = "ab".repeat(32);
        let key = ClusterKey::parse(&hex).unwrap();
        let cluster = Auth::new(None, Some(key.clone()));
        assert!(cluster.check(&none, false).is_err());
        assert!(cluster.check(&bearer(&"cd".repeat(32)), false).is_err());
        assert!(cluster.check(&bearer(&hex), false).is_ok());
        assert!(cluster.check(&bearer(&hex), true).is_ok());

        let both = Auth::new(Some("s3cret".into()), Some(key));
        assert!(both.check(&bearer("s3cret"), false).is_ok());
        assert!(
            both.check(&bearer(&hex), true).is_err(),
            "writes need the API key"
        );
    }
}
