//! Calling the HTTP API as a browser (session cookie and CSRF token) or with a key.

use super::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A browser: the session cookie and the CSRF token the page would hold.
#[derive(Clone, Default)]
pub struct Browser {
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub set_cookie: Option<String>,
    pub retry_after: Option<String>,
    pub body: Value,
}

pub async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = super::http().request(method, s.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("easel_session={c}"));
    }
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let set_cookie = header("set-cookie");
    let retry_after = header("retry-after");
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        set_cookie,
        retry_after,
        body,
    }
}

pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("easel_session="))
        .expect("an easel_session cookie")
        .to_string()
}

impl Browser {
    pub async fn send(&self, s: &TestServer, m: Method, path: &str, body: Option<Value>) -> Answer {
        call(
            s,
            m,
            path,
            self.cookie.as_deref(),
            self.csrf.as_deref(),
            None,
            body,
        )
        .await
    }

    /// Takes the session from a sign-in style answer.
    pub fn adopt(&mut self, a: &Answer) {
        if let Some(c) = &a.set_cookie {
            self.cookie = Some(cookie_value(c));
        }
        if let Some(t) = a.body["csrf_token"].as_str() {
            self.csrf = Some(t.to_string());
        }
    }

    /// Downloads an export (`/api/privacy/export` or an admin's
    /// `/api/admin/users/{id}/export`); a 200 must be a ZIP sent as an attachment.
    pub async fn export(&self, s: &TestServer, path: &str) -> (StatusCode, Vec<u8>) {
        let res = super::http()
            .get(s.url(path))
            .header(
                "cookie",
                format!("easel_session={}", self.cookie.as_deref().expect("cookie")),
            )
            .send()
            .await
            .expect("send");
        let status = res.status();
        if status == StatusCode::OK {
            assert_eq!(
                res.headers()["content-type"],
                "application/zip",
                "an export is a ZIP"
            );
            let disposition = res.headers()["content-disposition"]
                .to_str()
                .expect("ascii");
            assert!(disposition.starts_with("attachment; filename=\"easel-export-"));
        }
        (status, res.bytes().await.expect("body").to_vec())
    }

    pub async fn login(s: &TestServer, email: &str, password: &str) -> Browser {
        let a = anonymous_post(
            s,
            "/api/auth/login",
            json!({"email": email, "password": password}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let mut b = Browser::default();
        b.adopt(&a);
        b
    }
}

/// A POST from a browser that is not signed in.
pub async fn anonymous_post(s: &TestServer, path: &str, body: Value) -> Answer {
    Browser::default()
        .send(s, Method::POST, path, Some(body))
        .await
}

/// The stable error code of an answer.
pub fn code(a: &Answer) -> &str {
    a.body["error"]["code"].as_str().unwrap_or("")
}
