//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded to the
//! same untyped JSON the rest of the pipeline works on.
//!
//! kubectl's generators (`kubectl create namespace|deployment|configmap|secret|service|job…`,
//! `run`, `expose`) send their objects this way. The body is the magic `k8s\0` and a
//! `runtime.Unknown` envelope (`typeMeta` with apiVersion and kind, then the object's bytes).
//!
//! - **Field numbers and wire types** come from [`generated`], a table written once by
//!   `controlplane/dev/gen-proto-fields.py` from the `#[prost]` attributes of the k8s-pb crate
//!   (kube-rs' prost build of upstream's generated.proto files). Rerun it when k8s-pb is
//!   bumped; it keeps only messages the served kinds reach.
//! - **JSON names** come from the [schema](crate::schema): a field is the schema property whose
//!   name matches prost's snake_case one ignoring case and underscores (`pod_ip` is `podIP`),
//!   so names can never drift from what JSON clients use. Fields our schema does not know
//!   (newer than 1.33) are skipped, as Go's decoder skips unknown fields.
//! - **Embedded structs** (a message field the schema has no property for, such as
//!   `ConfigMapEnvSource.localObjectReference`) are inlined, as Go's JSON encoder inlines them.
//! - **Special messages** get their JSON forms: `Time` and `MicroTime` (RFC 3339),
//!   `Duration` (Go's `1h0m0s`), `IntOrString`, `Quantity`, `RawExtension` and `FieldsV1`
//!   (embedded JSON), and list wrappers such as `ExtraValue` (a plain list).
//! - **Zero values**: Go's protobuf encoder writes every non-pointer field, zero or not, and
//!   upstream's JSON encoder then omits the zero ones. Without Go's types this decoder drops
//!   `""`, `0` and `false` unless the schema marks the field required or it is one of the
//!   pointer fields where an explicit zero means something ([`ZERO_MATTERS`]:
//!   `replicas: 0`, `automountServiceAccountToken: false`, …). Empty messages are kept (an
//!   `emptyDir: {}` is meaningful). A zero `Time` is absent.
//!
//! Responses stay JSON, which every client accepts.

mod generated;

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::registry;
use crate::schema::Schemas;

/// The media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than this is refused (the API's objects nest about 15 levels).
const MAX_DEPTH: usize = 64;

/// A field's protobuf type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    /// No served kind has one today; the generator writes it when one does.
    #[allow(dead_code)]
    Double,
    /// A message, by its definition name (prost's spelling).
    Message(&'static str),
    /// A `map<string, V>`.
    Map(&'static Kind),
}

/// One field: tag, prost's name, type, repeated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field(pub u32, pub &'static str, pub Kind, pub bool);

/// Pointer fields where Go's protobuf encoder writes an explicit zero that means something.
pub const ZERO_MATTERS: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
    "completions",
    "parallelism",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "suspend",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "shareProcessNamespace",
    "hostUsers",
    "setHostnameAsFQDN",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "optional",
    "defaultMode",
    "mode",
    "expirationSeconds",
    "allocateLoadBalancerNodePorts",
    "immutable",
    "priority",
    "deletionGracePeriodSeconds",
    "gracePeriodSeconds",
    "orphanDependents",
    "controller",
    "blockOwnerDeletion",
    "tolerationSeconds",
    "ready",
    "serving",
    "terminating",
    "unschedulable",
];

/// Why a protobuf body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No `k8s\0` prefix.
    #[error("the body is not a Kubernetes protobuf message (no k8s magic prefix)")]
    NoMagic,
    /// Malformed wire data.
    #[error("malformed protobuf at byte {offset}: {why}")]
    Malformed {
        /// Where, in the message being decoded.
        offset: usize,
        /// What.
        why: &'static str,
    },
    /// The envelope names a kind this server does not decode.
    #[error("protobuf bodies of {api_version} {kind} are not supported")]
    UnknownKind {
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
    /// The envelope's content is encoded (gzip) or not protobuf.
    #[error("unsupported protobuf envelope content {0:?}")]
    Encoding(String),
    /// A message type outside the served kinds.
    #[error("the protobuf message type {0} is not one this server decodes")]
    UnknownMessage(String),
    /// Too deep.
    #[error("the protobuf message nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

fn table() -> &'static HashMap<String, &'static [Field]> {
    static T: OnceLock<HashMap<String, &'static [Field]>> = OnceLock::new();
    T.get_or_init(|| {
        generated::MESSAGES.iter().map(|(n, f)| (n.to_ascii_lowercase(), *f)).collect()
    })
}

/// A raw field from the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    /// A 32-bit value: no served kind has one; skipped.
    Fixed32,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(Error::Malformed { offset: *pos, why: "truncated varint" })?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(Error::Malformed { offset: *pos, why: "varint longer than 10 bytes" })
}

/// Every (tag, value) of a message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, Error> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let tag = u32::try_from(key >> 3)
            .map_err(|_| Error::Malformed { offset: pos, why: "tag out of range" })?;
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], Error> {
            let end = pos
                .checked_add(n)
                .filter(|&e| e <= buf.len())
                .ok_or(Error::Malformed { offset: *pos, why: "field runs past the end" })?;
            let s = &buf[*pos..end];
            *pos = end;
            Ok(s)
        };
        let value = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => Wire::Fixed64(u64::from_le_bytes(take(&mut pos, 8)?.try_into().unwrap_or([0; 8]))),
            2 => {
                let n = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| Error::Malformed { offset: pos, why: "length out of range" })?;
                Wire::Bytes(take(&mut pos, n)?)
            }
            5 => {
                take(&mut pos, 4)?;
                Wire::Fixed32
            }
            _ => {
                return Err(Error::Malformed { offset: pos, why: "unsupported wire type (groups)" })
            }
        };
        out.push((tag, value));
    }
    Ok(out)
}

/// Decodes a `k8s\0` + `runtime.Unknown` body into the JSON object it carries.
pub fn decode(body: &[u8], schemas: &Schemas) -> Result<Value, Error> {
    let envelope = body.strip_prefix(MAGIC).ok_or(Error::NoMagic)?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    for (tag, v) in fields(envelope)? {
        match (tag, v) {
            (1, Wire::Bytes(tm)) => {
                for (t, v) in fields(tm)? {
                    if let (1 | 2, Wire::Bytes(s)) = (t, v) {
                        let s = String::from_utf8_lossy(s).into_owned();
                        if t == 1 {
                            api_version = s;
                        } else {
                            kind = s;
                        }
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            (3, Wire::Bytes(e)) => encoding = String::from_utf8_lossy(e).into_owned(),
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(Error::Encoding(encoding));
    }
    let unknown = || Error::UnknownKind { api_version: api_version.clone(), kind: kind.clone() };
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    let definition = registry::RESOURCES
        .iter()
        .find(|r| r.gvk.group == group && r.gvk.version == version && r.gvk.kind == kind)
        .map(|r| r.definition)
        .or(match (group, kind.as_str()) {
            ("autoscaling", "Scale") => Some("io.k8s.api.autoscaling.v1.Scale"),
            ("authentication.k8s.io", "TokenRequest") => {
                Some("io.k8s.api.authentication.v1.TokenRequest")
            }
            ("", "DeleteOptions") | ("meta.k8s.io", "DeleteOptions") => {
                Some("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions")
            }
            _ => None,
        })
        .ok_or_else(unknown)?;
    let d = Decoder { schemas };
    let mut obj = d.message(definition, raw, 0)?;
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(api_version));
        o.insert("kind".into(), Value::String(kind));
    }
    Ok(obj)
}

struct Decoder<'a> {
    schemas: &'a Schemas,
}

fn normalized(name: &str) -> String {
    name.trim_start_matches("r#")
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Go's `time.Duration.String()` of `nanos`.
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim_fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim_fraction(n, 1_000_000));
    }
    let secs = n / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = trim_fraction(n % 60_000_000_000, 1_000_000_000);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

fn trim_fraction(n: u64, unit: u64) -> String {
    let whole = n / unit;
    let frac = n % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(_) | Value::Object(_) => false,
    }
}

impl Decoder<'_> {
    /// The schema definition of a message (prost's spelling, matched case-insensitively).
    fn definition(&self, message: &str) -> Option<&Value> {
        self.schemas.definition(message).or_else(|| {
            let lower = message.to_ascii_lowercase();
            self.schemas
                .definitions()
                .find(|(n, _)| n.to_ascii_lowercase() == lower)
                .map(|(_, d)| d)
        })
    }

    fn message(&self, name: &str, buf: &[u8], depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let short = name.rsplit('.').next().unwrap_or(name);
        match name {
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
            | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
                let (mut secs, mut nanos) = (0i64, 0i64);
                for (t, v) in fields(buf)? {
                    if let Wire::Varint(x) = v {
                        match t {
                            1 => secs = x as i64,
                            2 => nanos = i64::from(x as i32),
                            _ => {}
                        }
                    }
                }
                // Go's zero time (year 1) is "no time".
                if secs <= -62_135_596_800 {
                    return Ok(Value::Null);
                }
                let t = chrono::DateTime::from_timestamp(secs, u32::try_from(nanos).unwrap_or(0))
                    .ok_or(Error::Malformed { offset: 0, why: "time out of range" })?;
                let format = if short == "MicroTime" {
                    chrono::SecondsFormat::Micros
                } else {
                    chrono::SecondsFormat::Secs
                };
                return Ok(Value::String(t.to_rfc3339_opts(format, true)));
            }
            "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => {
                let mut d = 0i64;
                for (t, v) in fields(buf)? {
                    if let (1, Wire::Varint(x)) = (t, v) {
                        d = x as i64;
                    }
                }
                return Ok(Value::String(go_duration(d)));
            }
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                let (mut ty, mut int, mut s) = (0u64, 0i64, String::new());
                for (t, v) in fields(buf)? {
                    match (t, v) {
                        (1, Wire::Varint(x)) => ty = x,
                        (2, Wire::Varint(x)) => int = i64::from(x as i32),
                        (3, Wire::Bytes(b)) => s = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
                return Ok(if ty == 1 { Value::String(s) } else { json!(int) });
            }
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
                for (t, v) in fields(buf)? {
                    if let (1, Wire::Bytes(b)) = (t, v) {
                        return Ok(Value::String(String::from_utf8_lossy(b).into_owned()));
                    }
                }
                return Ok(Value::String("0".into()));
            }
            "io.k8s.apimachinery.pkg.runtime.RawExtension"
            | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
                for (t, v) in fields(buf)? {
                    if let (1, Wire::Bytes(b)) = (t, v) {
                        return Ok(serde_json::from_slice(b).unwrap_or(Value::Null));
                    }
                }
                return Ok(Value::Null);
            }
            _ => {}
        }
        let spec = table()
            .get(&name.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| Error::UnknownMessage(name.to_owned()))?;
        let schema = self.definition(name).map(|d| self.schemas.resolve(d));
        // A list wrapper (`ExtraValue`): one repeated field `items`, shown as the list itself.
        if spec.len() == 1
            && spec[0].1 == "items"
            && spec[0].3
            && schema.is_none_or(|s| s.get("type") == Some(&json!("array")))
        {
            let mut items = Vec::new();
            for (t, v) in fields(buf)? {
                if t == spec[0].0 {
                    items.extend(self.scalar_or_message(spec[0].2, v, depth)?);
                }
            }
            return Ok(Value::Array(items));
        }
        let properties = schema.and_then(|s| s.get("properties")).and_then(Value::as_object);
        let required: Vec<&str> = schema
            .and_then(|s| s.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let json_name = |prost: &str| -> Option<String> {
            match properties {
                Some(p) => {
                    let n = normalized(prost);
                    p.keys().find(|k| normalized(k) == n).cloned()
                }
                None => Some(camel(prost)),
            }
        };
        let mut out = Map::new();
        let mut scalars: Vec<String> = Vec::new();
        for (tag, v) in fields(buf)? {
            let Some(f) = spec.iter().find(|f| f.0 == tag) else { continue };
            let Some(key) = json_name(f.1) else {
                // A Go embedded struct (`ConfigMapEnvSource` embeds `LocalObjectReference`):
                // a message in protobuf, its fields inlined in JSON.
                if let (Kind::Message(m), false, Wire::Bytes(b)) = (f.2, f.3, &v) {
                    if let Value::Object(inner) = self.message(m, b, depth + 1)? {
                        out.extend(inner);
                    }
                }
                continue;
            };
            match f.2 {
                Kind::Map(value_kind) => {
                    let Wire::Bytes(entry) = v else { continue };
                    let (mut k, mut val) = (String::new(), Value::Null);
                    for (t, ev) in fields(entry)? {
                        match t {
                            1 => {
                                if let Wire::Bytes(b) = ev {
                                    k = String::from_utf8_lossy(b).into_owned();
                                }
                            }
                            2 => {
                                val = match *value_kind {
                                    Kind::Bytes => match ev {
                                        Wire::Bytes(b) => Value::String(
                                            base64::engine::general_purpose::STANDARD.encode(b),
                                        ),
                                        _ => Value::Null,
                                    },
                                    other => self
                                        .scalar_or_message(other, ev, depth)?
                                        .into_iter()
                                        .next()
                                        .unwrap_or(Value::Null),
                                };
                            }
                            _ => {}
                        }
                    }
                    if val.is_null() && matches!(*value_kind, Kind::String) {
                        val = Value::String(String::new());
                    }
                    let m = out.entry(key).or_insert_with(|| Value::Object(Map::new()));
                    if let Some(m) = m.as_object_mut() {
                        m.insert(k, val);
                    }
                }
                kind if f.3 => {
                    let items = self.scalar_or_message(kind, v, depth)?;
                    let list = out.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(l) = list.as_array_mut() {
                        l.extend(items);
                    }
                }
                kind => {
                    if let Some(val) = self.scalar_or_message(kind, v, depth)?.into_iter().next() {
                        if !matches!(kind, Kind::Message(_)) {
                            scalars.push(key.clone());
                        }
                        out.insert(key, val);
                    }
                }
            }
        }
        // A message that was sent is set (a pointer); a scalar's zero may be Go's default.
        out.retain(|k, v| {
            let scalar = scalars.contains(k);
            !v.is_null()
                && (!scalar
                    || !is_zero(v)
                    || required.contains(&k.as_str())
                    || ZERO_MATTERS.contains(&k.as_str()))
        });
        Ok(Value::Object(out))
    }

    /// One value (several for a packed repeated scalar).
    fn scalar_or_message(
        &self,
        kind: Kind,
        v: Wire<'_>,
        depth: usize,
    ) -> Result<Vec<Value>, Error> {
        Ok(match (kind, v) {
            (Kind::String, Wire::Bytes(b)) => {
                vec![Value::String(String::from_utf8_lossy(b).into_owned())]
            }
            (Kind::Bytes, Wire::Bytes(b)) => {
                vec![Value::String(base64::engine::general_purpose::STANDARD.encode(b))]
            }
            (Kind::Bool, Wire::Varint(x)) => vec![Value::Bool(x != 0)],
            (Kind::Int32, Wire::Varint(x)) => vec![json!(x as i32)],
            (Kind::Int64, Wire::Varint(x)) => vec![json!(x as i64)],
            (Kind::Double, Wire::Fixed64(x)) => vec![json!(f64::from_bits(x))],
            (Kind::Int32 | Kind::Int64 | Kind::Bool, Wire::Bytes(packed)) => {
                let mut pos = 0;
                let mut out = Vec::new();
                while pos < packed.len() {
                    let x = varint(packed, &mut pos)?;
                    out.push(match kind {
                        Kind::Int32 => json!(x as i32),
                        Kind::Bool => Value::Bool(x != 0),
                        _ => json!(x as i64),
                    });
                }
                out
            }
            (Kind::Message(m), Wire::Bytes(b)) => vec![self.message(m, b, depth + 1)?],
            _ => {
                return Err(Error::Malformed {
                    offset: 0,
                    why: "a field's wire type does not match its type",
                })
            }
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
