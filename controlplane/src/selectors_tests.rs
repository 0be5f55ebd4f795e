//! Selector parsing and matching, with apimachinery's own examples.

use serde_json::{json, Value};

use super::*;
use crate::registry;

fn labels(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn selects(selector: &str, l: Value) -> bool {
    match LabelSelector::parse(selector) {
        Ok(s) => s.matches(Some(&labels(l))),
        Err(e) => panic!("{selector:?} does not parse: {e}"),
    }
}

fn resource(group: &str, plural: &str) -> &'static Resource {
    registry::find(group, "v1", plural).expect("served resource")
}

#[test]
fn label_selectors_that_upstream_accepts_parse() {
    for s in [
        "",
        "x=a,y=b,z=c",
        "x!=a,y=b",
        "x=",
        "x= ",
        "x=,z= ",
        "x= ,z= ",
        "!x",
        "x>1",
        "x>1,z<5",
        "x in (a,b)",
        "x notin (a)",
        "x in ()",
        "x in (a,)",
        "x in (,a)",
        "x==a",
        "  x  ",
        "example.com/app in (web, db),tier!=cache",
        "app.kubernetes.io/name=nginx",
    ] {
        if let Err(e) = LabelSelector::parse(s) {
            panic!("{s:?} should parse: {e}");
        }
    }
}

#[test]
fn label_selectors_that_upstream_refuses_fail_with_a_reason() {
    for (s, why) in [
        ("x=a||y=b", "a valid label must be"),
        ("x==a==b", "expected: ',' or 'end of string'"),
        ("!x=a", "expected: ',' or 'end of string'"),
        ("x<a", "must be an integer"),
        ("x=a,", "identifier after ','"),
        ("x in (", "expected: ',', or identifier"),
        ("x in a", "expected: '('"),
        ("x in (a b)", "expected: ',' or ')'"),
        (",x", "expected: !, identifier"),
        ("x=a b", "expected: ',' or 'end of string'"),
        ("-x=a", "name part must consist of"),
        ("Example.com/x=a", "prefix part"),
        ("x=-a", "a valid label must be"),
        (&format!("{}=a", "k".repeat(64)), "no more than 63 characters"),
    ] {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => assert!(e.to_string().contains(why), "{s:?}: {e}"),
        }
    }
}

#[test]
fn label_selectors_match_as_upstream() {
    let l = json!({"x": "a", "y": "b", "n": "3"});
    assert!(selects("", json!({})));
    assert!(selects("x=a", l.clone()));
    assert!(selects("x==a,y=b", l.clone()));
    assert!(!selects("x=b", l.clone()));
    assert!(!selects("x=a,y=c", l.clone()));
    // != and notin also select objects without the label.
    assert!(selects("x!=b", l.clone()));
    assert!(selects("z!=b", l.clone()));
    assert!(!selects("x!=a", l.clone()));
    assert!(selects("z notin (a)", l.clone()));
    assert!(!selects("x notin (a,b)", l.clone()));
    assert!(selects("x in (a,b)", l.clone()));
    assert!(!selects("z in (a,b)", l.clone()));
    assert!(selects("x", l.clone()));
    assert!(!selects("z", l.clone()));
    assert!(selects("!z", l.clone()));
    assert!(!selects("!x", l.clone()));
    assert!(selects("n>2,n<4", l.clone()));
    assert!(!selects("n>3", l.clone()));
    // A non-numeric label never satisfies > or <.
    assert!(!selects("x>1", l.clone()));
    // `x=` selects an empty value, not a missing label.
    assert!(selects("e=", json!({"e": ""})));
    assert!(!selects("e=", json!({})));
    // No labels at all.
    let none = LabelSelector::parse("x!=a,!y").expect("parse");
    assert!(none.matches(None));
    assert!(!LabelSelector::parse("x").expect("parse").matches(None));
}

#[test]
fn field_selectors_parse_escapes_and_refuse_unsupported_fields() {
    let pods = resource("", "pods");
    let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", pods).expect("parse");
    let pod = json!({"metadata": {"name": "p", "namespace": "d"},
        "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    assert!(s.matches(&pod));
    assert!(!s.matches(&json!({"spec": {"nodeName": "n2"}})));
    // Escaped commas and equals in values.
    let cms = resource("", "configmaps");
    let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\", cms).expect("parse");
    assert!(s.matches(&json!({"metadata": {"name": r"a,b=c\"}})));
    assert_eq!(s.exact_name(), Some(r"a,b=c\"));
    // Upstream's messages.
    let e = FieldSelector::parse("spec.foo=x", pods).expect_err("unsupported");
    assert_eq!(e.to_string(), "field label not supported: spec.foo");
    let e = FieldSelector::parse("data.a=x", cms).expect_err("unknown");
    assert_eq!(
        e.to_string(),
        r#""data.a" is not a known field selector: only "metadata.name", "metadata.namespace""#
    );
    let e = FieldSelector::parse("metadata.name", cms).expect_err("no operator");
    assert_eq!(
        e.to_string(),
        "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
    );
    assert!(FieldSelector::parse(r"metadata.name=a\x", cms).is_err());
    assert!(FieldSelector::parse("metadata.name=a=b", cms).is_err());
    // Nodes have their own list, without metadata.namespace.
    let nodes = resource("", "nodes");
    let e = FieldSelector::parse("metadata.namespace=x", nodes).expect_err("node namespace");
    assert_eq!(e.to_string(), "field label not supported: metadata.namespace");
    assert!(FieldSelector::parse("", nodes).expect("empty").is_empty());
}

#[test]
fn field_values_render_as_upstream_selectable_fields() {
    let pods = resource("", "pods");
    let pod = json!({"metadata": {"name": "p", "namespace": "d"},
        "spec": {"nodeName": "n1", "hostNetwork": true, "restartPolicy": "Always",
                 "schedulerName": "default-scheduler", "serviceAccountName": "sa"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                   "nominatedNodeName": "n2"}});
    for (sel, want) in [
        ("spec.hostNetwork=true", true),
        ("spec.hostNetwork=false", false),
        ("status.podIP=10.0.0.5", true),
        ("spec.host=n1", true),
        ("spec.restartPolicy=Always,spec.schedulerName=default-scheduler", true),
        ("spec.serviceAccountName=sa,status.nominatedNodeName=n2", true),
        ("metadata.namespace=d,metadata.name=p", true),
        ("metadata.namespace!=d", false),
    ] {
        let s = FieldSelector::parse(sel, pods).expect("parse");
        assert_eq!(s.matches(&pod), want, "{sel}");
    }
    // Missing booleans are false, missing strings empty.
    let bare = json!({"metadata": {"name": "q"}});
    assert!(FieldSelector::parse("spec.hostNetwork=false,spec.nodeName=", pods)
        .expect("parse")
        .matches(&bare));
    let nodes = resource("", "nodes");
    assert!(FieldSelector::parse("spec.unschedulable=false", nodes)
        .expect("parse")
        .matches(&json!({"spec": {}})));
    let secrets = resource("", "secrets");
    assert!(FieldSelector::parse("type=kubernetes.io/tls", secrets)
        .expect("parse")
        .matches(&json!({"type": "kubernetes.io/tls"})));
    let events = resource("", "events");
    let ev = json!({"involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started",
        "source": {"component": "kubelet"}, "type": "Normal"});
    assert!(FieldSelector::parse(
        "involvedObject.kind=Pod,involvedObject.name=p,reason=Started,source=kubelet,type=Normal",
        events
    )
    .expect("parse")
    .matches(&ev));
    let events_v1 = resource("events.k8s.io", "events");
    let ev = json!({"regarding": {"kind": "Pod"}, "reportingController": "kubelet"});
    assert!(FieldSelector::parse("regarding.kind=Pod,reportingController=kubelet", events_v1)
        .expect("parse")
        .matches(&ev));
    let rs = resource("apps", "replicasets");
    assert!(FieldSelector::parse("status.replicas=0", rs).expect("parse").matches(&json!({})));
    let ns = resource("", "namespaces");
    assert!(FieldSelector::parse("status.phase=Active", ns)
        .expect("parse")
        .matches(&json!({"status": {"phase": "Active"}})));
}

#[test]
fn selectors_combine_labels_and_fields() {
    let pods = resource("", "pods");
    let s = Selectors::parse(Some("app=web"), Some("spec.nodeName=n1"), pods).expect("parse");
    let pod = |app: &str, node: &str| json!({"metadata": {"name": "p", "labels": {"app": app}}, "spec": {"nodeName": node}});
    assert!(s.matches(&pod("web", "n1")));
    assert!(!s.matches(&pod("web", "n2")));
    assert!(!s.matches(&pod("db", "n1")));
    assert!(Selectors::parse(None, None, pods).expect("parse").is_empty());
    assert!(Selectors::parse(Some("a b"), None, pods).is_err());
}
