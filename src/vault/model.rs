//! The domain model the catalog stores: items with typed sources and protection states.
//!
//! Pure types and their (de)serialisation, no I/O. An item's definition is stored as JSON in
//! `items.source` (the same shape since the first vaults: `{"path", "excludes",
//! "one_file_system"}`, `{"images"}`, `{"config", "disks", "pre_script", "post_script"}`), plus
//! `restored_point` while an in-place restore waits for re-protection. Names are checked by
//! `check_item_name` wherever an item is created or renamed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What kind of thing an item protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Files,
    Disk,
    Vm,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Files => "files",
            ItemKind::Disk => "disk",
            ItemKind::Vm => "vm",
        }
    }
    pub fn parse(s: &str) -> Option<ItemKind> {
        match s {
            "files" => Some(ItemKind::Files),
            "disk" => Some(ItemKind::Disk),
            "vm" => Some(ItemKind::Vm),
            _ => None,
        }
    }
}

/// Whether an item is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ItemState {
    /// Backed up normally.
    #[serde(rename = "protected")]
    Protected,
    /// Data kept, no new backups until `coffre resume-protection`.
    #[serde(rename = "stopped")]
    Stopped,
    /// Restored in place: backups wait for `coffre-restore reprotect`.
    #[serde(rename = "needs-reprotect")]
    NeedsReprotect,
}

impl ItemState {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Protected => "protected",
            ItemState::Stopped => "stopped",
            ItemState::NeedsReprotect => "needs-reprotect",
        }
    }
    pub fn parse(s: &str) -> Option<ItemState> {
        match s {
            "protected" => Some(ItemState::Protected),
            "stopped" => Some(ItemState::Stopped),
            "needs-reprotect" => Some(ItemState::NeedsReprotect),
            _ => None,
        }
    }
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory tree and how to walk it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesSource {
    pub path: PathBuf,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub one_file_system: bool,
}

/// Raw images or block devices, backed up together as one point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSource {
    pub images: Vec<PathBuf>,
}

/// A VM: its config file, its disks and the scripts that quiesce it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSource {
    pub config: PathBuf,
    pub disks: Vec<PathBuf>,
    #[serde(default)]
    pub pre_script: Option<String>,
    #[serde(default)]
    pub post_script: Option<String>,
}

/// An item's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ItemSource {
    Files(FilesSource),
    Disk(DiskSource),
    Vm(VmSource),
}

impl ItemSource {
    pub fn kind(&self) -> ItemKind {
        match self {
            ItemSource::Files(_) => ItemKind::Files,
            ItemSource::Disk(_) => ItemKind::Disk,
            ItemSource::Vm(_) => ItemKind::Vm,
        }
    }

    /// Parses a stored definition of an item of `kind`.
    pub fn from_json(kind: ItemKind, v: &serde_json::Value) -> Result<ItemSource, String> {
        let r = match kind {
            ItemKind::Files => serde_json::from_value(v.clone()).map(ItemSource::Files),
            ItemKind::Disk => serde_json::from_value(v.clone()).map(ItemSource::Disk),
            ItemKind::Vm => serde_json::from_value(v.clone()).map(ItemSource::Vm),
        };
        r.map_err(|e| e.to_string())
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serialising plain structs of strings and paths cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The shell commands this item runs at backup time (a vault is trusted code).
    pub fn scripts(&self) -> Vec<(&'static str, &str)> {
        match self {
            ItemSource::Vm(v) => [("pre", &v.pre_script), ("post", &v.post_script)]
                .into_iter()
                .filter_map(|(p, s)| s.as_deref().map(|s| (p, s)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A protected item.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub kind: ItemKind,
    /// The stored definition; `None` if the catalog holds one this build cannot read.
    pub source: Option<ItemSource>,
    pub state: ItemState,
    pub created: i64,
    /// The point an in-place restore wrote back, while the item waits for re-protection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_point: Option<String>,
}

impl Item {
    /// Reads an item row (kind, state and source as stored).
    pub(super) fn from_row(
        id: i64,
        name: String,
        kind: &str,
        source: &str,
        state: &str,
        created: i64,
    ) -> Item {
        let kind = ItemKind::parse(kind).unwrap_or(ItemKind::Files);
        let json: serde_json::Value =
            serde_json::from_str(source).unwrap_or(serde_json::Value::Null);
        let restored_point = json
            .get("restored_point")
            .and_then(|p| p.as_str())
            .map(str::to_string);
        Item {
            id,
            name,
            kind,
            source: ItemSource::from_json(kind, &json).ok(),
            state: ItemState::parse(state).unwrap_or(ItemState::Stopped),
            created,
            restored_point,
        }
    }

    /// The JSON stored for this item's definition.
    pub(super) fn source_json(&self) -> serde_json::Value {
        let mut v = self
            .source
            .as_ref()
            .map(ItemSource::to_json)
            .unwrap_or(serde_json::Value::Null);
        if let (Some(p), Some(o)) = (&self.restored_point, v.as_object_mut()) {
            o.insert("restored_point".into(), p.clone().into());
        }
        v
    }
}

/// Why an item name is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid item name {0:?}: use 1 to 200 letters, digits, '-', '_' and '.', not starting with '.'"
)]
pub struct BadItemName(pub String);

/// The one check for every name that creates or renames an item: names are directory names in
/// the mount and appear in `NAME@POINT` specs, so no `/`, `@`, NUL, `.`/`..` or leading dot.
pub fn check_item_name(name: &str) -> Result<(), BadItemName> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BadItemName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_definitions_round_trip_with_their_old_shape() {
        let old = r#"{"path":"/home/me","excludes":["*.tmp"],"one_file_system":true,"restored_point":"ab12cd34"}"#;
        let it = Item::from_row(1, "home".into(), "files", old, "needs-reprotect", 5);
        assert_eq!(it.state, ItemState::NeedsReprotect);
        assert_eq!(it.restored_point.as_deref(), Some("ab12cd34"));
        let Some(ItemSource::Files(f)) = &it.source else {
            panic!("files source")
        };
        assert!(f.one_file_system);
        let back: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(it.source_json(), back);
        let vm = Item::from_row(
            2,
            "v".into(),
            "vm",
            r#"{"config":"/c","disks":["/d"]}"#,
            "protected",
            0,
        );
        assert!(matches!(vm.source, Some(ItemSource::Vm(_))));
        let bad = Item::from_row(3, "b".into(), "disk", r#"{"nope":1}"#, "weird", 0);
        assert!(bad.source.is_none());
    }

    #[test]
    fn item_names_are_checked_in_one_place() {
        for ok in ["home", "db-1", "vm_2.img", "A"] {
            assert!(check_item_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(201);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "x/y",
            "a@b",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(check_item_name(bad).is_err(), "{bad:?}");
        }
    }
}
