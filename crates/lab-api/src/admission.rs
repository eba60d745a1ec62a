//! Mutating admission webhooks (placeholder until the webhook client lands).

use crate::resources::ResourceType;
use crate::server::State;
use crate::status::ApiError;
use serde_json::Value;

pub async fn mutate(
    _state: &State,
    _rt: &ResourceType,
    _op: &str,
    obj: Value,
    _old: Option<&Value>,
    _dry: bool,
) -> Result<Value, ApiError> {
    Ok(obj)
}
