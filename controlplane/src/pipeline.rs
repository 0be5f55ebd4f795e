//! The write pipeline: every create, update and patch, of an object or of its `status` or
//! `scale`, runs the same steps as upstream's handlers, over untyped JSON:
//!
//! 1. decode the body (JSON; YAML for apply) and check `apiVersion` and `kind`;
//! 2. for a patch, compute the patched object from the stored one: JSON patch (RFC 6902, the
//!    `json-patch` crate), JSON merge patch (RFC 7386, same crate), strategic merge patch
//!    ([`crate::patch`]) or server-side apply ([`crate::managed`]);
//! 3. unknown fields per `fieldValidation` (Strict refuses, Warn drops them with a `Warning`,
//!    Ignore drops them; kubectl asks for Strict);
//! 4. [defaults](crate::defaults) (after the merge, for apply), then the kind's [`Strategy`] (status reset on the object, everything but status kept on
//!    `status`);
//! 5. field ownership (`managedFields`) for the request's field manager;
//! 6. [admission](crate::admission) (namespace lifecycle, default tolerations, Service IP and
//!    node-port allocation, whose keys commit in the write's own transaction);
//! 7. the store, through [`Objects::update_with`], which recomputes steps 2–6 against the
//!    newer object when another write wins the race (a patch never needs a retry from the
//!    client), unless the request named a resourceVersion.
//!
//! The field manager is `fieldManager`, else the client's user agent up to its first `/`
//! (`kubectl`), as upstream defaults it. Apply needs one, and only apply may `force`.

use axum::http::HeaderMap;
use serde_json::Value;

use crate::admission::Admission;
use crate::fields::{self, FieldValidation};
use crate::managed::{self, FieldManager, Manager};
use crate::objects::{ApiError, Cause, Objects, Result, Written};
use crate::registry::{Gvk, Resource};
use crate::schema::Schemas;
use crate::strategy::Strategy;

/// The longest field manager name upstream accepts.
const MAX_MANAGER_LEN: usize = 128;

/// The kinds of patch, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header (parameters ignored); `415` for others.
    pub fn from_content_type(ct: Option<&str>) -> Result<PatchType> {
        let media = ct.unwrap_or_default().split(';').next().unwrap_or_default().trim();
        match media.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Ok(PatchType::Apply),
            _ => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({media:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                ),
            )),
        }
    }
}

/// The request's write options, from its query and headers.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The field manager.
    pub manager: String,
    /// `fieldValidation` (default Warn, as upstream's).
    pub validation: FieldValidation,
    /// `force` (apply only).
    pub force: bool,
}

impl WriteOptions {
    /// Reads `dryRun`, `fieldManager`, `fieldValidation` and `force`; `patch` is the request's
    /// patch type, if it is a patch.
    pub fn parse(
        query: &std::collections::HashMap<String, String>,
        headers: &HeaderMap,
        patch: Option<PatchType>,
    ) -> Result<WriteOptions> {
        let dry_run = match query.get("dryRun").map(String::as_str) {
            None | Some("") => false,
            Some("All") => true,
            Some(o) => {
                return Err(ApiError::bad_request(format!("unsupported dryRun value {o:?} (All)")))
            }
        };
        let validation = match query.get("fieldValidation").map(String::as_str) {
            None | Some("") => FieldValidation::Warn,
            Some(v) => FieldValidation::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "fieldValidation must be one of Ignore, Warn or Strict, not {v:?}"
                ))
            })?,
        };
        let is_apply = patch == Some(PatchType::Apply);
        let force = match query.get("force").map(String::as_str) {
            None | Some("") | Some("false") => false,
            Some("true") if is_apply => true,
            Some("true") => {
                return Err(ApiError::bad_request("force may only be set for apply patches"))
            }
            Some(o) => return Err(ApiError::bad_request(format!("invalid force value {o:?}"))),
        };
        let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
            Some(m) => m.clone(),
            None if is_apply => {
                return Err(ApiError::bad_request(
                    "PATCH requests with the apply content type must include a fieldManager query parameter",
                ))
            }
            None => headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.split('/').next().unwrap_or_default().chars().take(MAX_MANAGER_LEN).collect())
                .unwrap_or_default(),
        };
        if manager.len() > MAX_MANAGER_LEN || manager.chars().any(|c| c.is_control()) {
            return Err(ApiError::bad_request(format!(
                "fieldManager must be at most {MAX_MANAGER_LEN} printable characters"
            )));
        }
        Ok(WriteOptions { dry_run, manager, validation, force })
    }
}

/// A write's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The stored (or, on a dry run, the would-be) object.
    pub object: Value,
    /// Whether it was created.
    pub created: bool,
    /// `Warning` headers to send (unknown fields under Warn).
    pub warnings: Vec<String>,
}

/// One write request against one resource.
pub struct Writer<'a> {
    /// The objects.
    pub objects: &'a Objects,
    /// The schema source.
    pub schemas: &'a Schemas,
    /// The admission chain.
    pub admission: &'a Admission,
    /// The resource.
    pub resource: &'static Resource,
    /// The namespace, for a namespaced resource.
    pub namespace: Option<&'a str>,
    /// The options.
    pub options: WriteOptions,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("resource", &self.resource.plural).finish_non_exhaustive()
    }
}

/// Which part of the object a write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object itself.
    Object,
    /// `status`.
    Status,
    /// `scale`.
    Scale,
}

impl Part {
    /// The part a path's subresource names; `404` for subresources that are not written here.
    pub fn of(resource: &Resource, subresource: Option<&str>) -> Result<Part> {
        let not_found =
            || ApiError::new(404, "NotFound", "the server could not find the requested resource");
        match subresource {
            None => Ok(Part::Object),
            Some(s) if !resource.subresources.iter().any(|r| r.name == s) => Err(not_found()),
            Some("status") => Ok(Part::Status),
            Some("scale") => Ok(Part::Scale),
            Some(other) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{}/{other} is not served by this server yet", resource.plural),
            )),
        }
    }

    fn subresource(self) -> &'static str {
        match self {
            Part::Object => "",
            Part::Status => "status",
            Part::Scale => "scale",
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Checks a body's `apiVersion` and `kind` against `gvk`, filling them in when missing.
pub fn check_type(obj: &mut Value, gvk: &Gvk) -> Result<()> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let api_version = gvk.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", gvk.kind)] {
        match o.get(field).and_then(Value::as_str) {
            None | Some("") => {
                o.insert(field.into(), Value::String(want.to_owned()));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} {got:?} of the body does not match the path's {want:?}"
                )))
            }
        }
    }
    Ok(())
}

/// Decodes an object body by its `Content-Type`: JSON (the default), YAML, or Kubernetes
/// protobuf (kubectl's generators); `415` for anything else.
pub fn decode_body(headers: &HeaderMap, body: &[u8], schemas: &Schemas) -> Result<Value> {
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media.as_str() {
        "" | "application/json" | "*/*" => json_body(body),
        "application/yaml" => serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}"))),
        crate::proto::CONTENT_TYPE => crate::proto::decode(body, schemas)
            .map_err(|e| ApiError::bad_request(format!("the protobuf request body: {e}"))),
        _ => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({media:?}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
        )),
    }
}

/// Decodes a JSON body.
pub fn json_body(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

impl Writer<'_> {
    fn schema(&self) -> Option<&Value> {
        self.schemas.for_kind(&self.resource.gvk)
    }

    fn strategy(&self) -> Strategy {
        Strategy::of(self.resource)
    }

    fn manager<'m>(&'m self, part: Part, time: &'m str, api_version: &'m str) -> Manager<'m> {
        Manager { name: &self.options.manager, api_version, subresource: part.subresource(), time }
    }

    /// Unknown fields of `obj` per the request's `fieldValidation`.
    fn validate_fields(&self, obj: &mut Value, warnings: &mut Vec<String>) -> Result<()> {
        let Some(schema) = self.schema() else { return Ok(()) };
        let unknown = fields::unknown_fields(self.schemas, schema, obj);
        if unknown.is_empty() {
            return Ok(());
        }
        match self.options.validation {
            FieldValidation::Strict => {
                let mut e = ApiError::bad_request(fields::strict_error(&unknown));
                e.causes = unknown
                    .iter()
                    .map(|f| Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!("unknown field {f:?}"),
                        field: f.clone(),
                    })
                    .collect();
                Err(e)
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|f| format!("unknown field {f:?}")));
                fields::prune(obj, &unknown);
                Ok(())
            }
            FieldValidation::Ignore => {
                fields::prune(obj, &unknown);
                Ok(())
            }
        }
    }

    /// What follows the creation of `object`: a new Namespace gets its `default` service
    /// account.
    async fn created(&self, object: &Value) -> Result<()> {
        let r = self.resource;
        if self.options.dry_run || r.gvk.kind != "Namespace" || !r.gvk.group.is_empty() {
            return Ok(());
        }
        match object.pointer("/metadata/name").and_then(Value::as_str) {
            Some(ns) => crate::serviceaccount::ensure_default(self, ns).await,
            None => Ok(()),
        }
    }

    /// `POST` of a new object.
    pub async fn create(&self, mut obj: Value) -> Result<Outcome> {
        check_type(&mut obj, &self.resource.gvk)?;
        let mut warnings = Vec::new();
        self.validate_fields(&mut obj, &mut warnings)?;
        crate::defaults::apply(self.resource, &mut obj);
        self.strategy().prepare_for_create(&mut obj);
        self.validate(Part::Object, None, &obj)?;
        let (time, api_version) = (now(), self.resource.gvk.api_version());
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        FieldManager::new(self.schemas).update(
            self.schema(),
            None,
            &mut obj,
            &self.manager(Part::Object, &time, &api_version),
        );
        self.admission.check_namespace(self.objects, self.resource, self.namespace).await?;
        let account =
            crate::serviceaccount::lookup(self.objects, self.resource, self.namespace, &obj)
                .await?;
        let reads = self.admission.reads(self.resource);
        let object = self
            .objects
            .create_with(
                self.resource,
                self.namespace,
                self.options.dry_run,
                &reads,
                |read, effects| {
                    let mut next = obj.clone();
                    if let (Some(ns), Some(m)) =
                        (self.namespace, next.get_mut("metadata").and_then(Value::as_object_mut))
                    {
                        m.insert("namespace".into(), Value::String(ns.to_owned()));
                    }
                    if let Some(account) = &account {
                        crate::serviceaccount::admit(&mut next, account);
                    }
                    self.admission.admit(self.resource, None, &mut next, read, effects)?;
                    Ok(next)
                },
            )
            .await?;
        self.created(&object).await?;
        Ok(Outcome { object, created: true, warnings })
    }

    /// `PUT` of an object or of its status.
    pub async fn update(&self, name: &str, part: Part, mut obj: Value) -> Result<Outcome> {
        if part == Part::Scale {
            return self.update_scale(name, obj).await;
        }
        check_type(&mut obj, &self.resource.gvk)?;
        let mut warnings = Vec::new();
        self.validate_fields(&mut obj, &mut warnings)?;
        let (time, api_version) = (now(), self.resource.gvk.api_version());
        let who = self.manager(part, &time, &api_version);
        let fm = FieldManager::new(self.schemas);
        let reads = self.admission.reads(self.resource);
        let written = self
            .objects
            .update_with(
                self.resource,
                self.namespace,
                name,
                self.options.dry_run,
                &reads,
                |current, read, effects| {
                    let Some(current) = current else {
                        return Err(ApiError::not_found(self.resource, name));
                    };
                    let mut next = obj.clone();
                    crate::defaults::apply(self.resource, &mut next);
                    self.reset(part, current, &mut next);
                    self.validate(part, Some(current), &next)?;
                    fm.update(self.schema(), Some(current), &mut next, &who);
                    self.admission.admit(self.resource, Some(current), &mut next, read, effects)?;
                    Ok(next)
                },
            )
            .await?;
        Ok(outcome(written, warnings))
    }

    /// Upstream's validation of a write to the object itself (status and scale writes change
    /// only what their own checks cover).
    fn validate(&self, part: Part, old: Option<&Value>, obj: &Value) -> Result<()> {
        if part != Part::Object {
            return Ok(());
        }
        let errors = crate::validation::validate(self.resource, obj, old);
        if errors.is_empty() {
            return Ok(());
        }
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or_default()
        };
        let name = if meta("name").is_empty() { meta("generateName") } else { meta("name") };
        Err(crate::validation::to_api_error(self.resource, name, errors))
    }

    fn reset(&self, part: Part, current: &Value, next: &mut Value) {
        match part {
            Part::Status => self.strategy().prepare_for_status_update(current, next),
            Part::Object | Part::Scale => self.strategy().prepare_for_update(current, next),
        }
    }

    /// `PATCH` of an object or of its status or scale.
    pub async fn patch(
        &self,
        name: &str,
        part: Part,
        kind: PatchType,
        body: &[u8],
    ) -> Result<Outcome> {
        if part == Part::Scale {
            return self.patch_scale(name, kind, body).await;
        }
        let patch = decode_patch(kind, body)?;
        let (time, api_version) = (now(), self.resource.gvk.api_version());
        let who = self.manager(part, &time, &api_version);
        let fm = FieldManager::new(self.schemas);
        let mut warnings = Vec::new();
        if kind == PatchType::Apply {
            let mut config = patch;
            check_type(&mut config, &self.resource.gvk)?;
            self.validate_fields(&mut config, &mut warnings)?;
            self.restrict_config(part, &mut config);
            // An apply that creates must respect the namespace's lifecycle, and a pod it
            // creates gets its service account.
            let mut account = None;
            if let Err(e) = self.objects.get(self.resource, self.namespace, name).await {
                if e.code != 404 {
                    return Err(e);
                }
                self.admission.check_namespace(self.objects, self.resource, self.namespace).await?;
                account = crate::serviceaccount::lookup(
                    self.objects,
                    self.resource,
                    self.namespace,
                    &config,
                )
                .await?;
            }
            let reads = self.admission.reads(self.resource);
            let written = self
                .objects
                .update_with(
                    self.resource,
                    self.namespace,
                    name,
                    self.options.dry_run,
                    &reads,
                    |current, read, effects| {
                        if current.is_none() && part != Part::Object {
                            return Err(ApiError::not_found(self.resource, name));
                        }
                        let mut next = fm
                            .apply(self.schema(), current, &config, &who, self.options.force)
                            .map_err(|e| self.apply_error(name, e))?;
                        crate::defaults::apply(self.resource, &mut next);
                        match current {
                            Some(c) => self.reset(part, c, &mut next),
                            None => {
                                self.strategy().prepare_for_create(&mut next);
                                if let (Some(ns), Some(m)) = (
                                    self.namespace,
                                    next.get_mut("metadata").and_then(Value::as_object_mut),
                                ) {
                                    m.insert("namespace".into(), Value::String(ns.to_owned()));
                                }
                            }
                        }
                        self.validate(part, current, &next)?;
                        if let (None, Some(account)) = (current, &account) {
                            crate::serviceaccount::admit(&mut next, account);
                        }
                        self.admission.admit(self.resource, current, &mut next, read, effects)?;
                        Ok(next)
                    },
                )
                .await?;
            if written.created {
                self.created(&written.object).await?;
            }
            return Ok(outcome(written, warnings));
        }
        let reads = self.admission.reads(self.resource);
        let written = self
            .objects
            .update_with(
                self.resource,
                self.namespace,
                name,
                self.options.dry_run,
                &reads,
                |current, read, effects| {
                    let Some(current) = current else {
                        return Err(ApiError::not_found(self.resource, name));
                    };
                    let mut next = self.patch_value(kind, current, &patch, self.schema(), name)?;
                    check_type(&mut next, &self.resource.gvk)?;
                    warnings.clear();
                    self.validate_fields(&mut next, &mut warnings)?;
                    crate::defaults::apply(self.resource, &mut next);
                    self.reset(part, current, &mut next);
                    self.validate(part, Some(current), &next)?;
                    fm.update(self.schema(), Some(current), &mut next, &who);
                    self.admission.admit(self.resource, Some(current), &mut next, read, effects)?;
                    Ok(next)
                },
            )
            .await?;
        Ok(outcome(written, warnings))
    }

    /// An apply to `status` owns and changes only the status; an apply to the object, for a
    /// kind with a status subresource, everything but the status.
    fn restrict_config(&self, part: Part, config: &mut Value) {
        let Some(o) = config.as_object_mut() else { return };
        match part {
            Part::Status => {
                o.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                });
                if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
                }
            }
            Part::Object if self.strategy().has_status() => {
                o.remove("status");
            }
            Part::Object | Part::Scale => {}
        }
    }

    fn apply_error(&self, name: &str, e: managed::Error) -> ApiError {
        match e {
            managed::Error::Conflicts(list) => {
                let mut err = ApiError::new(
                    409,
                    "Conflict",
                    managed::Error::Conflicts(list.clone()).to_string(),
                )
                .about(self.resource, name);
                err.causes = list
                    .into_iter()
                    .map(|c| Cause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                        field: c.field,
                    })
                    .collect();
                err
            }
            managed::Error::Merge(
                crate::apply::Error::MissingKeys { ref path, .. }
                | crate::apply::Error::Duplicate { ref path, .. },
            ) => ApiError::invalid(self.resource, name, path, &e.to_string()),
            other => ApiError::invalid(self.resource, name, "metadata", &other.to_string()),
        }
    }

    /// `current` after a JSON, merge or strategic merge patch (`schema`: the kind's).
    fn patch_value(
        &self,
        kind: PatchType,
        current: &Value,
        patch: &Value,
        schema: Option<&Value>,
        name: &str,
    ) -> Result<Value> {
        let invalid = |why: String| ApiError::invalid(self.resource, name, "patch", &why);
        let mut next = current.clone();
        match kind {
            PatchType::Json => {
                let ops: json_patch::Patch =
                    serde_json::from_value(patch.clone()).map_err(|e| {
                        ApiError::bad_request(format!(
                            "the JSON patch is not a list of operations: {e}"
                        ))
                    })?;
                json_patch::patch(&mut next, &ops)
                    .map_err(|e| invalid(format!("the JSON patch could not be applied: {e}")))?;
            }
            PatchType::Merge => json_patch::merge(&mut next, patch),
            PatchType::Strategic => {
                next = crate::patch::strategic_merge(self.schemas, schema, next, patch.clone())
                    .map_err(|e| {
                        invalid(format!("the strategic merge patch could not be applied: {e}"))
                    })?;
            }
            PatchType::Apply => {
                return Err(ApiError::internal("an apply patch reached the patch path"))
            }
        }
        if !next.is_object() {
            return Err(invalid("the patched object is not a JSON object".into()));
        }
        Ok(next)
    }

    async fn update_scale(&self, name: &str, mut scale: Value) -> Result<Outcome> {
        check_type(&mut scale, &Gvk { group: "autoscaling", version: "v1", kind: "Scale" })?;
        if scale.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        self.write_scale(name, |_| Ok(scale.clone())).await
    }

    async fn patch_scale(&self, name: &str, kind: PatchType, body: &[u8]) -> Result<Outcome> {
        if kind == PatchType::Apply {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "server-side apply to the scale subresource is not supported by this server; patch or update it",
            ));
        }
        let patch = decode_patch(kind, body)?;
        let scale_gvk = Gvk { group: "autoscaling", version: "v1", kind: "Scale" };
        let scale_schema = self.schemas.for_kind(&scale_gvk);
        self.write_scale(name, |scale| self.patch_value(kind, scale, &patch, scale_schema, name))
            .await
    }

    async fn write_scale<F>(&self, name: &str, mut change: F) -> Result<Outcome>
    where
        F: FnMut(&Value) -> Result<Value> + Send,
    {
        let strategy = self.strategy();
        let (time, api_version) = (now(), self.resource.gvk.api_version());
        let who = self.manager(Part::Scale, &time, &api_version);
        let fm = FieldManager::new(self.schemas);
        let written = self
            .objects
            .update_with(
                self.resource,
                self.namespace,
                name,
                self.options.dry_run,
                &[],
                |current, _, _| {
                    let Some(current) = current else {
                        return Err(ApiError::not_found(self.resource, name));
                    };
                    let scale = change(&strategy.scale_of(current)?)?;
                    let mut next = strategy.apply_scale(current, &scale)?;
                    strategy.prepare_for_update(current, &mut next);
                    fm.update(self.schema(), Some(current), &mut next, &who);
                    Ok(next)
                },
            )
            .await?;
        let object = strategy.scale_of(&written.object)?;
        Ok(Outcome { object, created: false, warnings: Vec::new() })
    }
}

fn outcome(written: Written, warnings: Vec<String>) -> Outcome {
    Outcome { object: written.object, created: written.created, warnings }
}

/// Decodes a patch body: JSON for the JSON, merge and strategic kinds (a JSON patch is a
/// list; the others objects), YAML (or JSON) for apply.
fn decode_patch(kind: PatchType, body: &[u8]) -> Result<Value> {
    let v: Value = match kind {
        PatchType::Apply => serde_yaml_ng::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the apply configuration is not valid YAML: {e}"))
        })?,
        _ => json_body(body)?,
    };
    match (kind, &v) {
        (PatchType::Json, Value::Array(_)) => Ok(v),
        (PatchType::Json, _) => {
            Err(ApiError::bad_request("a JSON patch must be a list of operations"))
        }
        (_, Value::Object(_)) => Ok(v),
        _ => Err(ApiError::bad_request("the patch must be a JSON object")),
    }
}
