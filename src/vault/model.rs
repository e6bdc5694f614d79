//! The domain model the catalog stores: items with typed sources and protection states.
//!
//! Pure types and their (de)serialisation, no I/O. An item's definition is stored as JSON in
//! `items.source` (the same shape since the first vaults: `{"path", "excludes",
//! "one_file_system"}`, `{"images"}`, `{"config", "disks", "pre_script", "post_script"}`), plus
//! `restored_point` while an in-place restore waits for re-protection. Names are checked by
//! `check_item_name` wherever an item is created or renamed (and policy names by
//! `check_policy_name`). Also the vault's settings (`soft-delete-days`, `immutability`) and why a
//! point was soft-deleted.

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
    /// `coffre item rm --forget-points`: no backups, its points soft-deleted; the item row goes
    /// with its last point (`resume-protection` takes it back before that).
    #[serde(rename = "removed")]
    Removed,
}

impl ItemState {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Protected => "protected",
            ItemState::Stopped => "stopped",
            ItemState::NeedsReprotect => "needs-reprotect",
            ItemState::Removed => "removed",
        }
    }
    pub fn parse(s: &str) -> Option<ItemState> {
        match s {
            "protected" => Some(ItemState::Protected),
            "stopped" => Some(ItemState::Stopped),
            "needs-reprotect" => Some(ItemState::NeedsReprotect),
            "removed" => Some(ItemState::Removed),
            _ => None,
        }
    }
}

impl std::fmt::Display for ItemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory tree and how to walk it. The exclude options added after the first vaults are
/// stored only when set, so an older definition reads and writes back unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesSource {
    pub path: PathBuf,
    /// gitignore-style patterns (`--exclude`), matched case-sensitively.
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub one_file_system: bool,
    /// As `excludes`, matched ignoring case (`--iexclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iexcludes: Vec<String>,
    /// Files of patterns (`--exclude-file`), read again at every backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out the contents of directories holding a valid `CACHEDIR.TAG` (`--exclude-caches`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding a file of one of these names
    /// (`--exclude-if-present`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than this many bytes (`--exclude-larger-than`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_larger_than: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
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
    /// When the item was first defined (ns; RFC 3339 in JSON).
    #[serde(serialize_with = "super::ser_time")]
    pub created: i64,
    /// The name of the policy the item follows (its schedule and retention).
    pub policy: String,
    /// The point an in-place restore wrote back, while the item waits for re-protection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_point: Option<String>,
    /// The stored definition as read, kept when this build cannot read it (`source` is `None`)
    /// so that changing the item's state never overwrites it.
    #[serde(skip)]
    raw_source: serde_json::Value,
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
        policy: Option<String>,
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
            policy: policy.unwrap_or_else(|| DEFAULT_POLICY.to_string()),
            restored_point,
            raw_source: json,
        }
    }

    /// The JSON stored for this item's definition.
    pub(super) fn source_json(&self) -> serde_json::Value {
        let Some(source) = &self.source else {
            return self.raw_source.clone(); // unreadable here: written back as it was
        };
        let mut v = source.to_json();
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

/// The policy every vault has and new items follow unless told otherwise.
pub const DEFAULT_POLICY: &str = "default";

/// Why a policy name is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid policy name {0:?}: use 1 to 200 letters, digits, '-', '_' and '.', not starting with '.'"
)]
pub struct BadPolicyName(pub String);

/// Policy names follow the rules of item names (they are typed in the same commands).
pub fn check_policy_name(name: &str) -> Result<(), BadPolicyName> {
    check_item_name(name).map_err(|_| BadPolicyName(name.to_string()))
}

/// How far a vault protects its points from being shortened (`coffre vault set immutability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Immutability {
    /// Points may be forgotten, purged early, or given a shorter policy.
    Off,
    /// Nothing may make an existing point end earlier; can be turned off again.
    On,
    /// As `On`, and can never be turned off.
    Locked,
}

impl Immutability {
    pub fn as_str(self) -> &'static str {
        match self {
            Immutability::Off => "off",
            Immutability::On => "on",
            Immutability::Locked => "locked",
        }
    }

    pub fn parse(s: &str) -> Option<Immutability> {
        match s {
            "off" => Some(Immutability::Off),
            "on" => Some(Immutability::On),
            "locked" => Some(Immutability::Locked),
            _ => None,
        }
    }

    /// True when points are protected from being shortened.
    pub fn is_on(self) -> bool {
        self != Immutability::Off
    }
}

impl std::fmt::Display for Immutability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Days a soft-deleted point stays recoverable, unless the vault says otherwise.
pub const DEFAULT_SOFT_DELETE_DAYS: u32 = 14;

/// The vault-wide settings of the point lifecycle, as `coffre vault show` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VaultSettings {
    /// How long a soft-deleted point stays recoverable; 0: deletions purge at once.
    pub soft_delete_days: u32,
    pub immutability: Immutability,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            soft_delete_days: DEFAULT_SOFT_DELETE_DAYS,
            immutability: Immutability::Off,
        }
    }
}

impl VaultSettings {
    /// When a point soft-deleted at `deleted_at` (ns) is purged under these settings.
    pub fn purge_time(&self, deleted_at: i64) -> i64 {
        deleted_at.saturating_add(i64::from(self.soft_delete_days) * DAY_NS)
    }
}

/// One day in nanoseconds (soft-delete periods are counted in 24-hour days).
pub const DAY_NS: i64 = 86_400_000_000_000;

/// Why a point was soft-deleted (stored in `points.deleted_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// `coffre forget`.
    Forget,
    /// Expired by its policy, found by `coffre prune`.
    Prune,
    /// `coffre stop-protection --delete-data`.
    StopProtection,
}

/// Why a point tag is refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid tag {0:?}: use 1 to 100 characters, without spaces, commas or control characters")]
pub struct BadTag(pub String);

/// Tags name points in `backup --tag` and `points --tag`, where a comma separates tags.
pub fn check_tag(tag: &str) -> Result<(), BadTag> {
    let ok = !tag.is_empty()
        && tag.chars().count() <= 100
        && !tag
            .chars()
            .any(|c| c == ',' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(BadTag(tag.to_string()))
    }
}

/// The longest note a point keeps (`backup --note`), in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// What a user attaches to a new point: tags (`backup --tag`) and a free-text note.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointLabels {
    pub tags: Vec<String>,
    pub note: Option<String>,
}

impl Deletion {
    pub fn as_str(self) -> &'static str {
        match self {
            Deletion::Forget => "forget",
            Deletion::Prune => "prune",
            Deletion::StopProtection => "stop-protection",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_definitions_round_trip_with_their_old_shape() {
        let old = r#"{"path":"/home/me","excludes":["*.tmp"],"one_file_system":true,"restored_point":"ab12cd34"}"#;
        let it = Item::from_row(1, "home".into(), "files", old, "needs-reprotect", 5, None);
        assert_eq!(it.state, ItemState::NeedsReprotect);
        assert_eq!(it.restored_point.as_deref(), Some("ab12cd34"));
        assert_eq!(
            it.policy, DEFAULT_POLICY,
            "a row without a policy follows default"
        );
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
            Some("p".into()),
        );
        assert!(matches!(vm.source, Some(ItemSource::Vm(_))));
        assert_eq!(vm.policy, "p");
        let bad = Item::from_row(3, "b".into(), "disk", r#"{"nope":1}"#, "weird", 0, None);
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
