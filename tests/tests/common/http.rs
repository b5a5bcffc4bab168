//! A blocking HTTP client (ureq) for the broker's `/metrics` and admin API.

use serde_json::Value;

/// The HTTP side of a running broker.
pub struct Http {
    pub base: String,
    pub token: String,
}

/// Status code and body of a response (JSON bodies parsed; others as a JSON string).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Http {
    pub fn new(port: u16, token: String) -> Http {
        Http { base: format!("http://127.0.0.1:{port}"), token }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> Reply {
        let mut req = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let res = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = res.status();
        let text = res.into_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Reply { status, body, text }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, Some(&self.token))
    }
    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, Some(&self.token))
    }
    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), Some(&self.token))
    }
    pub fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(body), Some(&self.token))
    }
    pub fn get_without_token(&self, path: &str) -> Reply {
        self.call("GET", path, None, None)
    }
    pub fn get_with_token(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, None, Some(token))
    }

    /// `/metrics` in the Prometheus text format.
    pub fn metrics(&self) -> String {
        self.call("GET", "/metrics", None, None).text
    }
}

/// The value of the sample `name{labels}` (labels as written, e.g. `qos="1"`; empty for none).
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    metrics.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == want).then(|| value.parse().ok()).flatten()
    })
}
