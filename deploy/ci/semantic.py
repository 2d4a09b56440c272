#!/usr/bin/env python3
"""Checks that the deployment files fit keel itself, which no schema can know.

Schema checkers (docker-compose config, kubernetes-validate) say a file is a valid Compose file or
Kubernetes object. This says it runs keel as keel expects: each keel container runs one of keel's
roles, every KEEL_* name is a setting keel has (asked of the binary: `keel config keys --json`)
and each container's settings together pass `keel config check`,
probes hit paths keel serves on the port the role listens on, liveness and readiness differ,
selectors select something, images are pinned, pods are bounded and unprivileged, and the schema
is migrated before anything runs.

Input is rendered output, never the sources: `docker-compose config --format json` (after
interpolation, anchors and overrides) and `kubectl kustomize` (after patches and generators), so
what is checked is what would be applied.

    semantic.py --keel-bin KEEL [--compose NAME=FILE.json]... [--k8s NAME=FILE.yaml]...

Prints one line per finding and exits 1 when there is any, 0 otherwise; 2 when it could not
check at all (keel not runnable, a file unreadable), so that a broken setup is never mistaken for
a caught mistake.
"""

import argparse
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

# The roles a keel container may run. Every other command is a client of a running keel (health,
# replay, ...) or a one-off; checked against `keel --help` so that a renamed command is caught.
ROLES = {"serve", "relay", "project", "migrate"}

# The long-running roles, and the setting that holds each one's listen address (its probes and
# /metrics are there).
LISTEN_ENV = {
    "serve": "KEEL_LISTEN",
    "relay": "KEEL_RELAY__LISTEN",
    "project": "KEEL_PROJECTIONS__LISTEN",
}

# The paths every keel listener serves without a credential (src/api/health.rs, status_router and
# the API's routes). /metrics needs one on the API unless auth.anonymous_metrics is set, so it is
# known but not a probe path.
PROBE_PATHS = {"/v1/health/live", "/v1/health/ready", "/v1/health/pipeline"}
KNOWN_PATHS = PROBE_PATHS | {"/metrics"}

# Settings that are credentials: in Kubernetes they come from a Secret, never inline or from a
# ConfigMap.
SECRET_ENV = {"KEEL_DATABASE_URL", "KEEL_REDIS_URL", "KEEL_AUTH__KEY_SECRET"}

# The Compose services the stack is built from (the contract with docker-compose.yml), and which
# of them run the keel image.
COMPOSE_SERVICES = {"postgres", "redis", "broker", "keel", "keel-relay", "keel-projections", "keel-migrate"}
COMPOSE_KEEL_SERVICES = {"keel", "keel-relay", "keel-projections", "keel-migrate"}
COMPOSE_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:[0-9]+)?)$")

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Stand-ins for values `keel config check` cannot see (they come from a Secret or the downward
# API), shaped so that validation judges the rest.
PLACEHOLDERS = {
    "KEEL_DATABASE_URL": "postgres://keel:placeholder@postgres:5432/keel",
    "KEEL_REDIS_URL": "redis://redis:6379",
    "KEEL_AUTH__KEY_SECRET": "placeholder-secret-of-at-least-thirty-two-bytes-0123456789",
}


def keel_env(env):
    """The KEEL_* part of an environment, placeholders for values set from elsewhere (None)."""
    out = {}
    for name, value in env.items():
        if not name.startswith("KEEL_"):
            continue
        if value is None:
            value = PLACEHOLDERS.get(name, "placeholder")
        out[name] = str(value)
    return out


def check_values(keel, findings, where, env):
    """Only when every name is known: an unknown one is already a finding of its own."""
    if all(keel.knows(name) for name in env if name.startswith("KEEL_")):
        problem = keel.config_check(keel_env(env))
        if problem:
            findings.add(where, f"`keel config check` rejects its settings: {problem}")


def setup_error(message):
    """Ends the run with exit 2: the check could not be made, which is not a finding."""
    print(f"semantic: {message}", file=sys.stderr)
    sys.exit(2)


class Keel:
    """What the keel binary says about itself: its commands and its settings."""

    def __init__(self, binary):
        self.binary = binary
        self._checked = {}
        self.commands = self._commands()
        rows = self._run("config", "keys", "--json")
        try:
            rows = json.loads(rows)
        except json.JSONDecodeError as e:
            setup_error(f"`{binary} config keys --json` did not print JSON ({e}); is KEEL_BIN a keel "
                     "that has `keel config keys`?")
        # Map-valued settings (raw librdkafka properties and the like) are listed as a pattern,
        # `KEEL_RELAY__KAFKA__PROPERTIES__*`: any name below the prefix is one of their keys.
        self.env = {row["env"]: row for row in rows if not row["env"].endswith("*")}
        self.map_prefixes = [row["env"][:-1] for row in rows if row["env"].endswith("*")]

    def _run(self, *args):
        command = f"{self.binary} {' '.join(args)}"
        try:
            out = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            setup_error(f"cannot run `{command}`: {e}; set KEEL_BIN to a built keel (cargo build --bin keel)")
        if out.returncode != 0:
            setup_error(f"`{command}` exited {out.returncode}: {out.stderr.strip()[:300]}; KEEL_BIN must be a keel "
                        "built from this checkout (cargo build --bin keel)")
        return out.stdout

    def _commands(self):
        commands, inside = set(), False
        for line in self._run("--help").splitlines():
            if line.strip() == "Commands:":
                inside = True
            elif inside and not line.startswith("  "):
                break
            elif inside and line.strip():
                commands.add(line.split()[0])
        missing = ROLES - commands
        if missing:
            setup_error(f"`keel --help` no longer lists {sorted(missing)}; update ROLES in deploy/ci/semantic.py")
        return commands

    def config_check(self, env):
        """What `keel config check` says is wrong with these KEEL_* values, or None when they hold.

        Runs with nothing but `env` (and PATH), from the repository root so that the default
        schemas_dir resolves; values the manifests take from elsewhere (a Secret, the downward
        API) are stood in for by placeholders of the right shape.
        """
        key = tuple(sorted(env.items()))
        if key not in self._checked:
            out = subprocess.run([self.binary, "config", "check"], capture_output=True, text=True, timeout=60,
                                 cwd=ROOT, env={"PATH": os.environ.get("PATH", ""), "KEEL_LOG": "error", **env})
            said = (out.stderr.strip() or out.stdout.strip()).splitlines()
            self._checked[key] = None if out.returncode == 0 else " ".join(said)[:300]
        return self._checked[key]

    def knows(self, name):
        return name in self.env or any(name.startswith(p) for p in self.map_prefixes)

    def default(self, name):
        row = self.env.get(name)
        return None if row is None else row.get("default")


class Findings:
    def __init__(self):
        self.lines = []

    def add(self, where, what):
        self.lines.append(f"{where}: {what}")


def role_of(words):
    """The keel command a container runs, from its command or args: the first word, past `keel`."""
    words = list(words or [])
    if words and (words[0] == "keel" or words[0].endswith("/keel")):
        words = words[1:]
    return words[0] if words else None


def image_problem(image):
    """What is wrong with an image reference's pin, or None."""
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (so it means :latest); pin one"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses :latest; pin a version"
    return None


def image_name(image):
    """An image reference's repository basename, without registry, tag or digest: `keel`."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def split_listen(value):
    """(host, port) of a listen address such as 0.0.0.0:8080 or [::]:8080."""
    host, _, port = str(value).rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else None


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_env_names(keel, findings, where, names):
    for name in names:
        if name.startswith("KEEL_") and not keel.knows(name):
            findings.add(where, f"{name} is not a keel setting (`keel config keys` lists them)")


# ---------------------------------------------------------------------------------------------
# Compose


def check_compose(keel, findings, label, project):
    services = project.get("services") or {}
    for name in sorted(COMPOSE_SERVICES - services.keys()):
        findings.add(f"compose {label}", f"service {name!r} is missing")
    for name, service in sorted(services.items()):
        where = f"compose {label}: service {name}"
        image = service.get("image")
        if image:
            problem = image_problem(image)
            if problem:
                findings.add(where, problem)
        restart = service.get("restart")
        if restart is not None and not COMPOSE_RESTART.match(str(restart)):
            findings.add(where, f"restart {restart!r} is not no, always, unless-stopped or on-failure[:N]")
        if name in COMPOSE_KEEL_SERVICES or (image and image_name(image) == "keel"):
            check_compose_keel(keel, findings, where, name, service)


def check_compose_keel(keel, findings, where, name, service):
    command = service.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    entrypoint = service.get("entrypoint")
    if entrypoint and role_of(entrypoint) is not None:
        findings.add(where, f"entrypoint {entrypoint!r} replaces keel's; set only `command`")
    role = role_of(command)
    if role is None:
        findings.add(where, "no command: name the role (serve, relay, project or migrate) explicitly")
    elif role not in ROLES:
        findings.add(where, f"command {role!r} is not a keel role ({', '.join(sorted(ROLES))})")
    env = service.get("environment") or {}
    check_env_names(keel, findings, where, env)
    check_values(keel, findings, where, env)
    if role in LISTEN_ENV:
        listen = env.get(LISTEN_ENV[role])
        if listen is not None and is_loopback(split_listen(listen)[0]):
            findings.add(where, f"{LISTEN_ENV[role]}={listen} is loopback: nothing outside the container reaches it")
        port = split_listen(listen if listen is not None else keel.default(LISTEN_ENV[role]))[1]
        test = (service.get("healthcheck") or {}).get("test") or []
        for url in re.findall(r"https?://[^\s\"']+", " ".join(test if isinstance(test, list) else [test])):
            m = re.match(r"https?://[^/:]+(?::(\d+))?(/[^?]*)?", url)
            url_port, path = m.group(1), m.group(2)
            if url_port and int(url_port) != port:
                findings.add(where, f"healthcheck {url} is not on the port {role} listens on ({port})")
            if path not in (None, "", "/") and path not in KNOWN_PATHS:
                findings.add(where, f"healthcheck path {path} is not one keel serves")
    if role in LISTEN_ENV or role is None:
        migrate = (service.get("depends_on") or {}).get("keel-migrate") or {}
        if migrate.get("condition") != "service_completed_successfully":
            findings.add(where, "does not wait for keel-migrate (depends_on condition service_completed_successfully)")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def selects(selector, labels):
    """Whether a LabelSelector (or a plain Service selector map) selects `labels`."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_spec(obj):
    template = (obj.get("spec") or {}).get("template") or {}
    return template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}


def name_of(obj):
    return (obj.get("metadata") or {}).get("name", "?")


def namespace_of(obj):
    return (obj.get("metadata") or {}).get("namespace")


class Cluster:
    """The rendered objects of one overlay, indexed the ways the checks look them up."""

    def __init__(self, docs):
        self.objects = [d for d in docs if isinstance(d, dict)]
        self.by_kind = {}
        for obj in self.objects:
            self.by_kind.setdefault(obj.get("kind"), []).append(obj)

    def kind(self, kind):
        return self.by_kind.get(kind, [])

    def workloads(self):
        """(object, pod spec, pod labels) for everything that runs pods."""
        for kind in sorted(POD_TEMPLATE_KINDS):
            for obj in self.kind(kind):
                spec, labels = pod_spec(obj)
                yield obj, spec, labels

    def config_map(self, name, namespace):
        for cm in self.kind("ConfigMap"):
            if name_of(cm) == name and namespace_of(cm) == namespace:
                return cm
        return None


def container_ports(container):
    return {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}


def resolve_port(port, container):
    """The number a probe's or Service's port means in `container`, or None when it has none such."""
    ports = container_ports(container)
    if isinstance(port, int):
        return port if port in ports.values() else None
    return ports.get(port)


def check_k8s(keel, findings, label, cluster):
    for obj, spec, labels in cluster.workloads():
        check_workload(keel, findings, label, cluster, obj, spec, labels)
    check_migrate_job(findings, label, cluster)
    check_selectors(findings, label, cluster)


def check_workload(keel, findings, label, cluster, obj, spec, labels):
    kind, name = obj.get("kind"), name_of(obj)
    where = f"k8s {label}: {kind} {name}"
    if kind != "Job":
        if not selects((obj.get("spec") or {}).get("selector"), labels):
            findings.add(where, "its selector does not select its own pod template's labels")
    pod_security = spec.get("securityContext") or {}
    roles = {}
    for section in ("initContainers", "containers"):
        for container in spec.get(section) or []:
            cwhere = f"{where} {section[:-1]} {container.get('name')}"
            check_container_basics(findings, cwhere, container, pod_security)
            image = container.get("image", "")
            if image_name(image) != "keel":
                continue
            role = check_keel_container(keel, findings, cwhere, cluster, obj, container)
            roles.setdefault(section, []).append(role)
    if kind == "Deployment" and any(r in LISTEN_ENV for r in roles.get("containers", [])):
        if "migrate" not in roles.get("initContainers", []):
            findings.add(where, "has no initContainer running `keel migrate`, so it may start against an old schema")


def check_container_basics(findings, where, container, pod_security):
    problem = image_problem(container.get("image", ""))
    if problem:
        findings.add(where, problem)
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            if what not in (resources.get(part) or {}):
                findings.add(where, f"no resources.{part}.{what}")
    security = container.get("securityContext") or {}

    def effective(key):
        return security.get(key, pod_security.get(key))

    if effective("runAsNonRoot") is not True:
        findings.add(where, "runAsNonRoot is not true (pod or container securityContext)")
    if security.get("readOnlyRootFilesystem") is not True:
        findings.add(where, "readOnlyRootFilesystem is not true")
    if security.get("allowPrivilegeEscalation") is not False:
        findings.add(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        findings.add(where, "capabilities do not drop ALL")


def check_keel_container(keel, findings, where, cluster, obj, container):
    """Checks one container of the keel image; returns the role it runs."""
    words = container.get("args") if container.get("args") else container.get("command")
    role = role_of(words)
    if role not in ROLES:
        findings.add(where, f"runs {role!r}, not a keel role ({', '.join(sorted(ROLES))})")
    env = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if not ref:
            continue
        cm = cluster.config_map(ref.get("name"), namespace_of(obj))
        if cm is None:
            findings.add(where, f"envFrom ConfigMap {ref.get('name')!r} is not in the rendered output")
            continue
        for key, value in (cm.get("data") or {}).items():
            if not key.startswith("KEEL_"):
                findings.add(where, f"ConfigMap {name_of(cm)} holds {key}, which is not a KEEL_* setting")
            if key in SECRET_ENV:
                findings.add(where, f"ConfigMap {name_of(cm)} holds the credential {key}; use a Secret")
            env[key] = value
    for var in container.get("env") or []:
        key = var.get("name", "")
        if key in SECRET_ENV and "secretKeyRef" not in (var.get("valueFrom") or {}):
            findings.add(where, f"{key} is a credential: take it from a Secret (valueFrom.secretKeyRef)")
        env[key] = var.get("value")
    check_env_names(keel, findings, where, env)
    check_values(keel, findings, where, env)
    if role in LISTEN_ENV:
        check_probes(keel, findings, where, container, role, env)
    return role


def check_probes(keel, findings, where, container, role, env):
    listen_env = LISTEN_ENV[role]
    listen = env.get(listen_env) or keel.default(listen_env)
    host, port = split_listen(listen)
    if is_loopback(host):
        findings.add(where, f"{listen_env}={listen} is loopback: probes and Services cannot reach it")
    if port not in container_ports(container).values():
        findings.add(where, f"{role} listens on {port} ({listen_env}), which is not a containerPort")
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        spec = container.get(probe)
        if not spec:
            findings.add(where, f"no {probe}")
            continue
        http = spec.get("httpGet")
        if not http:
            findings.add(where, f"{probe} is not an httpGet on keel's health paths")
            continue
        path = http.get("path")
        paths[probe] = path
        if path not in PROBE_PATHS:
            findings.add(where, f"{probe} path {path!r} is not one keel serves ({', '.join(sorted(PROBE_PATHS))})")
        number = resolve_port(http.get("port"), container)
        if number is None:
            findings.add(where, f"{probe} port {http.get('port')!r} is not a port of the container")
        elif number != port:
            findings.add(where, f"{probe} port {number} is not where {role} listens ({port}, {listen_env})")
    if paths.get("livenessProbe") and paths.get("livenessProbe") == paths.get("readinessProbe"):
        findings.add(where, "liveness and readiness probe the same path: liveness must check the process only "
                     "(/v1/health/live), readiness its dependencies (/v1/health/ready)")


def check_migrate_job(findings, label, cluster):
    for job in cluster.kind("Job"):
        spec, _ = pod_spec(job)
        for container in spec.get("containers") or []:
            words = container.get("args") or container.get("command")
            if image_name(container.get("image", "")) == "keel" and role_of(words) == "migrate":
                return
    findings.add(f"k8s {label}", "no Job runs `keel migrate`")


def check_selectors(findings, label, cluster):
    pods = [(obj, spec, labels) for obj, spec, labels in cluster.workloads()]

    def matching(selector, namespace, kinds=("Deployment",)):
        return [(o, s) for o, s, lab in pods
                if o.get("kind") in kinds and namespace_of(o) == namespace and selects(selector, lab)]

    for pdb in cluster.kind("PodDisruptionBudget"):
        if not matching((pdb.get("spec") or {}).get("selector"), namespace_of(pdb)):
            findings.add(f"k8s {label}: PodDisruptionBudget {name_of(pdb)}", "its selector matches no Deployment's pods")
    for svc in cluster.kind("Service"):
        spec = svc.get("spec") or {}
        targets = matching(spec.get("selector"), namespace_of(svc))
        where = f"k8s {label}: Service {name_of(svc)}"
        if not targets:
            findings.add(where, "its selector matches no Deployment's pods")
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for obj, pspec in targets:
                if not any(resolve_port(target, c) for c in pspec.get("containers") or []):
                    findings.add(where, f"targetPort {target!r} is no container port of {name_of(obj)}")
    for hpa in cluster.kind("HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if not any(name_of(o) == ref.get("name") and namespace_of(o) == namespace_of(hpa)
                   for o in cluster.kind(ref.get("kind"))):
            findings.add(f"k8s {label}: HorizontalPodAutoscaler {name_of(hpa)}",
                         f"scales {ref.get('kind')} {ref.get('name')}, which is not in the output")
    for netpol in cluster.kind("NetworkPolicy"):
        selector = (netpol.get("spec") or {}).get("podSelector")
        if not matching(selector, namespace_of(netpol), POD_TEMPLATE_KINDS):
            findings.add(f"k8s {label}: NetworkPolicy {name_of(netpol)}", "its podSelector matches no pods")
    for monitor in cluster.kind("PodMonitor"):
        spec = monitor.get("spec") or {}
        targets = matching(spec.get("selector"), namespace_of(monitor))
        where = f"k8s {label}: PodMonitor {name_of(monitor)}"
        if not targets:
            findings.add(where, "its selector matches no Deployment's pods")
        for endpoint in spec.get("podMetricsEndpoints") or []:
            for obj, pspec in targets:
                if not any(endpoint.get("port") in container_ports(c) for c in pspec.get("containers") or []):
                    findings.add(where, f"port {endpoint.get('port')!r} is no named container port of {name_of(obj)}")
    for monitor in cluster.kind("ServiceMonitor"):
        spec = monitor.get("spec") or {}
        where = f"k8s {label}: ServiceMonitor {name_of(monitor)}"
        services = [s for s in cluster.kind("Service") if namespace_of(s) == namespace_of(monitor)
                    and selects(spec.get("selector"), (s.get("metadata") or {}).get("labels") or {})]
        if not services:
            findings.add(where, "its selector matches no Service's labels")
        for endpoint in spec.get("endpoints") or []:
            for svc in services:
                if endpoint.get("port") not in {p.get("name") for p in (svc.get("spec") or {}).get("ports") or []}:
                    findings.add(where, f"port {endpoint.get('port')!r} is no named port of Service {name_of(svc)}")
            if endpoint.get("path") not in KNOWN_PATHS:
                findings.add(where, f"path {endpoint.get('path')!r} is not one keel serves")


def labelled(value):
    label, sep, path = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=FILE")
    return label, path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keel-bin", required=True, help="the keel binary to ask for its commands and settings")
    parser.add_argument("--compose", type=labelled, action="append", default=[],
                        help="NAME=FILE: `docker-compose config --format json` output")
    parser.add_argument("--k8s", type=labelled, action="append", default=[],
                        help="NAME=FILE: `kubectl kustomize` output")
    args = parser.parse_args()
    keel = Keel(args.keel_bin)
    findings = Findings()
    try:
        renders = [(label, "compose", json.load(open(path))) for label, path in args.compose]
        renders += [(label, "k8s", Cluster(list(yaml.safe_load_all(open(path))))) for label, path in args.k8s]
    except (OSError, ValueError, yaml.YAMLError) as e:
        setup_error(f"cannot read a rendered file: {e}")
    for label, kind, render in renders:
        if kind == "compose":
            check_compose(keel, findings, label, render)
        else:
            check_k8s(keel, findings, label, render)
    for line in findings.lines:
        print(f"semantic: {line}")
    checked = len(args.compose) + len(args.k8s)
    if findings.lines:
        print(f"semantic: {len(findings.lines)} finding(s) in {checked} rendered file(s)")
        return 1
    print(f"semantic: ok ({checked} rendered file(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
