//! Where a request may come from. A browser on another site can send a request to a
//! dashboard on 127.0.0.1 (a form, a `fetch` in `no-cors` mode), and a DNS-rebinding
//! site can even read the answers. So:
//!
//! - bound to a loopback address, the dashboard answers only requests whose `Host` is
//!   that address or `localhost` with its port (a rebinding site's name is refused);
//! - a write (`POST`) that carries an `Origin` must come from the dashboard's own
//!   origin or the one `FASTWORKER_GUI_CORS_ORIGIN` allows (programs like `curl` send
//!   no `Origin`);
//! - every answer says it may not be framed (no clickjacking of the buttons) and the
//!   page loads nothing from anywhere else.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::calls;
use crate::task_error::{ErrorKind, TaskError};

/// What this dashboard accepts.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// `Host` values accepted; `None` (bound to a wildcard or a public address): any.
    hosts: Option<Vec<String>>,
    /// The one other origin writes may come from (`*`: any).
    cors_origin: Option<String>,
}

impl OriginPolicy {
    /// The policy of a dashboard bound to `local`.
    pub fn new(local: SocketAddr, cors_origin: Option<&str>) -> Self {
        let port = local.port();
        let hosts = local.ip().is_loopback().then(|| {
            let mut hosts = vec![
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
                local.to_string(),
            ];
            if port == 80 {
                hosts.extend(["localhost".into(), "127.0.0.1".into(), "[::1]".into()]);
            }
            hosts
        });
        OriginPolicy {
            hosts,
            cors_origin: cors_origin
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string),
        }
    }

    /// Why `method` with these `host` and `origin` headers is refused, if it is.
    pub fn refuse(
        &self,
        method: &Method,
        host: Option<&str>,
        origin: Option<&str>,
    ) -> Option<String> {
        if let Some(hosts) = &self.hosts {
            let host = host.unwrap_or("");
            if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return Some(format!(
                    "this dashboard answers only requests for {} (Host was {host:?})",
                    hosts[0]
                ));
            }
        }
        if *method == Method::POST {
            if let Some(origin) = origin {
                let own = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
                let allowed = self
                    .cors_origin
                    .as_deref()
                    .is_some_and(|o| o == "*" || o.eq_ignore_ascii_case(origin));
                if !own && !allowed {
                    return Some(format!(
                        "a write from the page of another site ({origin}) is refused; set FASTWORKER_GUI_CORS_ORIGIN to allow one"
                    ));
                }
            }
        }
        None
    }
}

/// The middleware: refuses what [`OriginPolicy`] refuses, and marks every answer as
/// not to be framed.
pub async fn guard(
    State(policy): State<Arc<OriginPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let refused = {
        let text =
            |name: header::HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        policy.refuse(request.method(), text(header::HOST), text(header::ORIGIN))
    };
    if let Some(why) = refused {
        return calls::error(
            StatusCode::FORBIDDEN,
            &TaskError::new(ErrorKind::Rejected, why),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_its_own_names_and_writes_only_from_its_own_origin() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let policy = OriginPolicy::new(local, None);
        let get = Method::GET;
        let post = Method::POST;
        assert!(policy.refuse(&get, Some("127.0.0.1:8080"), None).is_none());
        assert!(policy.refuse(&get, Some("localhost:8080"), None).is_none());
        assert!(policy
            .refuse(&get, Some("rebind.example:8080"), None)
            .is_some());
        assert!(policy.refuse(&get, None, None).is_some());
        assert!(policy
            .refuse(&post, Some("127.0.0.1:8080"), Some("http://127.0.0.1:8080"))
            .is_none());
        assert!(
            policy.refuse(&post, Some("127.0.0.1:8080"), None).is_none(),
            "curl"
        );
        assert!(policy
            .refuse(&post, Some("127.0.0.1:8080"), Some("http://evil.example"))
            .is_some());
        // A read from another origin is the browser's business (CORS), not refused.
        assert!(policy
            .refuse(&get, Some("127.0.0.1:8080"), Some("http://evil.example"))
            .is_none());

        let allowed = OriginPolicy::new(local, Some("https://ops.example"));
        assert!(allowed
            .refuse(&post, Some("127.0.0.1:8080"), Some("https://ops.example"))
            .is_none());

        let public = OriginPolicy::new("0.0.0.0:8080".parse().unwrap(), None);
        assert!(public
            .refuse(&get, Some("fw.internal:8080"), None)
            .is_none());
    }
}
