//! `secretstores.local.env`: secrets from the sidecar's environment, with an optional name prefix.
//! Like Dapr, it never exposes `APP_API_TOKEN` or `DAPR_*` variables, and a missing variable reads as "".

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Secret, SecretError, SecretStore};
use crate::components::{ComponentError, Metadata};

pub struct EnvStore {
    prefix: String,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn SecretStore>, ComponentError> {
    Ok(Arc::new(EnvStore {
        prefix: md.string("prefix").unwrap_or_default(),
    }))
}

fn allowed(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_")
}

#[async_trait]
impl SecretStore for EnvStore {
    async fn get(&self, name: &str, _md: &BTreeMap<String, String>) -> Result<Secret, SecretError> {
        let var = format!("{}{name}", self.prefix);
        let value = if allowed(&var) {
            std::env::var(&var).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(BTreeMap::from([(name.to_owned(), value)]))
    }

    async fn bulk_get(&self, _md: &BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(std::env::vars()
            .filter(|(k, _)| allowed(k) && k.len() > self.prefix.len() && k.starts_with(&self.prefix))
            .map(|(k, v)| {
                let name = k[self.prefix.len()..].to_owned();
                (name.clone(), BTreeMap::from([(name, v)]))
            })
            .collect())
    }
}
