//! `secretstores.local.file`: secrets from a JSON file, nested keys flattened with `nestedSeparator`;
//! with `multiValued`, each top-level key is one secret holding several values.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{Secret, SecretError, SecretStore};
use crate::components::{ComponentError, Metadata};

pub struct FileStore {
    secrets: BTreeMap<String, Secret>,
    multi_valued: bool,
}

pub async fn build(md: Metadata) -> Result<Arc<dyn SecretStore>, ComponentError> {
    let path = md
        .string("secretsFile")
        .ok_or_else(|| ComponentError::invalid("secretsFile", "is required"))?;
    let separator = md.string("nestedSeparator").unwrap_or_else(|| ":".into());
    let multi = md.bool("multiValued")?.unwrap_or(false);
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| ComponentError::Init(format!("reading secrets file {path:?}: {e}")))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| ComponentError::Init(format!("secrets file {path:?} is not valid JSON: {e}")))?;
    Ok(Arc::new(
        FileStore::from_json(&json, &separator, multi).map_err(ComponentError::Init)?,
    ))
}

impl FileStore {
    pub fn from_json(json: &Value, separator: &str, multi_valued: bool) -> Result<Self, String> {
        let Value::Object(top) = json else {
            return Err("the secrets file must hold a JSON object".into());
        };
        let mut secrets = BTreeMap::new();
        if multi_valued {
            for (name, v) in top {
                let mut values = BTreeMap::new();
                match v {
                    Value::Object(_) => flatten(v, "", separator, &mut values),
                    _ => flatten(v, name, separator, &mut values),
                }
                secrets.insert(name.clone(), values);
            }
        } else {
            let mut flat = BTreeMap::new();
            flatten(json, "", separator, &mut flat);
            for (k, v) in flat {
                secrets.insert(k.clone(), BTreeMap::from([(k, v)]));
            }
        }
        Ok(FileStore { secrets, multi_valued })
    }
}

fn flatten(v: &Value, prefix: &str, sep: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}{sep}{k}")
                };
                flatten(v, &key, sep, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &format!("{prefix}{sep}{i}"), sep, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[async_trait]
impl SecretStore for FileStore {
    fn features(&self) -> &'static [&'static str] {
        if self.multi_valued {
            &["MULTIPLE_KEY_VALUES_PER_SECRET"]
        } else {
            &[]
        }
    }

    async fn get(&self, name: &str, _md: &BTreeMap<String, String>) -> Result<Secret, SecretError> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound(name.to_owned()))
    }

    async fn bulk_get(&self, _md: &BTreeMap<String, String>) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(self.secrets.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn nested_values_flatten_with_the_separator() {
        let doc = json!({"db": {"user": "admin", "port": 5432}, "token": "t"});
        let store = FileStore::from_json(&doc, ":", false).unwrap();
        let none = BTreeMap::new();
        assert_eq!(
            store.get("db:user", &none).await.unwrap(),
            BTreeMap::from([("db:user".into(), "admin".into())])
        );
        assert_eq!(store.get("db:port", &none).await.unwrap()["db:port"], "5432");
        assert_eq!(store.get("db", &none).await, Err(SecretError::NotFound("db".into())));
        assert_eq!(store.bulk_get(&none).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn multi_valued_keeps_one_secret_per_top_level_key() {
        let doc = json!({"db": {"user": "admin", "pass": {"v": "x"}}, "token": "t"});
        let store = FileStore::from_json(&doc, ".", true).unwrap();
        let none = BTreeMap::new();
        let db = store.get("db", &none).await.unwrap();
        assert_eq!(
            db,
            BTreeMap::from([("user".into(), "admin".into()), ("pass.v".into(), "x".into())])
        );
        assert_eq!(store.get("token", &none).await.unwrap()["token"], "t");
    }
}
