//! Malformed policies and requests, generated from a seed so a failure can be replayed.

use crate::fixture::{fresh_tls_request, post};
use serde_json::{Value, json};

/// xorshift64*: enough randomness for test cases, and reproducible.
pub struct Generator(u64);

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn text(&mut self, length: usize) -> String {
        const CHARS: &[u8] = b"abcXYZ019 -_./:!@#{}[]\"'\\%*=~\t";
        (0..length)
            .map(|_| char::from(CHARS[self.below(CHARS.len() as u64) as usize]))
            .collect()
    }

    /// Any JSON value, nested up to `depth`.
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 4 } else { 6 }) {
            0 => json!(self.next() as i64),
            1 => {
                let length = self.below(20) as usize;
                json!(self.text(length))
            }
            2 => json!(self.below(2) == 0),
            3 => Value::Null,
            4 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..self.below(4) {
                    let length = 1 + self.below(8) as usize;
                    let key = self.text(length);
                    map.insert(key, self.value(depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    fn nested(&mut self, depth: usize) -> Value {
        let mut value = json!("bottom");
        for _ in 0..depth {
            value = if self.below(2) == 0 {
                json!([value])
            } else {
                json!({"x": value})
            };
        }
        value
    }

    /// A spec that breaks at least one rule (or the schema), and what kind of break it is.
    pub fn next_case(&mut self) -> (&'static str, Value) {
        let interfaces = json!([{"name": "br1", "type": "linux-bridge", "state": "up"}]);
        match self.below(9) {
            0 => {
                let unknown = format!("zz{}", self.text(6));
                (
                    "unknown desiredState key",
                    json!({"desiredState": {unknown: self.value(3)}}),
                )
            }
            1 => (
                "random interfaces",
                json!({"desiredState": {"interfaces": {"not": self.value(3)}}}),
            ),
            2 => {
                let length = 1 + self.below(6) as usize;
                let limit = format!("{}x", self.text(length));
                (
                    "bad maxUnavailable string",
                    json!({"desiredState": {"interfaces": interfaces}, "maxUnavailable": limit}),
                )
            }
            3 => (
                "wrong maxUnavailable type",
                json!({"maxUnavailable": [self.value(2)]}),
            ),
            4 => {
                let key = format!("{}/{}/{}", self.text(3), self.text(3), self.text(3));
                ("bad nodeSelector key", json!({"nodeSelector": {key: "v"}}))
            }
            5 => {
                // A comparison without its right-hand side never parses.
                let field: String = (0..1 + self.below(8))
                    .map(|_| char::from(b'a' + (self.next() % 26) as u8))
                    .collect();
                let expression = format!("interfaces.{field}==");
                (
                    "bad capture",
                    json!({"capture": {"c": expression}, "desiredState": {"interfaces": []}}),
                )
            }
            6 => {
                let depth = 20 + self.below(80) as usize;
                (
                    "deep nesting",
                    json!({"desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "bridge": self.nested(depth)}]}}),
                )
            }
            7 => {
                let huge = "h".repeat(200_000 + self.below(300_000) as usize);
                (
                    "huge string",
                    json!({"desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "mtu": huge}]}}),
                )
            }
            _ => (
                "random spec",
                json!({"desiredState": "not an object", "junk": self.value(4)}),
            ),
        }
    }
}

/// Requests no API server would send, straight to the webhook over TLS. Returns what was
/// answered wrongly (empty when every one got a 4xx or a refusal and the server stayed up).
pub fn send_raw(port: u16, bundle: &str) -> Vec<String> {
    let validate = "/nodenetworkconfigurationpolicies-validate";
    let mut deep = String::new();
    for _ in 0..100_000 {
        deep.push('[');
    }
    let huge = vec![b'x'; 9 << 20]; // over the 8 MiB limit
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), "HTTP/1.1 400"),
        ("truncated", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"#.to_vec(), "HTTP/1.1 400"),
        ("no request", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "HTTP/1.1 400"),
        ("deeply nested", deep.into_bytes(), "HTTP/1.1 400"),
        ("over the size limit", huge, "HTTP/1.1 413"),
        (
            "object of the wrong shape",
            serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "1", "kind": {"group": "nmstate.io", "version": "v1", "kind": "NodeNetworkConfigurationPolicy"},
                    "resource": {"group": "nmstate.io", "version": "v1", "resource": "nodenetworkconfigurationpolicies"},
                    "operation": "CREATE", "userInfo": {},
                    "object": {"apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
                        "metadata": {"name": "p"}, "spec": {"maxUnavailable": {"a": 1}}}}
            }))
            .unwrap_or_default(),
            "\"allowed\":false",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, body, expected) in cases {
        let request = post(validate, &body);
        match fresh_tls_request(port, bundle, &request) {
            Ok((response, _)) if response.contains(expected) => {}
            // The server answers 413 once the limit is reached and closes while the rest of the
            // body is still being sent; the client may then see the reset before the answer.
            Err(error)
                if expected.contains("413") && (error.contains("Broken pipe") || error.contains("reset")) => {
            }
            Ok((response, _)) => wrong.push(format!(
                "{name}: {}",
                response.chars().take(300).collect::<String>()
            )),
            Err(error) => wrong.push(format!("{name}: {error}")),
        }
    }
    match fresh_tls_request(
        port,
        bundle,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ) {
        Ok((response, _)) if response.starts_with("HTTP/1.1 200") => {}
        other => wrong.push(format!("healthz after the raw requests: {other:?}")),
    }
    wrong
}
