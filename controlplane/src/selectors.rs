//! Label and field selectors (`labelSelector`, `fieldSelector`), as apimachinery's
//! `pkg/labels` and `pkg/fields` parse them and the registry's per-kind field sets match them.
//!
//! - **Labels**: comma-separated requirements, all of which must hold: `key`, `!key`,
//!   `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key>1`,
//!   `key<1`. Keys are qualified names (`prefix/name`), values label values; `!=` and `notin`
//!   also match objects without the label, as upstream.
//! - **Fields**: comma-separated `field=value`, `field==value` or `field!=value`, with `\,`,
//!   `\=` and `\\` escapes in values. Which fields a kind supports is upstream's list (its
//!   field label conversion functions): `metadata.name` and `metadata.namespace` for every kind
//!   without its own list; pods, nodes, namespaces, secrets, services, events (both groups),
//!   replicasets, jobs and certificate signing requests have their own. An unsupported field
//!   is refused with upstream's message (`field label not supported: X`). Values are read from
//!   the stored object as upstream's `ToSelectableFields` renders them: missing strings are
//!   empty, booleans `true`/`false`, integers in decimal.
//!
//! Errors are [`Error`]s; the REST layer answers them with 400 BadRequest.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::registry::Resource;

/// A selector that cannot be parsed or is not supported for the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The label selector does not parse.
    #[error("unable to parse requirement: {reason}")]
    Label {
        /// What is wrong.
        reason: String,
    },
    /// A label selector's key or value is not valid.
    #[error("unable to parse requirement: Invalid value: {value:?}: {reason}")]
    LabelValue {
        /// The key or value.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The field selector does not parse.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    Field {
        /// The whole selector.
        selector: String,
        /// The term that does not parse.
        term: String,
    },
    /// A field selector's value has a bad escape.
    #[error("invalid field selector: {reason}")]
    FieldValue {
        /// What is wrong.
        reason: String,
    },
    /// The kind has its own field list and the field is not in it.
    #[error("field label not supported: {label}")]
    FieldNotSupported {
        /// The field.
        label: String,
    },
    /// The kind has only the default fields and the field is not one of them.
    #[error(
        "{label:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
    )]
    FieldNotKnown {
        /// The field.
        label: String,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Labels

/// A label requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: BTreeSet<String>,
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::Ident(s) => s,
            Token::Not => "!",
            Token::Eq => "=",
            Token::DoubleEq => "==",
            Token::NotEq => "!=",
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Gt => ">",
            Token::Lt => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | '(' | ')' | ',' | '<' | '>')
}

fn lex(s: &str) -> Vec<Token> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('=', Some('=')) => (Token::DoubleEq, 2),
            ('!', Some('=')) => (Token::NotEq, 2),
            ('=', _) => (Token::Eq, 1),
            ('!', _) => (Token::Not, 1),
            ('(', _) => (Token::Open, 1),
            (')', _) => (Token::Close, 1),
            (',', _) => (Token::Comma, 1),
            ('>', _) => (Token::Gt, 1),
            ('<', _) => (Token::Lt, 1),
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Ident(word),
                });
                continue;
            }
        };
        out.push(tok);
        i += len;
    }
    out.push(Token::End);
    out
}

fn label_err(found: &Token, expected: &str) -> Error {
    Error::Label { reason: format!("found '{}', expected: {expected}", found.text()) }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn requirement(&mut self) -> Result<Requirement> {
        let negated = *self.peek() == Token::Not;
        if negated {
            self.pos += 1;
        }
        let key = match self.next() {
            Token::Ident(k) => k,
            other => return Err(label_err(&other, "identifier")),
        };
        validate_key(&key)?;
        if negated {
            return Ok(Requirement { key, op: Op::DoesNotExist, values: BTreeSet::new() });
        }
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Ok(Requirement { key, op: Op::Exists, values: BTreeSet::new() });
        }
        let op = match self.next() {
            Token::Eq | Token::DoubleEq | Token::In => Op::In,
            Token::NotEq | Token::NotIn => Op::NotIn,
            Token::Gt => Op::Gt,
            Token::Lt => Op::Lt,
            other => return Err(label_err(&other, "[!= < = == > in notin]")),
        };
        let set_op = matches!(self.tokens.get(self.pos - 1), Some(Token::In | Token::NotIn));
        let values = if set_op { self.value_set()? } else { BTreeSet::from([self.exact_value()?]) };
        for v in &values {
            match op {
                Op::Gt | Op::Lt => {
                    if v.parse::<i64>().is_err() {
                        return Err(Error::LabelValue {
                            value: v.clone(),
                            reason: "for 'Gt', 'Lt' operators, the value must be an integer".into(),
                        });
                    }
                }
                _ => validate_value(v)?,
            }
        }
        Ok(Requirement { key, op, values })
    }

    fn exact_value(&mut self) -> Result<String> {
        match self.peek().clone() {
            Token::End | Token::Comma => Ok(String::new()),
            Token::Ident(v) => {
                self.pos += 1;
                Ok(v)
            }
            other => Err(label_err(&other, "identifier")),
        }
    }

    /// `(a,b)` after `in`/`notin`; empty members (`()`, `(a,)`, `(,a)`) are empty values.
    fn value_set(&mut self) -> Result<BTreeSet<String>> {
        match self.next() {
            Token::Open => {}
            other => return Err(label_err(&other, "'('")),
        }
        let mut values = BTreeSet::new();
        if *self.peek() == Token::Close {
            self.pos += 1;
            values.insert(String::new());
            return Ok(values);
        }
        loop {
            match self.next() {
                Token::Ident(v) => {
                    values.insert(v);
                    match self.peek() {
                        Token::Comma => {}
                        Token::Close => {
                            self.pos += 1;
                            return Ok(values);
                        }
                        other => return Err(label_err(other, "',' or ')'")),
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.peek() {
                        Token::Close => {
                            self.pos += 1;
                            values.insert(String::new());
                            return Ok(values);
                        }
                        Token::Comma => {
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                other => return Err(label_err(&other, "',', or identifier")),
            }
        }
    }
}

const NAME_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lowercase labels of alphanumerics and `-`, joined by dots.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::LabelValue { value: key.into(), reason: reason.into() });
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return bad("prefix part must be non-empty");
        }
        if !is_dns_subdomain(p) {
            return bad("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character");
        }
    }
    if name.is_empty() {
        return bad("name part must be non-empty");
    }
    if name.len() > 63 {
        return bad("name part must be no more than 63 characters");
    }
    if !is_name_part(name) {
        return bad(NAME_RULE);
    }
    Ok(())
}

fn validate_value(v: &str) -> Result<()> {
    if v.len() > 63 {
        return Err(Error::LabelValue {
            value: v.into(),
            reason: "must be no more than 63 characters".into(),
        });
    }
    if !v.is_empty() && !is_name_part(v) {
        return Err(Error::LabelValue {
            value: v.into(),
            reason: "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into(),
        });
    }
    Ok(())
}

impl LabelSelector {
    /// Parses a `labelSelector` (the empty string selects everything).
    pub fn parse(s: &str) -> Result<Self> {
        let mut p = Parser { tokens: lex(s), pos: 0 };
        let mut requirements = Vec::new();
        loop {
            match p.peek() {
                Token::End => break,
                Token::Ident(_) | Token::Not => {
                    requirements.push(p.requirement()?);
                    match p.next() {
                        Token::End => break,
                        Token::Comma => match p.peek() {
                            Token::Ident(_) | Token::Not => {}
                            other => return Err(label_err(other, "identifier after ','")),
                        },
                        other => return Err(label_err(&other, "',' or 'end of string'")),
                    }
                }
                other => return Err(label_err(other, "!, identifier, or 'end of string'")),
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with `labels` (its `metadata.labels`, `None` when it has none) is
    /// selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (r.op, value) {
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
                (Op::In, Some(v)) => r.values.contains(v),
                (Op::In, None) => false,
                (Op::NotIn, Some(v)) => !r.values.contains(v),
                (Op::NotIn, None) => true,
                (Op::Gt | Op::Lt, None) => false,
                (Op::Gt | Op::Lt, Some(v)) => {
                    let (Ok(have), Some(Ok(want))) =
                        (v.parse::<i64>(), r.values.iter().next().map(|w| w.parse::<i64>()))
                    else {
                        return false;
                    };
                    if r.op == Op::Gt {
                        have > want
                    } else {
                        have < want
                    }
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Fields

/// How a selectable field's value is read from the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// A string at a JSON pointer; missing is empty.
    Str(&'static str),
    /// A boolean at a JSON pointer; missing is `false`.
    Bool(&'static str),
    /// An integer at a JSON pointer; missing is `0`.
    Int(&'static str),
    /// The first of `status.podIPs` (or `status.podIP`); missing is empty.
    FirstPodIp,
}

impl Read {
    fn value(self, obj: &Value) -> String {
        match self {
            Read::Str(p) => obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned(),
            Read::Bool(p) => obj.pointer(p).and_then(Value::as_bool).unwrap_or(false).to_string(),
            Read::Int(p) => obj.pointer(p).and_then(Value::as_i64).unwrap_or(0).to_string(),
            Read::FirstPodIp => obj
                .pointer("/status/podIPs/0/ip")
                .or_else(|| obj.pointer("/status/podIP"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

const NAME: (&str, Read) = ("metadata.name", Read::Str("/metadata/name"));
const NAMESPACE: (&str, Read) = ("metadata.namespace", Read::Str("/metadata/namespace"));

const POD_FIELDS: &[(&str, Read)] = &[
    NAME,
    NAMESPACE,
    ("spec.nodeName", Read::Str("/spec/nodeName")),
    // Old v1 clients send spec.host; upstream converts it to spec.nodeName.
    ("spec.host", Read::Str("/spec/nodeName")),
    ("spec.restartPolicy", Read::Str("/spec/restartPolicy")),
    ("spec.schedulerName", Read::Str("/spec/schedulerName")),
    ("spec.serviceAccountName", Read::Str("/spec/serviceAccountName")),
    ("spec.hostNetwork", Read::Bool("/spec/hostNetwork")),
    ("status.phase", Read::Str("/status/phase")),
    ("status.podIP", Read::FirstPodIp),
    ("status.nominatedNodeName", Read::Str("/status/nominatedNodeName")),
];

const NODE_FIELDS: &[(&str, Read)] =
    &[NAME, ("spec.unschedulable", Read::Bool("/spec/unschedulable"))];

const NAMESPACE_FIELDS: &[(&str, Read)] = &[NAME, ("status.phase", Read::Str("/status/phase"))];

const SECRET_FIELDS: &[(&str, Read)] = &[NAME, NAMESPACE, ("type", Read::Str("/type"))];

const SERVICE_FIELDS: &[(&str, Read)] = &[
    NAME,
    NAMESPACE,
    ("spec.clusterIP", Read::Str("/spec/clusterIP")),
    ("spec.type", Read::Str("/spec/type")),
];

const CORE_EVENT_FIELDS: &[(&str, Read)] = &[
    NAME,
    NAMESPACE,
    ("involvedObject.kind", Read::Str("/involvedObject/kind")),
    ("involvedObject.namespace", Read::Str("/involvedObject/namespace")),
    ("involvedObject.name", Read::Str("/involvedObject/name")),
    ("involvedObject.uid", Read::Str("/involvedObject/uid")),
    ("involvedObject.apiVersion", Read::Str("/involvedObject/apiVersion")),
    ("involvedObject.resourceVersion", Read::Str("/involvedObject/resourceVersion")),
    ("involvedObject.fieldPath", Read::Str("/involvedObject/fieldPath")),
    ("reason", Read::Str("/reason")),
    ("reportingComponent", Read::Str("/reportingComponent")),
    ("source", Read::Str("/source/component")),
    ("type", Read::Str("/type")),
];

/// events.k8s.io/v1 names the core fields after its own (`regarding` for `involvedObject`).
const EVENTS_V1_FIELDS: &[(&str, Read)] = &[
    NAME,
    NAMESPACE,
    ("regarding.kind", Read::Str("/regarding/kind")),
    ("regarding.namespace", Read::Str("/regarding/namespace")),
    ("regarding.name", Read::Str("/regarding/name")),
    ("regarding.uid", Read::Str("/regarding/uid")),
    ("regarding.apiVersion", Read::Str("/regarding/apiVersion")),
    ("regarding.resourceVersion", Read::Str("/regarding/resourceVersion")),
    ("regarding.fieldPath", Read::Str("/regarding/fieldPath")),
    ("reason", Read::Str("/reason")),
    ("reportingController", Read::Str("/reportingController")),
    ("source", Read::Str("/deprecatedSource/component")),
    ("type", Read::Str("/type")),
];

const REPLICASET_FIELDS: &[(&str, Read)] =
    &[NAME, NAMESPACE, ("status.replicas", Read::Int("/status/replicas"))];

const JOB_FIELDS: &[(&str, Read)] =
    &[NAME, NAMESPACE, ("status.successful", Read::Int("/status/succeeded"))];

const CSR_FIELDS: &[(&str, Read)] = &[NAME, ("spec.signerName", Read::Str("/spec/signerName"))];

const DEFAULT_FIELDS: &[(&str, Read)] = &[NAME, NAMESPACE];

/// The kind's own field list, or `None` for the default one.
fn fields_of(r: &Resource) -> Option<&'static [(&'static str, Read)]> {
    Some(match (r.gvk.group, r.gvk.kind) {
        ("", "Pod") => POD_FIELDS,
        ("", "Node") => NODE_FIELDS,
        ("", "Namespace") => NAMESPACE_FIELDS,
        ("", "Secret") => SECRET_FIELDS,
        ("", "Service") => SERVICE_FIELDS,
        ("", "Event") => CORE_EVENT_FIELDS,
        ("events.k8s.io", "Event") => EVENTS_V1_FIELDS,
        ("apps", "ReplicaSet") => REPLICASET_FIELDS,
        ("batch", "Job") => JOB_FIELDS,
        ("certificates.k8s.io", "CertificateSigningRequest") => CSR_FIELDS,
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    label: String,
    read: Read,
    equal: bool,
    value: String,
}

/// A parsed field selector for one resource; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Splits at unescaped commas.
fn split_terms(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    terms
}

/// `(field, equal, raw value)` at the first unescaped operator (`!=`, `==`, `=`).
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], false, &term[i + 2..]))
            }
            b'=' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], true, &term[i + 2..])),
            b'=' => return Some((&term[..i], true, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(v: &str) -> Result<String> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(Error::FieldValue {
                        reason: format!("invalid escape sequence: \\{e}"),
                    })
                }
                None => {
                    return Err(Error::FieldValue { reason: "unterminated escape sequence".into() })
                }
            },
            ',' | '=' => {
                return Err(Error::FieldValue { reason: format!("unescaped character: {c}") })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses a `fieldSelector` for resource `r`, refusing fields `r` does not support.
    pub fn parse(s: &str, r: &Resource) -> Result<Self> {
        let own = fields_of(r);
        let table = own.unwrap_or(DEFAULT_FIELDS);
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            if term.trim().is_empty() {
                continue;
            }
            let (label, equal, raw) = split_term(&term)
                .ok_or_else(|| Error::Field { selector: s.to_owned(), term: term.clone() })?;
            let label = label.trim();
            let value = unescape(raw)?;
            let Some(&(_, read)) = table.iter().find(|(l, _)| *l == label) else {
                return Err(match own {
                    Some(_) => Error::FieldNotSupported { label: label.to_owned() },
                    None => Error::FieldNotKnown { label: label.to_owned() },
                });
            };
            requirements.push(FieldRequirement { label: label.to_owned(), read, equal, value });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The name a `metadata.name=X` requirement pins, if any: a watch of one object.
    pub fn exact_name(&self) -> Option<&str> {
        self.requirements.iter().find(|r| r.equal && r.read == NAME.1).map(|r| r.value.as_str())
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| (r.read.value(obj) == r.value) == r.equal)
    }
}

/// The label and field selectors of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// From the query parameters `labelSelector` and `fieldSelector` of a request for `r`.
    pub fn parse(label: Option<&str>, field: Option<&str>, r: &Resource) -> Result<Self> {
        Ok(Selectors {
            labels: LabelSelector::parse(label.unwrap_or_default())?,
            fields: FieldSelector::parse(field.unwrap_or_default(), r)?,
        })
    }

    /// Whether both select everything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `obj` is selected by both.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.labels.matches(labels) && self.fields.matches(obj)
    }
}

#[cfg(test)]
#[path = "selectors_tests.rs"]
mod tests;
