//! Field ownership: `metadata.managedFields`, and the server-side apply built on it
//! (structured-merge-diff's `Updater`, over untyped JSON and the [schema](crate::schema)).
//!
//! - A [`FieldSet`] is a trie of path elements as `FieldsV1` spells them: `f:<field>` for an
//!   object's field, `k:{"name":"c"}` for an item of a `list-type: map` list (its keys, as JSON),
//!   `v:<json>` for an item of a `list-type: set` list. Atomic lists and maps (and every list
//!   without a list type) are leaves: one owner for the whole value. A set's *members* are the
//!   paths it owns; its *children* hold the paths below a member or an unowned parent (`"."`
//!   in `FieldsV1` marks a member that also has children).
//! - Every write records who changed what. An **update** (create, PUT, any patch but apply)
//!   compares the old and the new object: its manager takes the added and modified fields from
//!   everyone else, and removed fields leave every set. An **apply** makes the applied
//!   configuration's fields the applier's set, merges it into the live object
//!   ([`crate::apply`]), removes the fields the applier applied last time and no longer does
//!   (unless someone else owns them), and refuses with `409 Conflict`, naming every field,
//!   when it would change a field another manager owns, unless forced (then it takes them).
//! - Entries are keyed by manager, operation and subresource, as upstream keys them; the
//!   identity of the object (`apiVersion`, `kind`, `metadata.name`, `uid`, `resourceVersion`,
//!   …) and `managedFields` itself are never owned.
//! - Upstream folds the oldest update entries into `ancient-changes` past ten; so does this.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::schema::Schemas;

/// Why field ownership could not be tracked or an apply was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Fields the applier would change belong to other managers. Each conflict names the
    /// manager and the field path (`.spec.replicas`).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration could not be merged.
    #[error(transparent)]
    Merge(#[from] crate::apply::Error),
    /// The object is not a JSON object.
    #[error("the object is not a JSON object")]
    NotAnObject,
}

/// One field another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner.
    pub manager: String,
    /// The owner's `apiVersion`.
    pub api_version: String,
    /// The field, as upstream prints it (`.spec.template.spec.containers[name="c"].image`).
    pub field: String,
}

fn conflict_message(conflicts: &[Conflict]) -> String {
    let mut msg = match conflicts.len() {
        1 => "Apply failed with 1 conflict:".to_owned(),
        n => format!("Apply failed with {n} conflicts:"),
    };
    for c in conflicts {
        let _ =
            write!(msg, " conflict with \"{}\" using {}: {}", c.manager, c.api_version, c.field);
    }
    msg
}

/// A `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// `f:name`: a field of an object.
    Field(String),
    /// `k:{"name":"c"}`: the item of a map list with these key values (canonical JSON).
    Key(String),
    /// `v:"a"`: the item of a set list with this value (JSON).
    Value(String),
    /// `i:0`: an item by position (only read from clients; never produced here).
    Index(i64),
}

impl Element {
    fn encode(&self) -> String {
        match self {
            Element::Field(f) => format!("f:{f}"),
            Element::Key(k) => format!("k:{k}"),
            Element::Value(v) => format!("v:{v}"),
            Element::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Element> {
        let (tag, rest) = s.split_once(':')?;
        match tag {
            "f" => Some(Element::Field(rest.to_owned())),
            "k" => Some(Element::Key(rest.to_owned())),
            "v" => Some(Element::Value(rest.to_owned())),
            "i" => rest.parse().ok().map(Element::Index),
            _ => None,
        }
    }

    /// Appends the element as upstream prints paths.
    fn print(&self, out: &mut String) {
        match self {
            Element::Field(f) => {
                let _ = write!(out, ".{f}");
            }
            Element::Key(k) => {
                let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = write!(out, "[{}]", inner.join(","));
            }
            Element::Value(v) => {
                let _ = write!(out, "[={v}]");
            }
            Element::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
}

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<Element>,
    children: BTreeMap<Element, FieldSet>,
}

impl FieldSet {
    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.values().all(FieldSet::is_empty)
    }

    fn child(&mut self, e: Element) -> &mut FieldSet {
        self.children.entry(e).or_default()
    }

    /// Adds every path of `other`.
    pub fn union(&mut self, other: &FieldSet) {
        self.members.extend(other.members.iter().cloned());
        for (e, c) in &other.children {
            self.child(e.clone()).union(c);
        }
    }

    /// The paths of `self` that `other` lacks.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (e, c) in &self.children {
            let d = match other.children.get(e) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                children.insert(e.clone(), d);
            }
        }
        FieldSet { members, children }
    }

    /// The paths in both.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let mut children = BTreeMap::new();
        for (e, c) in &self.children {
            if let Some(o) = other.children.get(e) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    children.insert(e.clone(), i);
                }
            }
        }
        FieldSet { members, children }
    }

    /// Every path, printed as upstream prints them, in order.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_paths(&mut String::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut String, out: &mut Vec<String>) {
        let mut elements: BTreeSet<&Element> = self.members.iter().collect();
        elements.extend(self.children.keys());
        for e in elements {
            let len = prefix.len();
            e.print(prefix);
            if self.members.contains(e) {
                out.push(prefix.clone());
            }
            if let Some(c) = self.children.get(e) {
                c.collect_paths(prefix, out);
            }
            prefix.truncate(len);
        }
    }

    /// The set as `fieldsV1`.
    pub fn to_fields_v1(&self) -> Value {
        let mut out = Map::new();
        let mut elements: BTreeSet<&Element> = self.members.iter().collect();
        elements.extend(self.children.keys().filter(|e| !self.children[*e].is_empty()));
        for e in elements {
            let mut node = match self.children.get(e) {
                Some(c) => match c.to_fields_v1() {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
            if self.members.contains(e) && !node.is_empty() {
                node.insert(".".into(), Value::Object(Map::new()));
            }
            out.insert(e.encode(), Value::Object(node));
        }
        Value::Object(out)
    }

    /// Reads `fieldsV1`; `None` when it is not one.
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        let mut set = FieldSet::default();
        for (k, node) in v.as_object()? {
            let e = Element::decode(k)?;
            let node = node.as_object()?;
            if node.is_empty() || node.contains_key(".") {
                set.members.insert(e.clone());
            }
            let mut inner = Map::new();
            for (ck, cv) in node {
                if ck != "." {
                    inner.insert(ck.clone(), cv.clone());
                }
            }
            if !inner.is_empty() {
                set.children.insert(e, FieldSet::from_fields_v1(&Value::Object(inner))?);
            }
        }
        Some(set)
    }
}

/// How the schema treats a value.
enum Shape<'a> {
    /// Compared and owned whole.
    Atomic,
    /// An object whose fields are owned one by one.
    Fields,
    /// A list whose items are identified by these keys.
    MapList(Vec<String>, Option<&'a Value>),
    /// A list whose items are their own identity.
    SetList,
}

/// The schema-driven walk over objects.
struct Walker<'a> {
    schemas: &'a Schemas,
}

impl<'a> Walker<'a> {
    fn shape(&self, schema: Option<&'a Value>, v: &Value) -> Shape<'a> {
        let resolved = schema.map(|s| self.schemas.resolve(s));
        let ext = |name: &str| {
            schema
                .and_then(|s| s.get(name))
                .or_else(|| resolved.and_then(|r| r.get(name)))
                .and_then(Value::as_str)
        };
        match v {
            Value::Object(_) if ext("x-kubernetes-map-type") != Some("atomic") => Shape::Fields,
            Value::Array(_) => match ext("x-kubernetes-list-type") {
                Some("map") => {
                    let keys: Vec<String> = schema
                        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                        .or_else(|| resolved.and_then(|r| r.get("x-kubernetes-list-map-keys")))
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    if keys.is_empty() {
                        Shape::Atomic
                    } else {
                        Shape::MapList(keys, schema.and_then(|s| self.schemas.items(s)))
                    }
                }
                Some("set") => Shape::SetList,
                _ => Shape::Atomic,
            },
            _ => Shape::Atomic,
        }
    }

    /// Whether `schema` is a map (`additionalProperties`, no named properties).
    fn is_map(&self, schema: Option<&'a Value>) -> bool {
        schema.map(|s| self.schemas.resolve(s)).is_some_and(|s| {
            s.get("additionalProperties").is_some_and(Value::is_object)
                && s.get("properties").is_none()
        })
    }

    fn prop(&self, schema: Option<&'a Value>, name: &str) -> Option<&'a Value> {
        schema.and_then(|s| self.schemas.property(s, name))
    }

    /// Every path of `v` (below the node `set` stands for). With `nodes`, a map with entries
    /// (`labels`) is a path too, besides its entries, as upstream's comparisons record added
    /// and removed maps; an applied configuration owns only the entries.
    fn fields(&self, schema: Option<&'a Value>, v: &Value, set: &mut FieldSet, nodes: bool) {
        match (self.shape(schema, v), v) {
            (Shape::Fields, Value::Object(m)) => {
                for (k, c) in m {
                    if c.is_null() {
                        continue;
                    }
                    self.leaf_or_descend(
                        self.prop(schema, k),
                        Element::Field(k.clone()),
                        c,
                        set,
                        nodes,
                    );
                }
            }
            (Shape::MapList(keys, items), Value::Array(list)) => {
                for item in list {
                    let e = Element::Key(key_of(item, &keys));
                    set.members.insert(e.clone());
                    let mut sub = FieldSet::default();
                    self.fields(items, item, &mut sub, nodes);
                    if !sub.is_empty() {
                        set.child(e).union(&sub);
                    }
                }
            }
            (Shape::SetList, Value::Array(list)) => {
                set.members.extend(list.iter().map(|i| Element::Value(i.to_string())));
            }
            _ => {}
        }
    }

    /// Owns `v` at `e` as a leaf, or the paths below `e` when `v` has fields or items (a
    /// non-empty object or keyed list); an empty one is a leaf.
    fn leaf_or_descend(
        &self,
        schema: Option<&'a Value>,
        e: Element,
        v: &Value,
        set: &mut FieldSet,
        nodes: bool,
    ) {
        let descend = match (self.shape(schema, v), v) {
            (Shape::Fields, Value::Object(m)) => !m.is_empty(),
            (Shape::MapList(..) | Shape::SetList, Value::Array(l)) => !l.is_empty(),
            _ => false,
        };
        if descend {
            let mut sub = FieldSet::default();
            self.fields(schema, v, &mut sub, nodes);
            if nodes && self.is_map(schema) {
                set.members.insert(e.clone());
            }
            set.child(e).union(&sub);
        } else {
            set.members.insert(e);
        }
    }

    /// Upstream's `Compare`: what `new` added to, changed in and removed from `old`.
    fn compare(&self, schema: Option<&'a Value>, old: &Value, new: &Value, d: &mut Diff) {
        match (self.shape(schema, new), old, new) {
            (Shape::Fields, Value::Object(o), Value::Object(n))
                if matches!(self.shape(schema, old), Shape::Fields) =>
            {
                let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                for k in keys {
                    let e = Element::Field(k.clone());
                    let prop = self.prop(schema, k);
                    let (ov, nv) =
                        (o.get(k).filter(|v| !v.is_null()), n.get(k).filter(|v| !v.is_null()));
                    self.compare_element(prop, e, ov, nv, d);
                }
            }
            (Shape::MapList(keys, items), Value::Array(o), Value::Array(n)) => {
                let index = |l: &'_ [Value]| -> BTreeMap<String, usize> {
                    l.iter().enumerate().map(|(i, v)| (key_of(v, &keys), i)).collect()
                };
                let (oi, ni) = (index(o), index(n));
                let all: BTreeSet<&String> = oi.keys().chain(ni.keys()).collect();
                for k in all {
                    let e = Element::Key(k.clone());
                    let ov = oi.get(k).map(|&i| &o[i]);
                    let nv = ni.get(k).map(|&i| &n[i]);
                    match (ov, nv) {
                        (Some(ov), Some(nv)) => {
                            let mut sub = Diff::default();
                            self.compare(items, ov, nv, &mut sub);
                            d.nest(e, sub);
                        }
                        _ => self.compare_element(items, e, ov, nv, d),
                    }
                }
            }
            (Shape::SetList, Value::Array(o), Value::Array(n)) => {
                for v in n.iter().filter(|v| !o.contains(v)) {
                    d.added.members.insert(Element::Value(v.to_string()));
                }
                for v in o.iter().filter(|v| !n.contains(v)) {
                    d.removed.members.insert(Element::Value(v.to_string()));
                }
            }
            _ => {}
        }
    }

    fn compare_element(
        &self,
        schema: Option<&'a Value>,
        e: Element,
        old: Option<&Value>,
        new: Option<&Value>,
        d: &mut Diff,
    ) {
        match (old, new) {
            (None, None) => {}
            (None, Some(n)) => {
                d.added.members.insert(e.clone());
                let mut sub = FieldSet::default();
                self.fields(schema, n, &mut sub, true);
                if !sub.is_empty() {
                    d.added.child(e).union(&sub);
                }
            }
            (Some(o), None) => {
                d.removed.members.insert(e.clone());
                let mut sub = FieldSet::default();
                self.fields(schema, o, &mut sub, true);
                if !sub.is_empty() {
                    d.removed.child(e).union(&sub);
                }
            }
            (Some(o), Some(n)) => {
                let both_descend = matches!(
                    (self.shape(schema, o), self.shape(schema, n)),
                    (Shape::Fields, Shape::Fields)
                        | (Shape::MapList(..), Shape::MapList(..))
                        | (Shape::SetList, Shape::SetList)
                ) && o.is_object() == n.is_object();
                if both_descend {
                    let mut sub = Diff::default();
                    self.compare(schema, o, n, &mut sub);
                    d.nest(e, sub);
                } else if o != n {
                    d.modified.members.insert(e);
                }
            }
        }
    }

    /// Removes the paths of `remove` from `v`, except members that still have paths of
    /// `keep` below them (someone else owns part of them).
    fn prune(&self, schema: Option<&'a Value>, v: &mut Value, remove: &FieldSet, keep: &FieldSet) {
        let empty = FieldSet::default();
        match (self.shape(schema, v), v) {
            (Shape::Fields, Value::Object(m)) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let e = Element::Field(k.clone());
                    let kept_below = keep.children.get(&e).is_some_and(|c| !c.is_empty());
                    if remove.members.contains(&e) && !kept_below && !keep.members.contains(&e) {
                        m.remove(&k);
                    } else if let (Some(r), Some(c)) = (remove.children.get(&e), m.get_mut(&k)) {
                        let prop = self.prop(schema, &k);
                        self.prune(prop, c, r, keep.children.get(&e).unwrap_or(&empty));
                    }
                }
            }
            (Shape::MapList(keys, items), Value::Array(list)) => {
                list.retain(|item| {
                    let e = Element::Key(key_of(item, &keys));
                    let kept_below = keep.children.get(&e).is_some_and(|c| !c.is_empty());
                    !(remove.members.contains(&e) && !kept_below && !keep.members.contains(&e))
                });
                for item in list.iter_mut() {
                    let e = Element::Key(key_of(item, &keys));
                    if let Some(r) = remove.children.get(&e) {
                        self.prune(items, item, r, keep.children.get(&e).unwrap_or(&empty));
                    }
                }
            }
            (Shape::SetList, Value::Array(list)) => {
                list.retain(|item| {
                    let e = Element::Value(item.to_string());
                    !remove.members.contains(&e) || keep.members.contains(&e)
                });
            }
            _ => {}
        }
    }
}

/// The identity of a map-list item: its keys' values as canonical JSON (fields sorted, absent
/// keys left out).
fn key_of(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k).filter(|v| !v.is_null()) {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m).to_string()
}

/// What changed between two objects.
#[derive(Debug, Default)]
struct Diff {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

impl Diff {
    fn nest(&mut self, e: Element, sub: Diff) {
        for (mine, theirs) in [
            (&mut self.added, sub.added),
            (&mut self.modified, sub.modified),
            (&mut self.removed, sub.removed),
        ] {
            if !theirs.is_empty() {
                mine.child(e.clone()).union(&theirs);
            }
        }
    }
}

/// The fields nobody owns: the object's identity and bookkeeping.
fn unowned() -> FieldSet {
    let mut s = FieldSet::default();
    s.members.insert(Element::Field("apiVersion".into()));
    s.members.insert(Element::Field("kind".into()));
    let m = s.child(Element::Field("metadata".into()));
    for f in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "generation",
        "managedFields",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        m.members.insert(Element::Field(f.into()));
    }
    s
}

/// Removes the unowned fields (and everything below them) from a set.
fn strip(mut set: FieldSet) -> FieldSet {
    let u = unowned();
    set = set.difference(&u);
    if let Some(m) = set.children.get_mut(&Element::Field("metadata".into())) {
        for e in &u.children[&Element::Field("metadata".into())].members {
            m.children.remove(e);
        }
    }
    // `metadata` itself is never a member: it always exists.
    set.members.remove(&Element::Field("metadata".into()));
    set
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource.clone()));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        if s("fieldsType").is_some_and(|t| t != "FieldsV1") {
            return None;
        }
        Some(Entry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation")?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            fields: match v.get("fieldsV1") {
                Some(f) => FieldSet::from_fields_v1(f)?,
                None => FieldSet::default(),
            },
        })
    }
}

/// The `managedFields` of `obj`; `None` when they are malformed.
fn entries(obj: &Value) -> Option<Vec<Entry>> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(Entry::from_json).collect(),
        Some(_) => None,
    }
}

fn set_entries(obj: &mut Value, list: &[Entry]) {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list.iter().map(Entry::to_json).collect()));
    }
}

/// Upstream's limit on update entries before the oldest are folded together.
const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT_CHANGES: &str = "ancient-changes";

/// Who is writing.
#[derive(Debug, Clone, Copy)]
pub struct Manager<'a> {
    /// The field manager (`fieldManager`, or the client's user agent up to its first `/`).
    pub name: &'a str,
    /// The `apiVersion` it writes.
    pub api_version: &'a str,
    /// The subresource it writes through (`status`), empty for the object itself.
    pub subresource: &'a str,
    /// The time to record (RFC 3339).
    pub time: &'a str,
}

/// Field ownership over one schema source.
#[derive(Debug, Clone, Copy)]
pub struct FieldManager<'a> {
    walker_schemas: &'a Schemas,
}

impl<'a> FieldManager<'a> {
    /// Ownership over `schemas`.
    pub fn new(schemas: &'a Schemas) -> Self {
        FieldManager { walker_schemas: schemas }
    }

    fn walker(&self) -> Walker<'a> {
        Walker { schemas: self.walker_schemas }
    }

    /// Records an update (create, PUT or a patch that is not an apply) of `old` (`None` on
    /// create) into `new` by `who`: `new`'s `managedFields` when the client sent some (the
    /// client may reset them), else `old`'s, updated for the change.
    pub fn update(
        &self,
        schema: Option<&Value>,
        old: Option<&Value>,
        new: &mut Value,
        who: &Manager<'_>,
    ) {
        let base = match new.pointer("/metadata/managedFields") {
            Some(_) => entries(new).or_else(|| old.and_then(entries)),
            None => old.and_then(entries),
        };
        let mut list = base.unwrap_or_default();
        let empty = Value::Object(Map::new());
        let mut diff = Diff::default();
        self.walker().compare(schema, old.unwrap_or(&empty), new, &mut diff);
        let changed = {
            let mut c = strip(diff.added);
            c.union(&strip(diff.modified));
            c
        };
        let removed = strip(diff.removed);
        for e in list.iter_mut() {
            if e.same_owner(who.name, "Update", who.subresource) {
                continue;
            }
            e.fields = e.fields.difference(&changed).difference(&removed);
        }
        let at = list.iter().position(|e| e.same_owner(who.name, "Update", who.subresource));
        let mut mine = match at {
            Some(i) => list.remove(i),
            None => Entry {
                manager: who.name.to_owned(),
                operation: "Update".into(),
                api_version: who.api_version.to_owned(),
                time: None,
                subresource: who.subresource.to_owned(),
                fields: FieldSet::default(),
            },
        };
        let before = mine.fields.clone();
        mine.fields.union(&changed);
        mine.fields = mine.fields.difference(&removed);
        if mine.fields != before || mine.time.is_none() {
            mine.time = Some(who.time.to_owned());
        }
        mine.api_version = who.api_version.to_owned();
        list.push(mine);
        list.retain(|e| !e.fields.is_empty());
        fold_ancient(&mut list);
        set_entries(new, &list);
    }

    /// Applies `config` for `who` onto `live` (`None`: the object does not exist yet) and
    /// returns the new object with its `managedFields`. Without `force`, a change to a field
    /// another manager owns is refused with every such field named.
    pub fn apply(
        &self,
        schema: Option<&Value>,
        live: Option<&Value>,
        config: &Value,
        who: &Manager<'_>,
        force: bool,
    ) -> Result<Value> {
        if !config.is_object() {
            return Err(Error::NotAnObject);
        }
        let empty = Value::Object(Map::new());
        let live = live.unwrap_or(&empty);
        let mut list = entries(live).unwrap_or_default();
        let mut stripped_config = config.clone();
        if let Some(m) = stripped_config.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        let mut applied = FieldSet::default();
        self.walker().fields(schema, &stripped_config, &mut applied, false);
        let applied = strip(applied);

        let mut merged = crate::apply::merge_applied(
            self.walker_schemas,
            schema,
            live.clone(),
            stripped_config,
        )?;
        let at = list.iter().position(|e| e.same_owner(who.name, "Apply", who.subresource));
        let last = at.map(|i| list[i].fields.clone()).unwrap_or_default();

        // Who else owns what the apply changes.
        let mut diff = Diff::default();
        self.walker().compare(schema, live, &merged, &mut diff);
        let mut changed = strip(diff.added);
        changed.union(&strip(diff.modified));
        let mut conflicts = Vec::new();
        for (i, e) in list.iter().enumerate() {
            if Some(i) == at {
                continue;
            }
            let clash = e.fields.intersection(&changed).intersection(&applied);
            for field in clash.paths() {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field,
                });
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Error::Conflicts(conflicts));
        }
        for (i, e) in list.iter_mut().enumerate() {
            if Some(i) != at {
                e.fields = e.fields.difference(&changed.intersection(&applied));
            }
        }

        // Fields applied last time and not now go, unless someone else owns them.
        let mut others = FieldSet::default();
        for (i, e) in list.iter().enumerate() {
            if Some(i) != at {
                others.union(&e.fields);
            }
        }
        let dropped = last.difference(&applied).difference(&others);
        let mut keep = others;
        keep.union(&applied);
        self.walker().prune(schema, &mut merged, &dropped, &keep);

        // Fields the apply removed (pruned) leave everyone's sets.
        let mut after = Diff::default();
        self.walker().compare(schema, live, &merged, &mut after);
        let removed = strip(after.removed);
        for e in list.iter_mut() {
            e.fields = e.fields.difference(&removed);
        }
        let entry = Entry {
            manager: who.name.to_owned(),
            operation: "Apply".into(),
            api_version: who.api_version.to_owned(),
            time: Some(who.time.to_owned()),
            subresource: who.subresource.to_owned(),
            fields: applied,
        };
        match at {
            Some(i) => {
                if list[i].fields == entry.fields && list[i].api_version == entry.api_version {
                    // Unchanged ownership keeps its time, as upstream's.
                    list[i].fields = entry.fields;
                } else {
                    list[i] = entry;
                }
            }
            None => list.push(entry),
        }
        list.retain(|e| !e.fields.is_empty() || e.operation == "Apply");
        fold_ancient(&mut list);
        set_entries(&mut merged, &list);
        Ok(merged)
    }
}

/// Folds the oldest update entries into one `ancient-changes` entry past
/// [`MAX_UPDATE_MANAGERS`].
fn fold_ancient(list: &mut Vec<Entry>) {
    let updates = list.iter().filter(|e| e.operation == "Update").count();
    if updates <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut order: Vec<usize> =
        (0..list.len()).filter(|&i| list[i].operation == "Update").collect();
    order.sort_by(|&a, &b| list[a].time.cmp(&list[b].time));
    let fold: BTreeSet<usize> =
        order[..updates - MAX_UPDATE_MANAGERS + 1].iter().copied().collect();
    let mut ancient = Entry {
        manager: ANCIENT_CHANGES.into(),
        operation: "Update".into(),
        api_version: String::new(),
        time: None,
        subresource: String::new(),
        fields: FieldSet::default(),
    };
    let mut kept = Vec::with_capacity(list.len());
    for (i, e) in list.drain(..).enumerate() {
        if fold.contains(&i) {
            ancient.fields.union(&e.fields);
            ancient.api_version = e.api_version;
            if ancient.time < e.time {
                ancient.time = e.time;
            }
        } else {
            kept.push(e);
        }
    }
    kept.push(ancient);
    *list = kept;
}

#[cfg(test)]
#[path = "managed_tests.rs"]
mod tests;
