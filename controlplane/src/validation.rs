//! Validation: upstream's `Validate*` rules for what users write most, with its field paths
//! and messages, so `kubectl` shows the same `422 Invalid` errors as against a real cluster
//! (`Deployment.apps "web" is invalid: spec.template.metadata.labels: Invalid value: …`).
//!
//! Covered: object metadata (names per kind: DNS-1123 subdomains, labels for Namespaces,
//! DNS-1035 labels for Services, path segments for RBAC objects; label and annotation keys
//! and values; finalizers; owner references), Pod specs wherever they appear (containers,
//! ports, volumes and their mounts, enums, init and sidecar names), Services (ports, names,
//! target ports, ExternalName), workloads (selectors that match their template, replicas,
//! restart policies), Jobs and CronJobs (schedules), ConfigMap and Secret keys and sizes with
//! `immutable`, RBAC rules and bindings (`roleRef` immutable), PDBs, and the immutability of
//! Pod specs (only images, `activeDeadlineSeconds` and added tolerations may change) and
//! workload selectors on update.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::objects::{ApiError, Cause};
use crate::registry::Resource;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`,
    /// `FieldValueDuplicate`, `FieldValueNotSupported`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// The field path (`spec.containers[0].name`).
    pub field: String,
    /// Upstream's message (`Required value`, `Invalid value: "x": …`).
    pub message: String,
}

/// Upstream's error for a list of field errors.
pub fn to_api_error(r: &Resource, name: &str, errors: Vec<FieldError>) -> ApiError {
    let parts: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
    let kind = if r.gvk.group.is_empty() {
        r.gvk.kind.to_owned()
    } else {
        format!("{}.{}", r.gvk.kind, r.gvk.group)
    };
    let message = if parts.len() == 1 {
        format!("{kind} \"{name}\" is invalid: {}", parts[0])
    } else {
        format!("{kind} \"{name}\" is invalid: [{}]", parts.join(", "))
    };
    let mut e = ApiError::new(422, "Invalid", message);
    e.details = Some((r.gvk.kind.to_owned(), name.to_owned()));
    e.causes = errors
        .into_iter()
        .map(|f| Cause { reason: f.reason.into(), message: f.message, field: f.field })
        .collect();
    e
}

struct V {
    errors: Vec<FieldError>,
}

fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl V {
    fn push(&mut self, reason: &'static str, field: &str, message: String) {
        self.errors.push(FieldError { reason, field: field.to_owned(), message });
    }
    fn required(&mut self, field: &str) {
        self.push("FieldValueRequired", field, "Required value".into());
    }
    fn invalid(&mut self, field: &str, value: &Value, why: &str) {
        self.push("FieldValueInvalid", field, format!("Invalid value: {}: {why}", quote(value)));
    }
    fn forbidden(&mut self, field: &str, why: &str) {
        self.push("FieldValueForbidden", field, format!("Forbidden: {why}"));
    }
    fn duplicate(&mut self, field: &str, value: &Value) {
        self.push("FieldValueDuplicate", field, format!("Duplicate value: {}", quote(value)));
    }
    fn not_supported(&mut self, field: &str, value: &Value, allowed: &[&str]) {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        self.push(
            "FieldValueNotSupported",
            field,
            format!("Unsupported value: {}: supported values: {}", quote(value), list.join(", ")),
        );
    }

    fn one_of(&mut self, obj: &Value, key: &str, path: &str, allowed: &[&str]) {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
                self.not_supported(&format!("{path}.{key}"), v, allowed);
            }
        }
    }

    fn non_negative(&mut self, obj: &Value, key: &str, path: &str) {
        if let Some(v) = obj.get(key) {
            if v.as_i64().is_some_and(|n| n < 0) {
                self.invalid(&format!("{path}.{key}"), v, "must be greater than or equal to 0");
            }
        }
    }
}

// ---- names -----------------------------------------------------------------------------------

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 (label values, name parts).
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name (`example.com/name` or `name`): label and annotation keys, finalizers.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(s),
    }
}

/// An IANA service name (port names): at most 15, lowercase alphanumerics and '-', with a
/// letter, no leading, trailing or double '-'.
fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

/// How a kind's names are checked.
/// A name check and the message of its failure.
type NameRule = (fn(&str) -> bool, &'static str);

fn name_rule(r: &Resource) -> Option<NameRule> {
    match (r.gvk.group, r.gvk.kind) {
        ("", "Namespace") => Some((is_dns1123_label, DNS1123_LABEL_MSG)),
        ("", "Service") => Some((is_dns1035_label, DNS1035_LABEL_MSG)),
        ("rbac.authorization.k8s.io", _) => None,
        _ => Some((is_dns1123_subdomain, DNS1123_SUBDOMAIN_MSG)),
    }
}

fn metadata(v: &mut V, r: &Resource, obj: &Value) {
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let generated = meta.get("generateName").and_then(Value::as_str).is_some_and(|g| !g.is_empty());
    if name.is_empty() && !generated {
        v.push(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required".into(),
        );
    } else if !name.is_empty() {
        match name_rule(r) {
            Some((ok, msg)) => {
                if !ok(name) {
                    v.invalid("metadata.name", &Value::String(name.into()), msg);
                }
            }
            None => {
                if name == "." || name == ".." || name.contains('/') || name.contains('%') {
                    v.invalid(
                        "metadata.name",
                        &Value::String(name.into()),
                        "may not contain '/' or '%' and may not be '.' or '..'",
                    );
                }
            }
        }
    }
    labels(v, meta.get("labels"), "metadata.labels");
    if let Some(a) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, val) in a {
            total += k.len() + val.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                v.invalid("metadata.annotations", &Value::String(k.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
            }
        }
        if total > 256 * 1024 {
            v.push(
                "FieldValueTooLong",
                "metadata.annotations",
                format!("Too long: may not be more than 262144 bytes (is {total})"),
            );
        }
    }
    for (i, f) in meta.get("finalizers").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        if !f.as_str().is_some_and(is_qualified_name) {
            v.invalid(&format!("metadata.finalizers[{i}]"), f, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
        }
    }
    for (i, o) in
        meta.get("ownerReferences").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        for f in ["apiVersion", "kind", "name", "uid"] {
            if o.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                v.required(&format!("metadata.ownerReferences[{i}].{f}"));
            }
        }
    }
}

fn labels(v: &mut V, labels: Option<&Value>, path: &str) {
    for (k, val) in labels.and_then(Value::as_object).into_iter().flatten() {
        if !is_qualified_name(k) {
            v.invalid(path, &Value::String(k.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')");
        }
        let s = val.as_str().unwrap_or_default();
        if !s.is_empty() && !is_qualified_part(s) {
            v.invalid(path, val, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')");
        }
    }
}

// ---- pods ------------------------------------------------------------------------------------

fn pod_spec(v: &mut V, spec: &Value, path: &str) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        v.required(&format!("{path}.containers"));
    }
    let volumes: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|x| x.get("name")?.as_str())
        .collect();
    let mut seen = HashSet::new();
    for (i, vol) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let p = format!("{path}.volumes[{i}]");
        match vol.get("name").and_then(Value::as_str) {
            None | Some("") => v.required(&format!("{p}.name")),
            Some(n) if !is_dns1123_label(n) => {
                v.invalid(&format!("{p}.name"), &Value::String(n.into()), DNS1123_LABEL_MSG)
            }
            Some(n) if !seen.insert(n) => {
                v.duplicate(&format!("{p}.name"), &Value::String(n.into()))
            }
            Some(_) => {}
        }
        let sources = vol.as_object().map_or(0, |o| o.keys().filter(|k| *k != "name").count());
        if sources == 0 {
            v.required(&p);
        } else if sources > 1 {
            v.forbidden(&p, "may not specify more than 1 volume type");
        }
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            container(v, c, &format!("{path}.{list}[{i}]"), &volumes, &mut names);
        }
    }
    v.one_of(spec, "restartPolicy", path, &["Always", "OnFailure", "Never"]);
    v.one_of(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
    );
    v.non_negative(spec, "terminationGracePeriodSeconds", path);
    if let Some(a) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if a <= 0 {
            v.invalid(
                &format!("{path}.activeDeadlineSeconds"),
                &Value::from(a),
                "must be between 1 and 2147483647, inclusive",
            );
        }
    }
}

fn container(v: &mut V, c: &Value, path: &str, volumes: &[&str], names: &mut HashSet<String>) {
    match c.get("name").and_then(Value::as_str) {
        None | Some("") => v.required(&format!("{path}.name")),
        Some(n) if !is_dns1123_label(n) => {
            v.invalid(&format!("{path}.name"), &Value::String(n.into()), DNS1123_LABEL_MSG)
        }
        Some(n) if !names.insert(n.to_owned()) => {
            v.duplicate(&format!("{path}.name"), &Value::String(n.into()))
        }
        Some(_) => {}
    }
    if c.get("image").and_then(Value::as_str).is_none_or(|i| i.trim().is_empty()) {
        v.required(&format!("{path}.image"));
    }
    v.one_of(c, "imagePullPolicy", path, &["Always", "IfNotPresent", "Never"]);
    v.one_of(c, "terminationMessagePolicy", path, &["File", "FallbackToLogsOnError"]);
    let mut port_names = HashSet::new();
    for (i, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        match p.get("containerPort") {
            None => v.required(&format!("{pp}.containerPort")),
            Some(x) if !x.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => v.invalid(
                &format!("{pp}.containerPort"),
                x,
                "must be between 1 and 65535, inclusive",
            ),
            Some(_) => {}
        }
        if let Some(h) = p.get("hostPort") {
            if !h.as_i64().is_some_and(|n| (0..=65535).contains(&n)) {
                v.invalid(&format!("{pp}.hostPort"), h, "must be between 1 and 65535, inclusive");
            }
        }
        v.one_of(p, "protocol", &pp, &["SCTP", "TCP", "UDP"]);
        if let Some(n) = p.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            if !is_port_name(n) {
                v.invalid(&format!("{pp}.name"), &Value::String(n.into()), "must be no more than 15 characters, contain only lowercase alphanumerics or '-', contain a letter, and not begin, end or repeat '-'");
            } else if !port_names.insert(n) {
                v.duplicate(&format!("{pp}.name"), &Value::String(n.into()));
            }
        }
    }
    for (i, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let mp = format!("{path}.volumeMounts[{i}]");
        let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            v.required(&format!("{mp}.name"));
        } else if !volumes.contains(&name) {
            v.push("FieldValueNotFound", &format!("{mp}.name"), format!("Not found: {name:?}"));
        }
        if m.get("mountPath").and_then(Value::as_str).is_none_or(str::is_empty) {
            v.required(&format!("{mp}.mountPath"));
        }
    }
    for (i, e) in c.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let n = e.get("name").and_then(Value::as_str).unwrap_or_default();
        if n.is_empty() {
            v.required(&format!("{path}.env[{i}].name"));
        } else if n.contains('=') || !n.bytes().all(|b| (32..127).contains(&b)) {
            v.invalid(&format!("{path}.env[{i}].name"), &Value::String(n.into()), "a valid environment variable name must consist only of printable ASCII characters other than '='");
        }
    }
}

// ---- kinds -----------------------------------------------------------------------------------

fn selector_matches_template(v: &mut V, spec: &Value, path: &str) {
    let selector = spec.get("selector");
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels").and_then(Value::as_object).is_none_or(Map::is_empty)
            && s.get("matchExpressions").and_then(Value::as_array).is_none_or(Vec::is_empty)
    });
    if empty {
        v.required(&format!("{path}.selector"));
        return;
    }
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(s) = selector {
        if !crate::pods::selects(s, &labels) {
            v.invalid(
                &format!("{path}.template.metadata.labels"),
                &Value::Object(labels),
                "`selector` does not match template `labels`",
            );
        }
    }
}

fn workload(v: &mut V, obj: &Value, restart_always: bool) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    v.non_negative(&spec, "replicas", "spec");
    v.non_negative(&spec, "minReadySeconds", "spec");
    v.non_negative(&spec, "revisionHistoryLimit", "spec");
    selector_matches_template(v, &spec, "spec");
    if let Some(t) = spec.pointer("/template/spec") {
        labels(v, spec.pointer("/template/metadata/labels"), "spec.template.metadata.labels");
        pod_spec(v, t, "spec.template.spec");
        if restart_always {
            if let Some(rp) = t.get("restartPolicy").filter(|r| r.as_str() != Some("Always")) {
                v.not_supported("spec.template.spec.restartPolicy", rp, &["Always"]);
            }
        }
    } else {
        v.required("spec.template");
    }
}

fn job_template(v: &mut V, spec: &Value, path: &str) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        v.non_negative(spec, f, path);
    }
    match spec.pointer("/template/spec") {
        Some(t) => {
            pod_spec(v, t, &format!("{path}.template.spec"));
            match t.get("restartPolicy").and_then(Value::as_str) {
                Some("OnFailure" | "Never") => {}
                other => v.not_supported(
                    &format!("{path}.template.spec.restartPolicy"),
                    &Value::from(other.unwrap_or("Always")),
                    &["OnFailure", "Never"],
                ),
            }
        }
        None => v.required(&format!("{path}.template")),
    }
}

/// A 5-field cron schedule (or a `@` macro), as upstream's cron parser accepts.
fn valid_schedule(s: &str) -> bool {
    let s = s.trim();
    let s = s
        .strip_prefix("TZ=")
        .or_else(|| s.strip_prefix("CRON_TZ="))
        .map_or(s, |rest| rest.split_once(' ').map_or("", |(_, r)| r));
    if s.starts_with('@') {
        return matches!(
            s,
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly"
        ) || s.starts_with("@every ");
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    fields.len() == 5
        && fields.iter().zip(ranges).all(|(f, (lo, hi))| {
            f.split(',').all(|part| {
                let (range, step) =
                    part.split_once('/').map_or((part, None), |(r, s)| (r, Some(s)));
                if step.is_some_and(|s| s.parse::<u32>().map_or(true, |n| n == 0)) {
                    return false;
                }
                if range == "*" || range == "?" {
                    return true;
                }
                let names = |x: &str| -> Option<u32> {
                    let months = [
                        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                        "nov", "dec",
                    ];
                    let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
                    x.parse().ok().or_else(|| {
                        let l = x.to_ascii_lowercase();
                        if hi == 12 {
                            months.iter().position(|m| *m == l).map(|p| p as u32 + 1)
                        } else if hi == 7 {
                            days.iter().position(|d| *d == l).map(|p| p as u32)
                        } else {
                            None
                        }
                    })
                };
                let bounds = match range.split_once('-') {
                    Some((a, b)) => names(a).zip(names(b)),
                    None => names(range).map(|a| (a, a)),
                };
                bounds.is_some_and(|(a, b)| a >= lo && b <= hi && a <= b)
            })
        })
}

fn service(v: &mut V, obj: &Value) {
    let spec = obj.get("spec").cloned().unwrap_or_default();
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    let ports = spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if ty == "ExternalName" {
        match spec.get("externalName").and_then(Value::as_str) {
            None | Some("") => v.required("spec.externalName"),
            Some(n) if !is_dns1123_subdomain(n.trim_end_matches('.')) => {
                v.invalid("spec.externalName", &Value::String(n.into()), DNS1123_SUBDOMAIN_MSG)
            }
            Some(_) => {}
        }
    } else if ports.is_empty() && !headless {
        v.required("spec.ports");
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            v.required(&format!("{pp}.name"));
        } else if !name.is_empty() && !is_dns1123_label(name) {
            v.invalid(&format!("{pp}.name"), &Value::String(name.into()), DNS1123_LABEL_MSG);
        } else if !name.is_empty() && !names.insert(name.to_owned()) {
            v.duplicate(&format!("{pp}.name"), &Value::String(name.into()));
        }
        match p.get("port") {
            None => v.required(&format!("{pp}.port")),
            Some(x) if !x.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                v.invalid(&format!("{pp}.port"), x, "must be between 1 and 65535, inclusive")
            }
            Some(_) => {}
        }
        v.one_of(p, "protocol", &pp, &["SCTP", "TCP", "UDP"]);
        let key = (
            p.get("port").and_then(Value::as_i64),
            p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_owned(),
        );
        if !seen.insert(key) {
            v.duplicate(
                &pp,
                &Value::String(format!(
                    "{}/{}",
                    p.get("port").and_then(Value::as_i64).unwrap_or(0),
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                )),
            );
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => v
                .invalid(
                    &format!("{pp}.targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ),
            Some(Value::String(s)) if !is_port_name(s) => v.invalid(
                &format!("{pp}.targetPort"),
                &Value::String(s.clone()),
                "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            ),
            _ => {}
        }
    }
    labels(v, spec.get("selector"), "spec.selector");
}

fn data_keys(v: &mut V, obj: &Value, fields: &[&str], limit: usize) {
    let mut total = 0;
    let mut seen = HashSet::new();
    for f in fields {
        for (k, val) in obj.get(*f).and_then(Value::as_object).into_iter().flatten() {
            total += val.as_str().map_or(0, str::len);
            if !is_config_key(k) {
                v.invalid(f, &Value::String(k.clone()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
            }
            if !seen.insert(k.clone()) {
                v.duplicate(&format!("{f}[{k}]"), &Value::String(k.clone()));
            }
        }
    }
    if total > limit {
        v.push("FieldValueTooLong", "data", format!("Too long: must have at most {limit} bytes"));
    }
}

fn rbac(v: &mut V, obj: &Value) {
    for (i, rule) in obj.get("rules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if rule.get("verbs").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            v.required(&format!("rules[{i}].verbs"));
        }
        let resources =
            rule.get("resources").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
        let urls =
            rule.get("nonResourceURLs").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
        if resources && urls {
            v.invalid(
                &format!("rules[{i}].nonResourceURLs"),
                rule.get("nonResourceURLs").unwrap_or(&Value::Null),
                "rules cannot apply to both regular resources and non-resource URLs",
            );
        }
    }
}

fn binding(v: &mut V, obj: &Value) {
    match obj.pointer("/roleRef/kind").and_then(Value::as_str) {
        Some("Role" | "ClusterRole") => {}
        Some(k) => {
            v.not_supported("roleRef.kind", &Value::String(k.into()), &["Role", "ClusterRole"])
        }
        None => v.required("roleRef.kind"),
    }
    if obj.pointer("/roleRef/name").and_then(Value::as_str).is_none_or(str::is_empty) {
        v.required("roleRef.name");
    }
    for (i, s) in obj.get("subjects").and_then(Value::as_array).into_iter().flatten().enumerate() {
        match s.get("kind").and_then(Value::as_str) {
            Some("ServiceAccount") => {
                if s.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty)
                    && obj.pointer("/metadata/namespace").is_none()
                {
                    v.required(&format!("subjects[{i}].namespace"));
                }
            }
            Some("User" | "Group") => {}
            Some(k) => v.not_supported(
                &format!("subjects[{i}].kind"),
                &Value::String(k.into()),
                &["ServiceAccount", "User", "Group"],
            ),
            None => v.required(&format!("subjects[{i}].kind")),
        }
        if s.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            v.required(&format!("subjects[{i}].name"));
        }
    }
}

/// Validates a new (`old` None) or updated object of `r`; empty when valid.
pub fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut v = V { errors: Vec::new() };
    metadata(&mut v, r, obj);
    match (r.gvk.group, r.gvk.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                pod_spec(&mut v, spec, "spec");
            } else {
                v.required("spec");
            }
        }
        ("", "Service") => service(&mut v, obj),
        ("", "ConfigMap") => data_keys(&mut v, obj, &["data", "binaryData"], 1 << 20),
        ("", "Secret") => data_keys(&mut v, obj, &["data", "stringData"], 1 << 20),
        ("apps", "Deployment") => {
            workload(&mut v, obj, true);
            if let Some(strategy) = obj.pointer("/spec/strategy") {
                v.one_of(strategy, "type", "spec.strategy", &["Recreate", "RollingUpdate"]);
            }
        }
        ("apps", "ReplicaSet" | "StatefulSet" | "DaemonSet") => workload(&mut v, obj, true),
        ("batch", "Job") => {
            if let Some(spec) = obj.get("spec") {
                job_template(&mut v, spec, "spec");
            }
        }
        ("batch", "CronJob") => {
            match obj.pointer("/spec/schedule").and_then(Value::as_str) {
                None | Some("") => v.required("spec.schedule"),
                Some(s) if !valid_schedule(s) => {
                    v.invalid("spec.schedule", &Value::String(s.into()), "unparseable schedule")
                }
                Some(_) => {}
            }
            v.one_of(
                obj.get("spec").unwrap_or(&Value::Null),
                "concurrencyPolicy",
                "spec",
                &["Allow", "Forbid", "Replace"],
            );
            match obj.pointer("/spec/jobTemplate/spec") {
                Some(js) => job_template(&mut v, js, "spec.jobTemplate.spec"),
                None => v.required("spec.jobTemplate"),
            }
        }
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => rbac(&mut v, obj),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => binding(&mut v, obj),
        ("policy", "PodDisruptionBudget") => {
            let spec = obj.get("spec").cloned().unwrap_or_default();
            if spec.get("minAvailable").is_some() && spec.get("maxUnavailable").is_some() {
                v.invalid("spec", &spec, "minAvailable and maxUnavailable cannot be both set");
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable(&mut v, r, obj, old);
    }
    v.errors
}

fn immutable(v: &mut V, r: &Resource, obj: &Value, old: &Value) {
    let same = |ptr: &str| obj.pointer(ptr) == old.pointer(ptr);
    match (r.gvk.group, r.gvk.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job")
            if !same("/spec/selector") && old.pointer("/spec/selector").is_some() =>
        {
            v.invalid(
                "spec.selector",
                obj.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            );
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding")
            if !same("/roleRef") =>
        {
            v.invalid(
                "roleRef",
                obj.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            );
        }
        ("", "ConfigMap" | "Secret") => {
            if old.get("immutable") == Some(&Value::Bool(true)) {
                for f in ["data", "binaryData", "stringData", "immutable", "type"] {
                    if obj.get(f) != old.get(f) {
                        v.forbidden(f, "field is immutable when `immutable` is set");
                    }
                }
            } else if r.gvk.kind == "Secret" && !same("/type") {
                v.invalid("type", obj.get("type").unwrap_or(&Value::Null), "field is immutable");
            }
        }
        ("", "Pod") => pod_update(v, obj, old),
        _ => {}
    }
}

/// Pod updates may change only container images, `activeDeadlineSeconds`, added
/// tolerations, and removed scheduling gates.
fn pod_update(v: &mut V, obj: &Value, old: &Value) {
    let (Some(new_spec), Some(old_spec)) = (obj.get("spec"), old.get("spec")) else { return };
    let mut a = new_spec.clone();
    let mut b = old_spec.clone();
    for s in [&mut a, &mut b] {
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in s.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("image");
                }
            }
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
            o.remove("schedulingGates");
        }
    }
    if a != b {
        v.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)");
    }
    let old_tol =
        old_spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let new_tol =
        new_spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    if old_tol.iter().any(|t| !new_tol.contains(t)) {
        v.forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        );
    }
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;
