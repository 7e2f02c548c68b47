//! An opaque nmstate document (a desired or current network state).

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// An nmstate state document, kept as JSON. The API stores it unvalidated
/// (`x-kubernetes-preserve-unknown-fields`) so the CRDs never lag behind the nmstate schema;
/// the handler and the webhook parse it with the nmstate crate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetworkStateDocument(pub serde_json::Value);

impl NetworkStateDocument {
    /// True for a missing, `null` or `{}` document.
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            serde_json::Value::Null => true,
            serde_json::Value::Object(map) => map.is_empty(),
            _ => false,
        }
    }
}

impl JsonSchema for NetworkStateDocument {
    fn schema_name() -> Cow<'static, str> {
        "NetworkStateDocument".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}
