"""The Python `kubernetes` client (PyPI) against a Keelson control plane: lists, watches and
patches, as the issue's client-compatibility check asks. Run by
tests/tests/controlplane_cli.rs with KUBECONFIG set to the server's admin kubeconfig; exits
non-zero (with the reason) on the first mismatch."""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    config.load_kube_config()
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = {ns.metadata.name for ns in core.list_namespace().items}
    check({"default", "kube-system"} <= names, f"namespaces {names}")
    check(client.VersionApi().get_code().git_version.startswith("v1.33.0"), "version")

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg", labels={"app": "py"}), data={"a": "1"})
    created = core.create_namespaced_config_map("py", cm)
    check(created.metadata.uid and created.metadata.resource_version, "create returns identity")

    # A watch from the created object's version sees the patch and the deletion.
    events = []
    w = watch.Watch()

    def follow():
        for e in w.stream(core.list_namespaced_config_map, "py", label_selector="app=py",
                          resource_version=created.metadata.resource_version, timeout_seconds=20):
            events.append((e["type"], e["object"].metadata.name, (e["object"].data or {}).get("a")))
            if e["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=follow)
    t.start()

    patched = core.patch_namespaced_config_map("cfg", "py", {"data": {"a": "2"}})
    check(patched.data == {"a": "2"}, f"merge patch {patched.data}")
    patched = core.patch_namespaced_config_map(
        "cfg", "py", [{"op": "add", "path": "/data/b", "value": "3"}])
    check(patched.data == {"a": "2", "b": "3"}, f"json patch {patched.data}")
    listed = core.list_namespaced_config_map("py", label_selector="app=py")
    check([c.metadata.name for c in listed.items] == ["cfg"], "label-selected list")
    check(core.list_namespaced_config_map("py", label_selector="app=other").items == [], "empty selection")

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]))))
    apps.create_namespaced_deployment("py", dep)
    scaled = apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 4}})
    check(scaled.spec.replicas == 4, "scale patch")
    check(apps.read_namespaced_deployment("web", "py").spec.replicas == 4, "scaled deployment")

    try:
        core.read_namespaced_config_map("missing", "py")
        check(False, "reading a missing object succeeded")
    except ApiException as e:
        check(e.status == 404, f"missing object status {e.status}")

    core.delete_namespaced_config_map("cfg", "py")
    t.join(timeout=30)
    kinds = [e[0] for e in events]
    check(kinds[:1] == ["MODIFIED"] and "DELETED" in kinds, f"watch events {events}")
    check(("MODIFIED", "cfg", "2") in events, f"the patch was watched: {events}")
    print("python client: ok")


main()
