//! Server-side printing: `meta.k8s.io` `Table`s (what `kubectl get` asks for and prints) and
//! `PartialObjectMetadata`, chosen by the request's `Accept` header.
//!
//! Each kind's columns, their order, types and `priority` (1 = only with `-o wide`), and the
//! cell contents follow upstream's `pkg/printers/internalversion` printers: a Pod's status
//! column is computed from its init and app container states like the real one (`Init:0/2`,
//! `CrashLoopBackOff`, `Completed`, `Terminating`), ages are upstream's human durations
//! (`2m30s`, `5d3h`), and `<none>` marks empty cells. Kinds without a printer get upstream's
//! default columns (Name, Created At).
//!
//! Rows carry the object per `includeObject`: `Metadata` (the default: a
//! `PartialObjectMetadata`), `Object` (the whole object) or `None`.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::objects::ApiError;
use crate::registry::Resource;

/// What the client asked to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The objects as JSON.
    Json,
    /// A `Table` of this `meta.k8s.io` version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata` (or its list) of this `meta.k8s.io` version.
    Metadata(&'static str),
}

/// Chooses the representation from an `Accept` header: the first media range this server
/// produces wins; `406` when it produces none of them.
pub fn negotiate(accept: Option<&str>) -> Result<Representation, ApiError> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Representation::Json);
    };
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut as_, mut g, mut v) = ("", "", "");
        for p in parts {
            match p.split_once('=') {
                Some(("as", x)) => as_ = x,
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                _ => {}
            }
        }
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        let version = match v {
            "v1" => "v1",
            "v1beta1" => "v1beta1",
            _ => "",
        };
        match (as_, g) {
            ("", _) => return Ok(Representation::Json),
            ("Table", "meta.k8s.io") if !version.is_empty() => {
                return Ok(Representation::Table(version))
            }
            ("PartialObjectMetadata" | "PartialObjectMetadataList", "meta.k8s.io")
                if !version.is_empty() =>
            {
                return Ok(Representation::Metadata(version))
            }
            _ => {}
        }
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
    ))
}

/// `includeObject`: what a Table row carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter.
    pub fn parse(v: Option<&str>) -> Result<IncludeObject, ApiError> {
        match v {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(o) => Err(ApiError::bad_request(format!(
                "includeObject must be one of None, Metadata or Object, not {o:?}"
            ))),
        }
    }
}

/// The `PartialObjectMetadata` of `obj`.
pub fn partial_metadata(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `Table` of `items` (`list_meta`: the list's `metadata`, or `{}` for one object).
pub fn table(
    r: &Resource,
    items: &[Value],
    include: IncludeObject,
    version: &str,
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let (columns, print) = printer(r.gvk.kind);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({ "name": c.name, "type": c.ty, "format": c.format,
                    "description": c.description, "priority": c.priority })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": print(o, now) });
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(o, version),
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// One column.
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: i32,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, priority: i32) -> Column {
    Column { name, ty, format: "", priority, description: "" }
}

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated.",
};
const AGE: Column = Column {
    name: "Age",
    ty: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

type Print = fn(&Value, DateTime<Utc>) -> Vec<Value>;

fn printer(kind: &str) -> (&'static [Column], Print) {
    match kind {
        "Pod" => (POD, print_pod),
        "Deployment" => (DEPLOYMENT, print_deployment),
        "ReplicaSet" => (REPLICA_SET, print_replica_set),
        "StatefulSet" => (STATEFUL_SET, print_stateful_set),
        "DaemonSet" => (DAEMON_SET, print_daemon_set),
        "Job" => (JOB, print_job),
        "CronJob" => (CRON_JOB, print_cron_job),
        "Service" => (SERVICE, print_service),
        "Endpoints" => (ENDPOINTS, print_endpoints),
        "EndpointSlice" => (ENDPOINT_SLICE, print_endpoint_slice),
        "Node" => (NODE, print_node),
        "Namespace" => (NAMESPACE, print_namespace),
        "ConfigMap" => (CONFIG_MAP, print_config_map),
        "Secret" => (SECRET, print_secret),
        "ServiceAccount" => (SERVICE_ACCOUNT, print_service_account),
        "Event" => (EVENT, print_event),
        "Lease" => (LEASE, print_lease),
        "PodDisruptionBudget" => (PDB, print_pdb),
        "CertificateSigningRequest" => (CSR, print_csr),
        "RoleBinding" | "ClusterRoleBinding" => (BINDING, print_binding),
        "ControllerRevision" => (CONTROLLER_REVISION, print_controller_revision),
        _ => (DEFAULT, print_default),
    }
}

// ---- cells ----------------------------------------------------------------------------------

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn int(v: Option<&Value>) -> Value {
    json!(v.and_then(Value::as_i64).unwrap_or(0))
}

fn at<'a>(o: &'a Value, ptr: &str) -> Option<&'a Value> {
    o.pointer(ptr).filter(|v| !v.is_null())
}

fn str_at<'a>(o: &'a Value, ptr: &str) -> Option<&'a str> {
    at(o, ptr).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn none_if_empty(v: impl Into<String>) -> Value {
    let v = v.into();
    if v.is_empty() {
        s("<none>")
    } else {
        s(v)
    }
}

fn name(o: &Value) -> Value {
    s(str_at(o, "/metadata/name").unwrap_or_default())
}

fn parse_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t?).ok().map(|t| t.with_timezone(&Utc))
}

/// The age of a timestamp field as upstream prints it; `<unknown>` without one.
fn age_of(t: Option<&str>, now: DateTime<Utc>) -> String {
    match parse_time(t) {
        Some(t) => human_duration((now - t).num_seconds()),
        None => "<unknown>".into(),
    }
}

fn age(o: &Value, now: DateTime<Utc>) -> Value {
    s(age_of(str_at(o, "/metadata/creationTimestamp"), now))
}

/// Upstream's `duration.HumanDuration`, from seconds.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return match days {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn list<'a>(o: &'a Value, ptr: &str) -> &'a [Value] {
    at(o, ptr).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn join_strs<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Containers, Images and Selector of a workload (its `-o wide` columns).
fn workload_wide(o: &Value, selector: bool) -> Vec<Value> {
    let containers = list(o, "/spec/template/spec/containers");
    let mut cells = vec![
        s(join_strs(containers.iter().filter_map(|c| c.get("name")?.as_str()))),
        s(join_strs(containers.iter().filter_map(|c| c.get("image")?.as_str()))),
    ];
    if selector {
        let sel = at(o, "/spec/selector")
            .map(|sel| crate::strategy::selector_string(sel).unwrap_or_default())
            .unwrap_or_default();
        cells.push(none_if_empty(sel));
    }
    cells
}

/// `a=b,c=d`, `<none>` when empty.
fn format_labels(map: Option<&Value>) -> Value {
    let m = map.and_then(Value::as_object);
    none_if_empty(join_strs_owned(
        m.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())),
    ))
}

fn join_strs_owned(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

// ---- kinds ----------------------------------------------------------------------------------

const DEFAULT: &[Column] = &[
    NAME,
    Column {
        name: "Created At",
        ty: "date",
        format: "",
        priority: 0,
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    },
];

fn print_default(o: &Value, _: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), s(str_at(o, "/metadata/creationTimestamp").unwrap_or_default())]
}

const POD: &[Column] = &[
    NAME,
    col("Ready", "string", 0),
    col("Status", "string", 0),
    col("Restarts", "string", 0),
    AGE,
    col("IP", "string", 1),
    col("Node", "string", 1),
    col("Nominated Node", "string", 1),
    col("Readiness Gates", "string", 1),
];

fn terminated_reason(t: &Value, prefix: &str) -> String {
    match t.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        Some(r) => format!("{prefix}{r}"),
        None => match t.get("signal").and_then(Value::as_i64).filter(|&s| s != 0) {
            Some(sig) => format!("{prefix}Signal:{sig}"),
            None => format!(
                "{prefix}ExitCode:{}",
                t.get("exitCode").and_then(Value::as_i64).unwrap_or_default()
            ),
        },
    }
}

fn has_condition(o: &Value, kind: &str) -> bool {
    list(o, "/status/conditions")
        .iter()
        .any(|c| c.get("type").and_then(Value::as_str) == Some(kind) && c["status"] == "True")
}

fn print_pod(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec_init = list(o, "/spec/initContainers");
    let mut total = list(o, "/spec/containers").len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let note_restart = |c: &Value, last: &mut Option<DateTime<Utc>>| {
        if let Some(t) =
            parse_time(c.pointer("/lastState/terminated/finishedAt").and_then(Value::as_str))
        {
            if last.is_none_or(|l| l < t) {
                *last = Some(t);
            }
        }
    };
    let mut reason = str_at(o, "/status/reason")
        .or_else(|| str_at(o, "/status/phase"))
        .unwrap_or_default()
        .to_owned();
    if list(o, "/status/conditions").iter().any(|c| {
        c["type"] == "PodScheduled"
            && c.get("reason").and_then(Value::as_str) == Some("SchedulingGated")
    }) {
        reason = "SchedulingGated".into();
    }
    let init_statuses = list(o, "/status/initContainerStatuses");
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        let count = c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        restarts += count;
        note_restart(c, &mut last_restart);
        let sidecar = spec_init
            .iter()
            .find(|s| s.get("name") == c.get("name"))
            .is_some_and(|s| s.get("restartPolicy").and_then(Value::as_str) == Some("Always"));
        if sidecar {
            sidecar_restarts += count;
            total += 1;
            if c.get("ready") == Some(&Value::Bool(true)) {
                ready += 1;
            }
            if c.get("started") == Some(&Value::Bool(true)) {
                continue;
            }
        }
        let state = c.get("state").cloned().unwrap_or_default();
        if let Some(t) = state.get("terminated") {
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                continue;
            }
            reason = terminated_reason(t, "Init:");
        } else if let Some(w) = state
            .get("waiting")
            .and_then(|w| w.get("reason"))
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{w}");
        } else {
            reason = format!("Init:{i}/{}", spec_init.len());
        }
        initializing = true;
        break;
    }
    if !initializing || has_condition(o, "Initialized") {
        restarts = sidecar_restarts;
        let mut has_running = false;
        for c in list(o, "/status/containerStatuses").iter().rev() {
            restarts += c.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            note_restart(c, &mut last_restart);
            let state = c.get("state").cloned().unwrap_or_default();
            let waiting =
                state.get("waiting").and_then(|w| w.get("reason")).and_then(Value::as_str);
            let terminated = state.get("terminated");
            if let Some(w) = waiting.filter(|w| !w.is_empty()) {
                reason = w.to_owned();
            } else if let Some(t) = terminated {
                reason = terminated_reason(t, "");
            } else if c.get("ready") == Some(&Value::Bool(true)) && state.get("running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(o, "Ready") { "Running".into() } else { "NotReady".into() };
        }
    }
    if at(o, "/metadata/deletionTimestamp").is_some() {
        reason = if str_at(o, "/status/reason") == Some("NodeLost") {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => {
            format!("{restarts} ({} ago)", human_duration((now - t).num_seconds()))
        }
        _ => restarts.to_string(),
    };
    let gates = list(o, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        s("<none>")
    } else {
        let met = gates
            .iter()
            .filter(|g| {
                g.get("conditionType").and_then(Value::as_str).is_some_and(|t| has_condition(o, t))
            })
            .count();
        s(format!("{met}/{}", gates.len()))
    };
    vec![
        name(o),
        s(format!("{ready}/{total}")),
        s(reason),
        s(restarts),
        age(o, now),
        none_if_empty(str_at(o, "/status/podIP").unwrap_or_default()),
        none_if_empty(str_at(o, "/spec/nodeName").unwrap_or_default()),
        none_if_empty(str_at(o, "/status/nominatedNodeName").unwrap_or_default()),
        gates,
    ]
}

const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "string", 0),
    col("Up-to-date", "integer", 0),
    col("Available", "integer", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

fn desired(o: &Value) -> i64 {
    at(o, "/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
}

fn print_deployment(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ready = at(o, "/status/readyReplicas").and_then(Value::as_i64).unwrap_or(0);
    let mut cells = vec![
        name(o),
        s(format!("{ready}/{}", desired(o))),
        int(at(o, "/status/updatedReplicas")),
        int(at(o, "/status/availableReplicas")),
        age(o, now),
    ];
    cells.extend(workload_wide(o, true));
    cells
}

const REPLICA_SET: &[Column] = &[
    NAME,
    col("Desired", "integer", 0),
    col("Current", "integer", 0),
    col("Ready", "integer", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

fn print_replica_set(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut cells = vec![
        name(o),
        json!(desired(o)),
        int(at(o, "/status/replicas")),
        int(at(o, "/status/readyReplicas")),
        age(o, now),
    ];
    cells.extend(workload_wide(o, true));
    cells
}

const STATEFUL_SET: &[Column] = &[
    NAME,
    col("Ready", "string", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
];

fn print_stateful_set(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ready = at(o, "/status/readyReplicas").and_then(Value::as_i64).unwrap_or(0);
    let mut cells = vec![name(o), s(format!("{ready}/{}", desired(o))), age(o, now)];
    cells.extend(workload_wide(o, false));
    cells
}

const DAEMON_SET: &[Column] = &[
    NAME,
    col("Desired", "integer", 0),
    col("Current", "integer", 0),
    col("Ready", "integer", 0),
    col("Up-to-date", "integer", 0),
    col("Available", "integer", 0),
    col("Node Selector", "string", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

fn print_daemon_set(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut cells = vec![
        name(o),
        int(at(o, "/status/desiredNumberScheduled")),
        int(at(o, "/status/currentNumberScheduled")),
        int(at(o, "/status/numberReady")),
        int(at(o, "/status/updatedNumberScheduled")),
        int(at(o, "/status/numberAvailable")),
        format_labels(at(o, "/spec/template/spec/nodeSelector")),
        age(o, now),
    ];
    cells.extend(workload_wide(o, true));
    cells
}

const JOB: &[Column] = &[
    NAME,
    col("Status", "string", 0),
    col("Completions", "string", 0),
    col("Duration", "string", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

fn print_job(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let succeeded = at(o, "/status/succeeded").and_then(Value::as_i64).unwrap_or(0);
    let completions = match at(o, "/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = at(o, "/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if at(o, "/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let start = parse_time(str_at(o, "/status/startTime"));
    let end = parse_time(str_at(o, "/status/completionTime")).unwrap_or(now);
    let duration = start.map(|st| human_duration((end - st).num_seconds())).unwrap_or_default();
    let mut cells = vec![name(o), s(status), s(completions), s(duration), age(o, now)];
    cells.extend(workload_wide(o, true));
    cells
}

const CRON_JOB: &[Column] = &[
    NAME,
    col("Schedule", "string", 0),
    col("Timezone", "string", 0),
    col("Suspend", "boolean", 0),
    col("Active", "integer", 0),
    col("Last Schedule", "string", 0),
    AGE,
    col("Containers", "string", 1),
    col("Images", "string", 1),
    col("Selector", "string", 1),
];

fn print_cron_job(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let template = o.pointer("/spec/jobTemplate").cloned().unwrap_or_default();
    let containers = list(&template, "/spec/template/spec/containers");
    let last = str_at(o, "/status/lastScheduleTime")
        .map(|t| age_of(Some(t), now))
        .unwrap_or_else(|| "<none>".into());
    vec![
        name(o),
        s(str_at(o, "/spec/schedule").unwrap_or_default()),
        none_if_empty(str_at(o, "/spec/timeZone").unwrap_or_default()),
        json!(at(o, "/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
        json!(list(o, "/status/active").len()),
        s(last),
        age(o, now),
        s(join_strs(containers.iter().filter_map(|c| c.get("name")?.as_str()))),
        s(join_strs(containers.iter().filter_map(|c| c.get("image")?.as_str()))),
        at(&template, "/spec/selector")
            .map(|sel| none_if_empty(crate::strategy::selector_string(sel).unwrap_or_default()))
            .unwrap_or_else(|| s("<none>")),
    ]
}

const SERVICE: &[Column] = &[
    NAME,
    col("Type", "string", 0),
    col("Cluster-IP", "string", 0),
    col("External-IP", "string", 0),
    col("Port(s)", "string", 0),
    AGE,
    col("Selector", "string", 1),
];

fn print_service(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ty = str_at(o, "/spec/type").unwrap_or("ClusterIP");
    let external_ips: Vec<&str> =
        list(o, "/spec/externalIPs").iter().filter_map(Value::as_str).collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => none_if_empty(external_ips.join(",")),
        "LoadBalancer" => {
            let mut ips: Vec<String> = list(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i.get("ip").or_else(|| i.get("hostname"))?.as_str().map(str::to_owned)
                })
                .collect();
            ips.extend(external_ips.iter().map(|s| (*s).to_owned()));
            if ips.is_empty() {
                s("<pending>")
            } else {
                s(ips.join(","))
            }
        }
        "ExternalName" => s(str_at(o, "/spec/externalName").unwrap_or_default()),
        _ => s("<unknown>"),
    };
    let ports = join_strs_owned(list(o, "/spec/ports").iter().map(|p| {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        match p.get("nodePort").and_then(Value::as_i64).filter(|&n| n != 0) {
            Some(n) => format!("{port}:{n}/{proto}"),
            None => format!("{port}/{proto}"),
        }
    }));
    vec![
        name(o),
        s(ty),
        none_if_empty(str_at(o, "/spec/clusterIP").unwrap_or_default()),
        external,
        none_if_empty(ports),
        age(o, now),
        format_labels(at(o, "/spec/selector")),
    ]
}

const ENDPOINTS: &[Column] = &[NAME, col("Endpoints", "string", 0), AGE];

/// `ip:port,…` with at most three shown, as upstream's `formatEndpoints`.
fn format_endpoints(pairs: Vec<String>) -> Value {
    const MAX: usize = 3;
    if pairs.is_empty() {
        return s("<none>");
    }
    let more = pairs.len().saturating_sub(MAX);
    let mut out = pairs.into_iter().take(MAX).collect::<Vec<_>>().join(",");
    if more > 0 {
        out.push_str(&format!(" + {more} more..."));
    }
    s(out)
}

fn print_endpoints(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut pairs = Vec::new();
    for subset in list(o, "/subsets") {
        let ports = list(subset, "/ports");
        for a in list(subset, "/addresses") {
            let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
            if ports.is_empty() {
                pairs.push(ip.to_owned());
            }
            for p in ports {
                pairs.push(format!("{ip}:{}", p.get("port").and_then(Value::as_i64).unwrap_or(0)));
            }
        }
    }
    vec![name(o), format_endpoints(pairs), age(o, now)]
}

const ENDPOINT_SLICE: &[Column] = &[
    NAME,
    col("AddressType", "string", 0),
    col("Ports", "string", 0),
    col("Endpoints", "string", 0),
    AGE,
];

fn print_endpoint_slice(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ports = list(o, "/ports");
    let ports = if ports.is_empty() {
        s("<unset>")
    } else {
        s(join_strs_owned(
            ports.iter().map(|p| p.get("port").and_then(Value::as_i64).unwrap_or(0).to_string()),
        ))
    };
    let addresses: Vec<String> = list(o, "/endpoints")
        .iter()
        .flat_map(|e| list(e, "/addresses").iter().filter_map(|a| a.as_str().map(str::to_owned)))
        .collect();
    let endpoints = if addresses.is_empty() { s("<unset>") } else { format_endpoints(addresses) };
    vec![name(o), s(str_at(o, "/addressType").unwrap_or_default()), ports, endpoints, age(o, now)]
}

const NODE: &[Column] = &[
    NAME,
    col("Status", "string", 0),
    col("Roles", "string", 0),
    AGE,
    col("Version", "string", 0),
    col("Internal-IP", "string", 1),
    col("External-IP", "string", 1),
    col("OS-Image", "string", 1),
    col("Kernel-Version", "string", 1),
    col("Container-Runtime", "string", 1),
];

fn print_node(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ready = list(o, "/status/conditions").iter().find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if at(o, "/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(role.to_owned())
            } else if k == "kubernetes.io/role" {
                v.as_str().map(str::to_owned)
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    roles.dedup();
    let address = |kind: &str| {
        list(o, "/status/addresses")
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address")?.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let info =
        |f: &str| str_at(o, &format!("/status/nodeInfo/{f}")).unwrap_or("<unknown>").to_owned();
    vec![
        name(o),
        s(status),
        none_if_empty(roles.join(",")),
        age(o, now),
        s(str_at(o, "/status/nodeInfo/kubeletVersion").unwrap_or_default()),
        none_if_empty(address("InternalIP")),
        none_if_empty(address("ExternalIP")),
        s(info("osImage")),
        s(info("kernelVersion")),
        s(info("containerRuntimeVersion")),
    ]
}

const NAMESPACE: &[Column] = &[NAME, col("Status", "string", 0), AGE];

fn print_namespace(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), s(str_at(o, "/status/phase").unwrap_or_default()), age(o, now)]
}

const CONFIG_MAP: &[Column] = &[NAME, col("Data", "integer", 0), AGE];

fn count(o: &Value, ptr: &str) -> usize {
    at(o, ptr).and_then(Value::as_object).map_or(0, Map::len)
}

fn print_config_map(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), json!(count(o, "/data") + count(o, "/binaryData")), age(o, now)]
}

const SECRET: &[Column] = &[NAME, col("Type", "string", 0), col("Data", "integer", 0), AGE];

fn print_secret(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(o),
        s(str_at(o, "/type").unwrap_or("Opaque")),
        json!(count(o, "/data") + count(o, "/stringData")),
        age(o, now),
    ]
}

const SERVICE_ACCOUNT: &[Column] = &[NAME, col("Secrets", "integer", 0), AGE];

fn print_service_account(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), json!(list(o, "/secrets").len()), age(o, now)]
}

const EVENT: &[Column] = &[
    col("Last Seen", "string", 0),
    col("Type", "string", 0),
    col("Reason", "string", 0),
    col("Object", "string", 0),
    col("Subobject", "string", 1),
    col("Source", "string", 1),
    col("Message", "string", 0),
    col("First Seen", "string", 1),
    col("Count", "string", 1),
    NAME,
];

fn print_event(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // core/v1 and events.k8s.io/v1 spell the same event differently.
    let regarding =
        at(o, "/involvedObject").or_else(|| at(o, "/regarding")).cloned().unwrap_or_default();
    let object = format!(
        "{}/{}",
        regarding.get("kind").and_then(Value::as_str).unwrap_or_default().to_lowercase(),
        regarding.get("name").and_then(Value::as_str).unwrap_or_default()
    );
    let first = str_at(o, "/firstTimestamp").or_else(|| str_at(o, "/deprecatedFirstTimestamp"));
    let last = str_at(o, "/lastTimestamp")
        .or_else(|| str_at(o, "/deprecatedLastTimestamp"))
        .or_else(|| str_at(o, "/eventTime"))
        .or_else(|| str_at(o, "/series/lastObservedTime"))
        .or(first)
        .or_else(|| str_at(o, "/metadata/creationTimestamp"));
    let source = at(o, "/source")
        .or_else(|| at(o, "/deprecatedSource"))
        .and_then(|src| src.get("component")?.as_str().map(str::to_owned))
        .or_else(|| str_at(o, "/reportingController").map(str::to_owned))
        .unwrap_or_default();
    let count = at(o, "/count")
        .or_else(|| at(o, "/series/count"))
        .or_else(|| at(o, "/deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    vec![
        s(age_of(last, now)),
        s(str_at(o, "/type").unwrap_or_default()),
        s(str_at(o, "/reason").unwrap_or_default()),
        s(object),
        s(regarding.get("fieldPath").and_then(Value::as_str).unwrap_or_default()),
        s(source),
        s(str_at(o, "/message").or_else(|| str_at(o, "/note")).unwrap_or_default()),
        s(first.map(|f| age_of(Some(f), now)).unwrap_or_default()),
        s(count.to_string()),
        name(o),
    ]
}

const LEASE: &[Column] = &[NAME, col("Holder", "string", 0), AGE];

fn print_lease(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), s(str_at(o, "/spec/holderIdentity").unwrap_or_default()), age(o, now)]
}

const PDB: &[Column] = &[
    NAME,
    col("Min Available", "string", 0),
    col("Max Unavailable", "string", 0),
    col("Allowed Disruptions", "integer", 0),
    AGE,
];

fn int_or_string(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Number(n)) => s(n.to_string()),
        Some(Value::String(x)) => s(x.clone()),
        _ => s("N/A"),
    }
}

fn print_pdb(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(o),
        int_or_string(at(o, "/spec/minAvailable")),
        int_or_string(at(o, "/spec/maxUnavailable")),
        int(at(o, "/status/disruptionsAllowed")),
        age(o, now),
    ]
}

const CSR: &[Column] = &[
    NAME,
    AGE,
    col("SignerName", "string", 0),
    col("Requestor", "string", 0),
    col("RequestedDuration", "string", 0),
    col("Condition", "string", 0),
];

fn print_csr(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut conditions: Vec<&str> = list(o, "/status/conditions")
        .iter()
        .filter(|c| c.get("status").and_then(Value::as_str).is_none_or(|s| s == "True"))
        .filter_map(|c| c.get("type")?.as_str())
        .collect();
    if str_at(o, "/status/certificate").is_some() {
        conditions.push("Issued");
    }
    let condition = if conditions.is_empty() { "Pending".to_owned() } else { conditions.join(",") };
    let duration = at(o, "/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(human_duration)
        .unwrap_or_else(|| "<none>".into());
    vec![
        name(o),
        age(o, now),
        s(str_at(o, "/spec/signerName").unwrap_or_default()),
        s(str_at(o, "/spec/username").unwrap_or_default()),
        s(duration),
        s(condition),
    ]
}

const BINDING: &[Column] = &[
    NAME,
    col("Role", "string", 0),
    AGE,
    col("Users", "string", 1),
    col("Groups", "string", 1),
    col("ServiceAccounts", "string", 1),
];

fn print_binding(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let subjects = list(o, "/subjects");
    let of = |kind: &str| {
        join_strs_owned(
            subjects.iter().filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind)).map(
                |s| {
                    let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                    match s
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|_| kind == "ServiceAccount")
                    {
                        Some(ns) => format!("{ns}/{name}"),
                        None => name.to_owned(),
                    }
                },
            ),
        )
    };
    vec![
        name(o),
        s(format!(
            "{}/{}",
            str_at(o, "/roleRef/kind").unwrap_or_default(),
            str_at(o, "/roleRef/name").unwrap_or_default()
        )),
        age(o, now),
        s(of("User")),
        s(of("Group")),
        s(of("ServiceAccount")),
    ]
}

const CONTROLLER_REVISION: &[Column] =
    &[NAME, col("Controller", "string", 0), col("Revision", "integer", 0), AGE];

fn print_controller_revision(o: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let controller = list(o, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller") == Some(&Value::Bool(true)))
        .map(|r| {
            let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or_default();
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default().to_lowercase();
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            if group.is_empty() {
                format!("{kind}/{name}")
            } else {
                format!("{kind}.{group}/{name}")
            }
        })
        .unwrap_or_else(|| "<none>".into());
    vec![name(o), s(controller), int(at(o, "/revision")), age(o, now)]
}

#[cfg(test)]
#[path = "printers_tests.rs"]
mod tests;
