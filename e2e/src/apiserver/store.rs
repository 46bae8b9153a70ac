//! The API double's object store: objects, a global resourceVersion and the change history that
//! watches replay from.

use super::kinds::Kind;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// How many changes the history keeps; a watch from further back gets `410 Gone`.
const HISTORY_LIMIT: usize = 20_000;

/// One change to one object, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// The object's kind.
    pub kind: Kind,
    /// The object before (None when created).
    pub old: Option<Arc<Value>>,
    /// The object after (None when deleted).
    pub new: Option<Arc<Value>>,
}

impl Change {
    /// The object's namespace ("" for cluster-scoped kinds).
    pub fn namespace(&self) -> &str {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .and_then(|o| o.pointer("/metadata/namespace"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

type Key = (Kind, String, String);

/// Objects by kind, namespace and name, with the history of changes.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Change>,
    /// Watches starting before this resourceVersion get `410 Gone`.
    oldest_watchable: u64,
    changes: broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store at resourceVersion 1.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(8192);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest_watchable: 1,
            changes,
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.oldest_watchable
    }

    /// A receiver of every later change (subscribe while holding the store's lock to get a
    /// gap-free view together with [`Store::changes_since`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Forgets the history: every watch from a resourceVersion before now gets `410 Gone`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest_watchable = self.rv;
    }

    /// Creates or replaces an object (given as JSON with `kind`, `metadata.name` and, for
    /// namespaced kinds, `metadata.namespace`, defaulting to `default`).
    pub fn apply(&mut self, mut object: Value) -> Result<u64> {
        let kind_name = object
            .get("kind")
            .and_then(Value::as_str)
            .context("object has no kind")?;
        let kind = Kind::from_name(kind_name)
            .with_context(|| format!("the lab does not serve kind {kind_name}"))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .context("object has no metadata.name")?
            .to_string();
        let namespace = if kind.namespaced() {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let key = (kind, namespace.clone(), name);
        let old = self.objects.get(&key).cloned();
        self.rv += 1;
        let rv = self.rv;
        let metadata = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .context("metadata is not an object")?;
        if kind.namespaced() {
            metadata.insert("namespace".into(), namespace.into());
        }
        metadata.insert("resourceVersion".into(), rv.to_string().into());
        let (uid, created) = match &old {
            Some(old) => (
                old.pointer("/metadata/uid").cloned().unwrap_or_default(),
                old.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or_default(),
            ),
            None => (
                Value::from(format!("00000000-0000-4000-8000-{rv:012}")),
                Value::from("2026-01-01T00:00:00Z"),
            ),
        };
        metadata.insert("uid".into(), uid);
        metadata.insert("creationTimestamp".into(), created);
        object["apiVersion"] = kind.api_version().into();
        let new = Arc::new(object);
        self.objects.insert(key, new.clone());
        self.record(Change {
            rv,
            kind,
            old,
            new: Some(new),
        });
        Ok(rv)
    }

    /// Deletes an object; the DELETED event carries its last state at the new resourceVersion.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Result<u64> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (kind, namespace.to_string(), name.to_string());
        let Some(old) = self.objects.remove(&key) else {
            bail!("{} {namespace}/{name} does not exist", kind.name());
        };
        self.rv += 1;
        let rv = self.rv;
        let mut last = (*old).clone();
        last["metadata"]["resourceVersion"] = rv.to_string().into();
        self.record(Change {
            rv,
            kind,
            old: Some(Arc::new(last)),
            new: None,
        });
        Ok(rv)
    }

    fn record(&mut self, change: Change) {
        if self.history.len() == HISTORY_LIMIT
            && let Some(dropped) = self.history.pop_front()
        {
            self.oldest_watchable = dropped.rv;
        }
        self.history.push_back(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }

    /// One object.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let namespace = if kind.namespaced() { namespace } else { "" };
        self.objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of a kind, by namespace then name.
    pub fn list(&self, kind: Kind) -> Vec<Arc<Value>> {
        self.objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The changes after `rv`, oldest first; None when history before it was forgotten.
    pub fn changes_since(&self, rv: u64) -> Option<Vec<Change>> {
        if rv < self.oldest_watchable {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_history_and_compaction() {
        let mut store = Store::new();
        let rv1 = store
            .apply(json!({"kind": "Service", "metadata": {"name": "a"}}))
            .unwrap();
        let rv2 = store
            .apply(json!({"kind": "Service", "metadata": {"name": "a", "labels": {"x": "1"}}}))
            .unwrap();
        assert!(rv2 > rv1);
        let obj = store.get(Kind::Service, "default", "a").unwrap();
        assert_eq!(obj["metadata"]["resourceVersion"], rv2.to_string());
        assert_eq!(obj["apiVersion"], "v1");
        let rv3 = store.delete(Kind::Service, "default", "a").unwrap();
        let changes = store.changes_since(rv1).unwrap();
        assert_eq!(changes.len(), 2);
        assert!(changes[1].new.is_none());
        assert_eq!(
            changes[1].old.as_ref().unwrap()["metadata"]["resourceVersion"],
            rv3.to_string()
        );
        store.compact();
        assert!(store.changes_since(rv1).is_none());
        assert_eq!(store.changes_since(rv3).unwrap().len(), 0);
        assert!(store.delete(Kind::Service, "default", "a").is_err());
        assert!(
            store
                .apply(json!({"kind": "ConfigMap", "metadata": {"name": "a"}}))
                .is_err()
        );
    }
}
