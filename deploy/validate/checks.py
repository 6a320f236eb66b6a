#!/usr/bin/env python3
"""Checks behind scripts/validate-deploy. Each sub-command checks one file (or one rendered
kustomization) and prints exactly one line: `ok   <label> (...)` or `FAIL <label>: <why>`,
with any detail lines indented below, and exits 0 or 1.

  checks.py k8s LABEL RENDERED.yaml K8S_VERSION SCHEMA_DIR
      schema: built-in kinds with kubernetes-validate (strict: unknown fields fail), custom
      resources (KEDA, Strimzi) with the minimal JSON schemas in SCHEMA_DIR; a kind with no
      schema at all FAILS (never skipped silently). Then consistency: security settings,
      probes, resources, grace period vs SHUTDOWN_GRACE_SECS, Service/PDB/Ingress/autoscaler
      references, KEDA trigger vs ConfigMap, never two autoscalers on one Deployment,
      STATUS_EXPECT_EMBEDDINGS true exactly when an embed stage runs.
  checks.py dashboard LABEL DASHBOARD.json TELEMETRY.rs
      JSON, unique panel ids, datasource uid, and every metric in an expression is one the
      processor documents in processor/src/telemetry.rs.
  checks.py grafana-provisioning LABEL FILE.yml
  checks.py dockerfile LABEL Dockerfile COMPOSE.yml
      the build targets compose uses exist; non-root USER; ENTRYPOINT per service target.
  checks.py compose-files LABEL COMPOSE.yml
      every bind-mounted file or folder of the compose file exists (compose does not check).
  checks.py kafka-topics LABEL schemas/src k8s/strimzi/topics.yaml k8s/strimzi/user.yaml
      every topic the code names is a Strimzi KafkaTopic the pipeline's user may read and write.
  checks.py kafka-version LABEL COMPOSE.yml scripts/kafka-jars k8s/strimzi/kustomization.yaml
      compose's Kafka image and the Strimzi resources' declared version are the tests' version.
  checks.py prometheus-rule LABEL ALERTS.yaml RUNBOOK.md SRC_DIR...
      every alert has a severity, summary, description and a runbook_url whose anchor is a
      heading of RUNBOOK.md; every metric an expression reads is emitted by the Rust sources
      (metrics::counter!/gauge!/histogram!), is `up`, or is recorded by the file itself.
  checks.py settings LABEL k8s|compose RENDERED.yaml|COMPOSE.yml DOCKERFILE SECRET_TEMPLATES|- SRC.rs...
      the settings the code reads (`#[arg(env = "...")]` in status-api's and the processor's
      Config, with the service-kit structs they flatten) that production needs (REQUIRED) are
      set for every workload of the variant: Dockerfile ENV of its image, envFrom/env/valueFrom
      (Secrets created out of band count with the keys of SECRET_TEMPLATES), compose
      environment with defaults interpolated; a file setting must be a file in a mounted
      volume. Every setting with no default or a local-only default (loopback, `local...`, a path
      into the checkout) is classified REQUIRED or OPTIONAL, and neither list names a setting
      the code does not read. A variant without an embed stage writes no hand-off derivatives.
      Every variable an init container's command line expands (the embed pod's model copy:
      MODEL_SOURCE, MODEL_DIR, S3_*) is set in its environment.
  checks.py podmonitors LABEL MONITORING.yaml RENDERED.yaml...
      in each rendered overlay, every PodMonitor selects some Deployment's pods, on a named
      port those pods have; every Deployment is scraped by exactly one PodMonitor; every `job`
      the rules in MONITORING.yaml select on is one a PodMonitor sets.

Runs inside the venv that has kubernetes-validate (which brings PyYAML and jsonschema).
"""

import json
import os
import re
import sys

import yaml

# Secrets that overlays/prod deliberately does not render (created out of band, docs/deploy.md).
EXTERNAL_SECRETS = {"photo-pipeline-processor", "photo-pipeline-status", "photo-pipeline-kafka",
                    "photo-pipeline-console-accounts", "kafka-cluster-ca"}
STAGES = {"ingest", "thumbnail", "embed"}
# Which topic and consumer-group variable each autoscaled stage consumes (KEDA must watch the same).
STAGE_INPUT = {"thumbnail": ("TOPIC_UPLOADED", "THUMBNAIL_GROUP", "photo-pipeline-thumbnail"),
               "embed": ("TOPIC_THUMBNAILED", None, "photo-pipeline-embed")}


def finish(label, errors, summary):
    if errors:
        print(f"FAIL {label}: {len(errors)} problem(s)")
        for e in errors:
            print(f"       - {e}")
        return 1
    print(f"ok   {label} ({summary})")
    return 0


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kn(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------
# k8s


def schema_errors(docs, version, schema_dir):
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    errors, counts = [], {"kubernetes-validate": 0, "CRD schema": 0}
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
            counts["kubernetes-validate"] += 1
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{kn(d)}: {path}: {e.message}")
            continue
        except SchemaNotFoundError:
            pass
        group_version = d.get("apiVersion", "")
        group = group_version.split("/")[0].split(".")[0]
        gv_version = group_version.split("/")[-1]
        schema_path = os.path.join(schema_dir, f"{d.get('kind', '').lower()}-{group}-{gv_version}.json")
        if not os.path.exists(schema_path):
            errors.append(f"{kn(d)} ({group_version}): no schema in kubernetes-validate {version} nor {schema_path}")
            continue
        with open(schema_path) as f:
            schema = json.load(f)
        problems = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=lambda e: list(e.path))
        for e in problems:
            errors.append(f"{kn(d)}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        if not problems:
            counts["CRD schema"] += 1
    return errors, counts


def container_env(c, configmaps):
    """Literal env of a container: its ConfigMap envFrom values, then its own env values."""
    env = {}
    for ef in c.get("envFrom", []):
        cm = ef.get("configMapRef", {}).get("name")
        if cm in configmaps:
            env.update(configmaps[cm].get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def prestop_seconds(c):
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep" and cmd[1].isdigit():
        return int(cmd[1])
    return 0


def consistency_errors(docs):
    errors = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    services = by_kind.get("Service", {})

    # Cluster-scoped kinds have no namespace.
    cluster_scoped = {"Namespace", "PriorityClass"}
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] not in cluster_scoped}
    if len(namespaces) != 1 or None in namespaces:
        errors.append(f"objects must all be in one namespace, found {sorted(map(str, namespaces))}")

    pod_labels = {}
    for name, dep in deployments.items():
        where = f"Deployment/{name}"
        spec = dep["spec"]
        tmpl = spec["template"]
        pod = tmpl["spec"]
        labels = tmpl["metadata"].get("labels", {})
        pod_labels[name] = labels
        if not matches(spec["selector"].get("matchLabels", {}), labels):
            errors.append(f"{where}: selector does not match its pod labels")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: pod seccompProfile must be RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: automountServiceAccountToken must be false")
        ports_by_name = {}
        for c in pod.get("initContainers", []) + pod["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cw}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cw}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{cw}: capabilities must drop ALL")
            res = c.get("resources", {})
            for key in ("cpu", "memory"):
                if key not in res.get("requests", {}):
                    errors.append(f"{cw}: no {key} request")
            if "memory" not in res.get("limits", {}):
                errors.append(f"{cw}: no memory limit")
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    errors.append(f"{cw}: envFrom ConfigMap {ef['configMapRef']['name']} is not in the render")
                if "secretRef" in ef:
                    s = ef["secretRef"]["name"]
                    if s not in secrets and s not in EXTERNAL_SECRETS:
                        errors.append(f"{cw}: envFrom Secret {s} is neither rendered nor a known external secret")
        for v in pod.get("volumes", []):
            s = v.get("secret", {}).get("secretName")
            if s and s not in secrets and s not in EXTERNAL_SECRETS:
                errors.append(f"{where}: volume Secret {s} is neither rendered nor a known external secret")
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            for p in c.get("ports", []):
                ports_by_name[p.get("name")] = p["containerPort"]
            if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                errors.append(f"{cw}: livenessProbe must GET /healthz")
            if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                errors.append(f"{cw}: readinessProbe must GET /readyz")
            env = container_env(c, configmaps)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            shutdown = int(env.get("SHUTDOWN_GRACE_SECS", 20))
            needed = shutdown + prestop_seconds(c)
            if grace <= needed:
                errors.append(f"{cw}: terminationGracePeriodSeconds {grace} must exceed SHUTDOWN_GRACE_SECS {shutdown} + preStop {prestop_seconds(c)}")
            stages = [s for s in env.get("PROCESSOR_STAGES", "").split(",") if s]
            unknown = set(stages) - STAGES
            if unknown:
                errors.append(f"{cw}: unknown PROCESSOR_STAGES {sorted(unknown)}")
            if "embed" in stages and "embed" not in c["image"].rsplit("/", 1)[-1]:
                errors.append(f"{cw}: runs the embed stage but image {c['image']} is not the embed image (ONNX Runtime)")
            if stages and env.get("PROCESSOR_HTTP_ADDR", "").startswith("127."):
                errors.append(f"{cw}: PROCESSOR_HTTP_ADDR must listen on 0.0.0.0 in a pod")
        dep["_ports"] = ports_by_name

    # status-api closes a batch after thumbnails unless told the embed stage runs.
    runs_embed = any("embed" in container_env(c, configmaps).get("PROCESSOR_STAGES", "").split(",")
                     for d in deployments.values() for c in d["spec"]["template"]["spec"]["containers"])
    for name, dep in deployments.items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            env = container_env(c, configmaps)
            if "STATUS_HTTP_ADDR" in env and (env.get("STATUS_EXPECT_EMBEDDINGS", "false") == "true") != runs_embed:
                errors.append(f"Deployment/{name}: STATUS_EXPECT_EMBEDDINGS={env.get('STATUS_EXPECT_EMBEDDINGS', 'false')} "
                              f"but the embed stage {'runs' if runs_embed else 'does not run'} in this render")

    for name, svc in services.items():
        sel = svc["spec"].get("selector", {})
        targets = [d for d, labels in pod_labels.items() if matches(sel, labels)]
        if not targets:
            errors.append(f"Service/{name}: selector {sel} matches no Deployment's pods")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            for t in targets:
                if isinstance(tp, str) and tp not in deployments[t]["_ports"]:
                    errors.append(f"Service/{name}: targetPort {tp} is not a port of Deployment/{t}")

    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(matches(sel, labels) for labels in pod_labels.values()):
            errors.append(f"PodDisruptionBudget/{name}: selector {sel} matches no Deployment's pods")

    for name, ing in by_kind.get("Ingress", {}).items():
        ann = ing["metadata"].get("annotations", {})
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                be = path["backend"]["service"]
                svc = services.get(be["name"])
                if svc is None:
                    errors.append(f"Ingress/{name}: backend Service {be['name']} is not in the render")
                    continue
                port = be["port"]
                if not any(p.get("name") == port.get("name") or p.get("port") == port.get("number") for p in svc["spec"]["ports"]):
                    errors.append(f"Ingress/{name}: Service {be['name']} has no port {port}")
                if be["name"] == "status-api":  # Server-Sent Events
                    if ann.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
                        errors.append(f"Ingress/{name}: SSE needs nginx.ingress.kubernetes.io/proxy-buffering: off")
                    if int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60")) < 3600:
                        errors.append(f"Ingress/{name}: SSE needs proxy-read-timeout >= 3600")

    if by_kind.get("NetworkPolicy") and not any(
        np["spec"].get("podSelector") == {} and "Ingress" in np["spec"].get("policyTypes", [])
        for np in by_kind["NetworkPolicy"].values()
    ):
        errors.append("NetworkPolicies present but no default deny of ingress (podSelector: {})")

    scaled = {}
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        scaled.setdefault(hpa["spec"]["scaleTargetRef"]["name"], []).append(f"HorizontalPodAutoscaler/{name}")
    for name, so in by_kind.get("ScaledObject", {}).items():
        target = so["spec"]["scaleTargetRef"]["name"]
        scaled.setdefault(target, []).append(f"ScaledObject/{name}")
        dep = deployments.get(target)
        if dep is None:
            continue
        env = container_env(dep["spec"]["template"]["spec"]["containers"][0], configmaps)
        for trig in so["spec"]["triggers"]:
            if trig["type"] != "kafka":
                continue
            md = trig["metadata"]
            if md.get("bootstrapServers") != env.get("KAFKA_BROKERS"):
                errors.append(f"ScaledObject/{name}: bootstrapServers {md.get('bootstrapServers')} != KAFKA_BROKERS {env.get('KAFKA_BROKERS')}")
            topic_var, group_var, group_default = STAGE_INPUT.get(target, (None, None, None))
            if topic_var and md.get("topic") != env.get(topic_var):
                errors.append(f"ScaledObject/{name}: topic {md.get('topic')} != {topic_var} {env.get(topic_var)}")
            group = env.get(group_var, group_default) if group_var else group_default
            if group and md.get("consumerGroup") != group:
                errors.append(f"ScaledObject/{name}: consumerGroup {md.get('consumerGroup')} != the stage's group {group}")
            partitions = int(env.get("KAFKA_TOPIC_PARTITIONS", 12))
            if so["spec"].get("maxReplicaCount", 100) > partitions:
                errors.append(f"ScaledObject/{name}: maxReplicaCount above the {partitions} partitions (idle consumers)")
            ref = trig.get("authenticationRef", {}).get("name")
            if ref and ref not in by_kind.get("TriggerAuthentication", {}):
                errors.append(f"ScaledObject/{name}: TriggerAuthentication {ref} is not in the render")
            if "KAFKA_OPTIONS" in {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", [])} and not ref:
                errors.append(f"ScaledObject/{name}: pods use KAFKA_OPTIONS (SASL/TLS) but the trigger has no authenticationRef")
    for target, owners in scaled.items():
        if target not in deployments:
            errors.append(f"{', '.join(owners)}: target Deployment/{target} is not in the render")
            continue
        if len(owners) > 1:
            errors.append(f"Deployment/{target} has two autoscalers: {', '.join(owners)}")
        if "replicas" in deployments[target]["spec"]:
            errors.append(f"Deployment/{target} is autoscaled ({owners[0]}) but sets spec.replicas; kubectl apply would reset it")
    # Every pod's priority class is declared (an unknown one makes the pod unschedulable).
    priority_classes = set(by_kind.get("PriorityClass", {}))
    for name, d in deployments.items():
        pc = d["spec"]["template"]["spec"].get("priorityClassName")
        if pc is not None and pc not in priority_classes:
            errors.append(f"Deployment {name}: priorityClassName {pc} is not declared")
    return errors


def cmd_k8s(label, rendered, version, schema_dir):
    try:
        docs = load_docs(rendered)
    except yaml.YAMLError as e:
        return finish(label, [f"rendered YAML does not parse: {e}"], "")
    if not docs:
        return finish(label, ["rendered nothing"], "")
    errors, counts = schema_errors(docs, version, schema_dir)
    if not errors:
        try:
            errors = consistency_errors(docs)
        except (KeyError, TypeError, ValueError) as e:
            errors = [f"consistency checks could not read the objects: {e!r}"]
    kinds = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    summary = (f"{len(docs)} objects; {counts['kubernetes-validate']} by kubernetes-validate {version} strict, "
               f"{counts['CRD schema']} by CRD schema; " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    return finish(label, errors, summary)


# ---------------------------------------------------------------------------------------------
# Grafana, Dockerfile, compose


def documented_metrics(telemetry_rs):
    """Metric names listed in the doc comment of processor/src/telemetry.rs (`name{labels}`)."""
    with open(telemetry_rs) as f:
        head = "".join(line for line in f if line.startswith("//!"))
    return set(re.findall(r"`([a-z_][a-z0-9_]*)(?:\{[^`]*\})?`", head))


PROMQL_WORDS = {"sum", "rate", "irate", "increase", "max", "min", "avg", "count", "by", "without", "le",
                "histogram_quantile", "topk", "bottomk", "on", "ignoring", "group_left", "group_right",
                "and", "or", "unless", "offset", "clamp_min", "clamp_max", "abs", "delta", "deriv", "time"}


def cmd_dashboard(label, path, telemetry_rs):
    errors = []
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        return finish(label, [f"not JSON: {e}"], "")
    known = documented_metrics(telemetry_rs)
    if not known:
        errors.append(f"no metric names found in {telemetry_rs}")
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    used = set()
    for p in panels:
        for t in p.get("targets", []):
            if t.get("datasource", p.get("datasource", {})).get("uid") != "prometheus":
                errors.append(f"panel {p.get('title')!r}: datasource uid must be 'prometheus' (provisioned)")
            expr = t.get("expr", "")
            if expr.count("(") != expr.count(")"):
                errors.append(f"panel {p.get('title')!r}: unbalanced parentheses in {expr!r}")
            # Strip strings, label matchers and ranges, then every remaining identifier is a
            # function, keyword, label or metric; metrics must be documented ones.
            bare = re.sub(r'"[^"]*"', "", expr)
            bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
            grouping = set()
            for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
                grouping |= {x.strip() for x in m.group(1).split(",")}
            for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare):
                if ident in PROMQL_WORDS or ident in grouping:
                    continue
                base = re.sub(r"_(bucket|sum|count)$", "", ident)
                used.add(base)
                if base not in known:
                    errors.append(f"panel {p.get('title')!r}: metric {ident} is not one telemetry.rs documents")
    return finish(label, errors, f"{len(panels)} panels, {len(used)} metrics, all documented in telemetry.rs")


def cmd_grafana_provisioning(label, path):
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        return finish(label, [str(e)], "")
    errors = []
    if doc.get("apiVersion") != 1:
        errors.append("apiVersion must be 1")
    if "datasources" in doc:
        for ds in doc["datasources"]:
            for key in ("name", "type", "url", "uid"):
                if key not in ds:
                    errors.append(f"datasource {ds.get('name')}: missing {key}")
        what = f"{len(doc['datasources'])} datasource(s)"
    elif "providers" in doc:
        for p in doc["providers"]:
            if p.get("type") != "file" or not p.get("options", {}).get("path"):
                errors.append(f"provider {p.get('name')}: needs type file and options.path")
        what = f"{len(doc['providers'])} dashboard provider(s)"
    else:
        errors.append("neither datasources nor providers")
        what = ""
    return finish(label, errors, what)


def cmd_dockerfile(label, dockerfile, compose):
    with open(dockerfile) as f:
        text = f.read()
    errors = []
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)
    with open(compose) as f:
        services = yaml.safe_load(f)["services"]
    targets = {s["build"]["target"] for s in services.values() if isinstance(s.get("build"), dict) and "target" in s["build"]}
    for t in sorted(targets - set(stages)):
        errors.append(f"compose builds target {t!r}, which the Dockerfile lacks")
    if not stages or stages[-1] != "processor":
        errors.append("the last stage (default target) should be processor")
    if not re.search(r"^USER\s+[1-9][0-9]*(:[0-9]+)?\s*$", text, re.M):
        errors.append("no numeric non-root USER (Kubernetes runAsNonRoot needs a numeric UID)")
    blocks = re.split(r"^FROM\s", text, flags=re.M)
    for t in ("processor", "embed", "status-api"):
        block = next((b for b in blocks if re.match(rf"\S+\s+AS\s+{re.escape(t)}\s*$", b.splitlines()[0] if b else "", re.I)), None)
        if block is None:
            errors.append(f"no stage {t}")
        elif "ENTRYPOINT" not in block:
            errors.append(f"stage {t} has no ENTRYPOINT")
    return finish(label, errors, f"stages {', '.join(stages)}; compose targets {', '.join(sorted(targets))}")


def cmd_compose_files(label, compose):
    root = os.path.dirname(os.path.abspath(compose))
    with open(compose) as f:
        doc = yaml.safe_load(f)
    errors, count = [], 0
    for name, svc in doc["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if not src.startswith("./"):
                continue  # named volume, or a host path chosen by the user (${MODEL_HOST_DIR})
            count += 1
            if not os.path.exists(os.path.join(root, src)):
                errors.append(f"service {name}: bind mount source {src} does not exist")
    return finish(label, errors, f"{count} bind mounts present")


def cmd_kafka_version(label, compose, kafka_jars, strimzi_kustomization):
    """The broker version line of the tests (scripts/kafka-jars) is the one compose runs and the
    Strimzi resources are written for."""
    import re
    with open(kafka_jars) as f:
        m = re.search(r"^KAFKA_VERSION=(\S+)", f.read(), re.M)
    if not m:
        return finish(label, [f"{kafka_jars}: no KAFKA_VERSION="], "")
    tested = m.group(1)
    errors = []
    with open(compose) as f:
        image = yaml.safe_load(f)["services"]["kafka"]["image"]
    if image != f"apache/kafka:{tested}":
        errors.append(f"compose runs {image}, the tests Apache Kafka {tested} (scripts/kafka-jars)")
    with open(strimzi_kustomization) as f:
        k = yaml.safe_load(f)
    declared = (k.get("commonAnnotations") or {}).get("photo-pipeline/kafka-version")
    if declared != tested:
        errors.append(f"{strimzi_kustomization}: commonAnnotations photo-pipeline/kafka-version is "
                      f"{declared!r}, the tests run {tested}")
    return finish(label, errors, f"Apache Kafka {tested} in the tests, compose and k8s/strimzi")


def cmd_kafka_topics(label, schemas_src, strimzi_topics, strimzi_user):
    """Every topic the code names (schemas/src: the default topic names both services use) is
    declared as a Strimzi KafkaTopic, and the pipeline's KafkaUser may read and write it: prod
    sets KAFKA_CREATE_TOPICS=false and its user may not create topics."""
    import glob
    import re
    needed = set()
    for path in glob.glob(os.path.join(schemas_src, "**", "*.rs"), recursive=True):
        with open(path) as f:
            needed |= set(re.findall(r'pub const [A-Z_]+: &str = "(photos\.[a-z_.-]+)"', f.read()))
    declared = {d["spec"].get("topicName", d["metadata"]["name"])
                for d in load_docs(strimzi_topics) if d and d.get("kind") == "KafkaTopic"}
    acls = [a for d in load_docs(strimzi_user) if d and d.get("kind") == "KafkaUser"
            for a in d["spec"].get("authorization", {}).get("acls", [])
            if a["resource"]["type"] == "topic"]

    def allowed(topic, op):
        for a in acls:
            name, pattern = a["resource"].get("name", ""), a["resource"].get("patternType", "literal")
            hit = topic.startswith(name) if pattern == "prefix" else topic == name
            if hit and op in a.get("operations", []):
                return True
        return False

    errors = [f"topic {t} (named in {schemas_src}) has no KafkaTopic in {strimzi_topics}"
              for t in sorted(needed - declared)]
    errors += [f"KafkaUser in {strimzi_user} may not {op} topic {t}"
               for t in sorted(needed) for op in ("Read", "Write", "Describe") if not allowed(t, op)]
    if not needed:
        errors.append(f"no topic names found in {schemas_src}")
    return finish(label, errors, f"{len(needed)} topics declared with read/write ACLs: {', '.join(sorted(needed))}")


# ---------------------------------------------------------------------------------------------
# Settings the code needs from each deployment variant (settings)
#
# The settings come from the code: every `#[arg(env = "VAR", ...)]` of status-api's and the
# processor's `Config` (status-api/src/config.rs, processor/src/config.rs), with the structs
# they flatten from service-kit (`KafkaArgs`, `S3Args`). Their defaults are for one machine
# running `scripts/dev`: loopback addresses, MinIO's keys, well-known secrets, paths into the
# checkout. Every setting with no default or such a local-only default must be classified
# below, either REQUIRED (a variant that leaves it unset fails) or OPTIONAL (with the reason it
# may stay unset), so that a new setting cannot slip into the code unnoticed by deployments.

# (service, stages, VAR, scope, why[, value]). service: the binary. stages: for the processor,
# the PROCESSOR_STAGES that need it (None: any). scope: "all" = every variant (the Kubernetes
# overlays and docker-compose.yml), "k8s" = the overlays only (compose is a laptop stack).
# value: the value it must have, where only one is right.
REQUIRED = [
    # status-api
    ("status-api", None, "STATUS_HTTP_ADDR", "all", "the default 127.0.0.1:8080 is unreachable from outside the container"),
    ("status-api", None, "KAFKA_BROKERS", "all", "the default 127.0.0.1:9092 is scripts/dev's broker"),
    ("status-api", None, "STATUS_TOKEN_SECRET", "all", "the default local-token-secret is public: anyone could sign status tokens"),
    ("status-api", None, "STATUS_ACCOUNTS_FILE", "all", "without an accounts file nobody can sign in to the console"),
    ("status-api", None, "STATUS_ALLOWED_ORIGIN", "all", "the default http://127.0.0.1:8080 is scripts/dev's origin"),
    ("status-api", None, "S3_ENDPOINT", "all", "presigned upload/thumbnail URLs would point at 127.0.0.1:9000"),
    ("status-api", None, "S3_REGION", "all", "presigned URLs are signed for this region (B2: the bucket's, e.g. us-west-004)"),
    ("status-api", None, "S3_ACCESS_KEY", "all", "presigned URLs would be signed with MinIO's local key"),
    ("status-api", None, "S3_SECRET_KEY", "all", "presigned URLs would be signed with MinIO's local key"),
    ("status-api", None, "S3_BUCKET", "all", "presigned URLs name this bucket; it must be the bucket the B2 webhook watches"),
    ("status-api", None, "STATUS_COOKIE_SECURE", "k8s", "the Ingress serves the console over HTTPS: the session cookie must be Secure", "true"),
    # processor, by stage (ingest: webhook -> Kafka; thumbnail and embed: Kafka + object store)
    ("processor", None, "PROCESSOR_HTTP_ADDR", "all", "the default 127.0.0.1:8081 is unreachable from outside the container"),
    ("processor", None, "KAFKA_BROKERS", "all", "the default 127.0.0.1:9092 is scripts/dev's broker"),
    ("processor", ("ingest",), "B2_WEBHOOK_SECRET", "all", "the default local-webhook-secret is public: anyone could post events"),
    ("processor", ("thumbnail", "embed"), "S3_ENDPOINT", "all", "the default is scripts/dev's 127.0.0.1:9000"),
    ("processor", ("thumbnail", "embed"), "S3_REGION", "all", "requests are signed for this region (B2: the bucket's)"),
    ("processor", ("thumbnail", "embed"), "S3_ACCESS_KEY", "all", "the default is MinIO's local key"),
    ("processor", ("thumbnail", "embed"), "S3_SECRET_KEY", "all", "the default is MinIO's local key"),
    ("processor", ("thumbnail",), "DB_HOOK_URL", "k8s", "unset, no thumbnail reaches the database (compose has no hook locally)"),
    ("processor", ("thumbnail", "embed"), "DB_HOOK_SECRET", "k8s", "the default local-hook-secret is public: anyone could forge hook calls"),
    ("processor", ("thumbnail", "embed"), "EMBED_PROFILE", "all", "the default is a path in the source checkout"),
    ("processor", ("embed",), "MODEL_DIR", "all", "the default ~/.cache/photo-pipeline/models is not in the image"),
    ("processor", ("embed",), "ORT_DYLIB_PATH", "all", "the default is under MODEL_DIR; the embed image carries ONNX Runtime elsewhere"),
    ("processor", ("thumbnail", "embed"), "CPU_WORKERS", "k8s", "without a CPU limit the default (available cores) is the whole node's"),
]

# Settings with no default or a local-only one that a deployment may leave unset, and why.
OPTIONAL = {
    "KAFKA_OPTIONS": "only for brokers that need TLS/SASL (prod sets it in kafka-sasl-tls.yaml)",
    "KAFKA_GROUP_INSTANCE_ID": "static membership needs stable pod names; Deployments leave it unset",
    "EMBED_WORKERS": "defaults to CPU_WORKERS",
    "EMBED_HANDOFF": "resolved from the stages (memory with embed in the process, else derivative); "
                     "a variant without an embed stage must set none (checked below)",
}

# Settings whose value is a path to a file the deployment must provide.
FILE_SETTINGS = {"STATUS_ACCOUNTS_FILE"}

# Images (Dockerfile targets) and the binary each runs.
IMAGE_SERVICE = {"processor": "processor", "embed": "processor", "status-api": "status-api"}


def _balanced(text, i, open_ch, close_ch):
    """Index just past the bracket closing the one at text[i]."""
    depth, j, in_str = 0, i, False
    while j < len(text):
        ch = text[j]
        if in_str:
            if ch == "\\":
                j += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise ValueError("unbalanced")


def rust_structs(paths):
    """{(path, Struct): [field]} of `pub struct X { ... }`, each field a dict: env, default
    (a literal string, True for a non-literal default, None for none), optional, flatten (type
    name) — from the `#[arg(...)]` / `#[command(flatten)]` attributes above each `pub` field."""
    structs = {}
    for path in paths:
        with open(path) as f:
            text = "\n".join(line for line in f.read().splitlines() if not line.strip().startswith("//"))
        for m in re.finditer(r"\bpub struct (\w+)\s*\{", text):
            body = text[m.end() - 1:_balanced(text, m.end() - 1, "{", "}")][1:-1]
            fields, attrs, i = [], [], 0
            while i < len(body):
                if body.startswith("#[", i):
                    end = _balanced(body, i + 1, "[", "]")
                    attrs.append(body[i + 2:end - 1])
                    i = end
                    continue
                fm = re.match(r"\s*pub\s+(\w+)\s*:\s*", body[i:])
                if fm:
                    j = i + fm.end()
                    depth = 0
                    while j < len(body) and not (body[j] == "," and depth == 0):
                        depth += body[j] in "<(" and 1 or 0
                        depth -= body[j] in ">)" and 1 or 0
                        j += 1
                    ty = body[i + fm.end():j].strip()
                    a = " ".join(attrs)
                    field = {"name": fm.group(1), "type": ty, "env": None, "flatten": None}
                    if re.search(r"\bcommand\s*\(\s*flatten\s*\)", a):
                        field["flatten"] = ty.split("::")[-1]
                    env = re.search(r'\benv\s*=\s*"([A-Z0-9_]+)"', a)
                    if env:
                        field["env"] = env.group(1)
                        lit = re.search(r'\bdefault_value\s*=\s*"((?:[^"\\]|\\.)*)"', a)
                        other = re.search(r"\bdefault_value(_t)?\s*=", a)
                        field["default"] = lit.group(1) if lit else (True if other else None)
                        field["optional"] = ty.startswith(("Option<", "Vec<"))
                    fields.append(field)
                    attrs, i = [], j + 1
                    continue
                i += 1
            structs[(path, m.group(1))] = fields
    return structs


def service_settings(src_files):
    """{service: {VAR: field}} for status-api and processor, flattened structs resolved by name."""
    structs = rust_structs(src_files)
    by_name = {}
    for (path, name), fields in structs.items():
        by_name.setdefault(name, []).append(fields)
    roots = {"status-api": "status-api/src/config.rs", "processor": "processor/src/config.rs"}
    out = {}
    for service, suffix in roots.items():
        root = next((f for (p, n), f in structs.items() if p.endswith(suffix) and n == "Config"), None)
        if root is None:
            raise ValueError(f"no `pub struct Config` in a file ending {suffix} among the sources given")
        settings, todo = {}, list(root)
        while todo:
            f = todo.pop()
            if f["flatten"]:
                cands = by_name.get(f["flatten"], [])
                if len(cands) != 1:
                    raise ValueError(f"{service}: flattened struct {f['flatten']} found {len(cands)} times in the sources")
                todo.extend(cands[0])
            elif f["env"]:
                settings[f["env"]] = f
        out[service] = settings
    return out


def local_only_default(field, repo_root):
    """True when the code's default only makes sense on a developer's machine."""
    d = field["default"]
    if d is None:
        return True
    if d is True:
        return False
    return ("127.0.0.1" in d or "localhost" in d or d.startswith("local")
            or ("/" in d and not d.startswith("/") and os.path.isfile(os.path.join(repo_root, d))))


def dockerfile_env(path):
    """{stage: {VAR: value}}: each stage's ENV, inherited through `FROM <stage>`."""
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    stages, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            cur = m.group(2) or m.group(1)
            stages[cur] = dict(stages.get(m.group(1), {}))
            continue
        m = re.match(r"\s*ENV\s+(.*)", line, re.I)
        if m and cur:
            for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', m.group(1)):
                stages[cur][k] = v.strip('"')
    return stages


def image_target(image):
    """`registry.example.com/photo-pipeline/embed:0.1.0` -> embed."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


def k8s_workloads(docs, templates_path, docker_env):
    """One entry per container of a Deployment that runs one of our images: its environment
    ({VAR: (value, source)}), mounts and secrets, as Kubernetes would assemble them."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    import base64

    def secret_values(s):
        vals = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (s.get("data") or {}).items()}
        vals.update(s.get("stringData") or {})
        return vals

    secrets = {n: (secret_values(s), f"Secret {n}") for n, s in by_kind.get("Secret", {}).items()}
    templates = {}
    if templates_path and templates_path != "-":
        templates = {d["metadata"]["name"]: d for d in load_docs(templates_path) if d.get("kind") == "Secret"}
    for n, s in templates.items():
        if n not in secrets:  # created out of band (prod), with the template's keys
            secrets[n] = (secret_values(s), f"Secret {n} (external; keys as {templates_path})")
    configmaps = {n: (c.get("data") or {}, f"ConfigMap {n}") for n, c in by_kind.get("ConfigMap", {}).items()}
    out = []
    for name, dep in sorted(by_kind.get("Deployment", {}).items()):
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            target = image_target(c.get("image", ""))
            init = c in pod.get("initContainers", [])
            if target not in IMAGE_SERVICE and not init:
                continue
            env = {k: (v, f"image {target} (Dockerfile ENV)") for k, v in docker_env.get(target, {}).items()}
            notes = []
            for ef in c.get("envFrom", []):
                prefix = ef.get("prefix", "")
                ref = ef.get("configMapRef") or ef.get("secretRef")
                pool = configmaps if "configMapRef" in ef else secrets
                if ref["name"] not in pool:
                    notes.append(f"envFrom {ref['name']} is not in the render nor a known Secret template")
                    continue
                vals, src = pool[ref["name"]]
                env.update({prefix + k: (v, src) for k, v in vals.items()})
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = (str(e["value"]), "env")
                    continue
                vf = e.get("valueFrom", {})
                kref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                if kref:
                    pool = secrets if "secretKeyRef" in vf else configmaps
                    vals, src = pool.get(kref["name"], ({}, None))
                    if kref["key"] in vals:
                        env[e["name"]] = (vals[kref["key"]], f"{src}, key {kref['key']}")
                    elif not kref.get("optional"):
                        notes.append(f"{e['name']}: key {kref['key']} of {kref['name']} does not exist")
                elif vf:
                    env[e["name"]] = ("<from the pod>", "env valueFrom")
            mounts = []
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"], {})
                files = None
                if "secret" in v:
                    sname = v["secret"].get("secretName")
                    keys = list(secrets.get(sname, ({}, None))[0])
                    items = v["secret"].get("items")
                    files = [it["path"] for it in items if it["key"] in keys] if items else keys
                    if "subPath" in m:
                        files = [""] if m["subPath"] in files else []
                mounts.append((m["mountPath"], files, f"volume {m['name']}"))
            if init:
                # An init container of another image (the embed pod's model copy): every variable
                # its command line expands must be set, or it copies from the wrong place.
                script = " ".join(str(a) for a in c.get("command", []) + c.get("args", []))
                needs = sorted(set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", script)))
                out.append({"where": f"Deployment/{name} init container {c['name']}", "target": "init",
                            "env": env, "needs": needs, "notes": notes})
                continue
            out.append({"where": f"Deployment/{name} container {c['name']}", "target": target,
                        "env": env, "mounts": mounts, "notes": notes, "profiles": [], "entrypoint": ""})
    return out


def compose_interpolate(value):
    """What compose passes to a container with no variables set on the host: ${X:-d} -> d."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        op, default = m.group(2) or "", m.group(3) or ""
        if op.endswith("?"):
            return f"<${{{m.group(1)}}} from the host>"
        return default if op else ""
    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)", sub, str(value))


def compose_workloads(compose_path, docker_env):
    with open(compose_path) as f:
        doc = yaml.safe_load(f)
    out = []
    for name, svc in sorted(doc.get("services", {}).items()):
        build = svc.get("build") if isinstance(svc.get("build"), dict) else {}
        target = build.get("target") or image_target(svc.get("image", ""))
        if target not in IMAGE_SERVICE:
            continue
        env = {k: (v, f"image {target} (Dockerfile ENV)") for k, v in docker_env.get(target, {}).items()}
        raw = svc.get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
        env.update({k: (compose_interpolate("" if v is None else v), "environment") for k, v in raw.items()})
        mounts = []
        for v in svc.get("volumes", []):
            dst = v.split(":")[1] if isinstance(v, str) else v.get("target", "")
            mounts.append((dst, None, "volume"))
        tmpfs = svc.get("tmpfs") or []
        for t in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
            mounts.append((t.split(":")[0], "tmpfs", "tmpfs"))
        ep = svc.get("entrypoint") or ""
        out.append({"where": f"service {name}", "target": target, "env": env, "mounts": mounts, "notes": [],
                    "profiles": svc.get("profiles") or [], "entrypoint": " ".join(ep) if isinstance(ep, list) else ep})
    return out


def file_setting_errors(w, var, path):
    """The file a setting names must be provided: in a mounted Secret (k8s), or under a compose
    mount (a tmpfs only if the service's entrypoint writes the file)."""
    if not path.startswith("/"):
        return [f"{var}={path} is not an absolute path"]
    for mount_path, files, what in w["mounts"]:
        mp = mount_path.rstrip("/")
        if path != mp and not path.startswith(mp + "/"):
            continue
        rel = path[len(mp) + 1:]
        if files == "tmpfs":
            if var not in w["entrypoint"]:
                return [f"{var}={path} is on a tmpfs ({mp}) that nothing writes (the entrypoint does not name {var})"]
            return []
        if files is not None and rel not in files:
            return [f"{var}={path}: {what} at {mp} has no file {rel!r} (it has {sorted(files)})"]
        return []
    return [f"{var}={path} is not under any volume mounted into the container"]


def cmd_settings(label, kind, variant_file, dockerfile, templates, *src_files):
    """Every setting the code needs for production (REQUIRED) is set for each workload of one
    deployment variant: a rendered overlay (kind k8s) or docker-compose.yml (kind compose)."""
    errors = []
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        code = service_settings(src_files)
    except (OSError, ValueError) as e:
        return finish(label, [f"could not read the settings from the code: {e}"], "")
    # The lists above against the code: no stale names, every setting without a production
    # default classified.
    for service, settings in code.items():
        if not settings:
            errors.append(f"no `env = \"...\"` settings found for {service} in {', '.join(src_files)}")
        required = {r[2] for r in REQUIRED if r[0] == service}
        for var in sorted(required - set(settings)):
            errors.append(f"checks.py REQUIRED names {var} for {service}, which {service} does not read (renamed?)")
        for var, f in sorted(settings.items()):
            if var not in required and var not in OPTIONAL and local_only_default(f, repo_root):
                shown = "none" if f["default"] is None else repr(f["default"])
                errors.append(f"{service} reads {var} (code default: {shown}), which checks.py classifies neither "
                              f"as REQUIRED nor OPTIONAL: decide whether deployments must set it")
    read_anywhere = set().union(*code.values())
    for var in sorted(set(OPTIONAL) - read_anywhere):
        errors.append(f"checks.py OPTIONAL names {var}, which no service reads")

    docker_env = dockerfile_env(dockerfile)
    try:
        if kind == "k8s":
            workloads = k8s_workloads(load_docs(variant_file), templates, docker_env)
        elif kind == "compose":
            workloads = compose_workloads(variant_file, docker_env)
        else:
            return finish(label, [f"unknown kind {kind!r} (k8s or compose)"], "")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        return finish(label, [f"could not read {variant_file}: {e!r}"], "")
    if not workloads:
        errors.append(f"{variant_file}: no container runs a photo-pipeline image")

    variant = label.split(" ")[0]
    inits = [w for w in workloads if w["target"] == "init"]
    workloads = [w for w in workloads if w["target"] != "init"]
    for w in inits:
        errors += [f"{variant}: {w['where']}: {n}" for n in w["notes"]]
        for var in w["needs"]:
            if w["env"].get(var, ("", ""))[0] == "":
                errors.append(f"{variant}: {w['where']} expands ${var}, which its environment does not set")
    counts = {}
    for w in workloads:
        service = IMAGE_SERVICE[w["target"]]
        env = w["env"]
        stages_default = code.get("processor", {}).get("PROCESSOR_STAGES", {}).get("default")
        stages = set()
        if service == "processor":
            raw = env.get("PROCESSOR_STAGES", (stages_default if isinstance(stages_default, str) else "", ""))[0]
            stages = {s.strip() for s in raw.split(",") if s.strip()}
        w["service"], w["stages"] = service, stages
        who = f"{variant}: {w['where']} ({service}{' ' + ','.join(sorted(stages)) if stages else ''})"
        errors += [f"{who}: {n}" for n in w["notes"]]
        n = 0
        for req in REQUIRED:
            svc, need_stages, var, scope, why = req[:5]
            value = req[5] if len(req) > 5 else None
            if svc != service or (scope == "k8s" and kind != "k8s"):
                continue
            if need_stages and not stages & set(need_stages):
                continue
            n += 1
            got = env.get(var)
            if got is None or got[0] == "":
                errors.append(f"{who} does not set {var}: {why}")
            elif value is not None and got[0] != value:
                errors.append(f"{who} sets {var}={got[0]} ({got[1]}), must be {value}: {why}")
            elif var in FILE_SETTINGS:
                errors += [f"{who}: {e}" for e in file_setting_errors(w, var, got[0])]
        counts[w["where"]] = n

    # Without an embed stage, nothing deletes embed-input derivatives: a thumbnail stage must not
    # write them (the code's default hand-off for a process without embed is `derivative`), and
    # status-api must not wait for embeddings. For compose: the services started without a profile.
    default_set = [w for w in workloads if not w["profiles"]]
    runs_embed = any("embed" in w["stages"] for w in default_set)
    if not runs_embed:
        for w in default_set:
            if "thumbnail" in w["stages"] and w["env"].get("EMBED_HANDOFF", ("", ""))[0] != "none":
                errors.append(f"{variant}: {w['where']} runs the thumbnail stage with no embed stage in the variant but "
                              f"EMBED_HANDOFF={w['env'].get('EMBED_HANDOFF', ('unset (derivative)',))[0]}: each photo "
                              f"leaves a derivative PNG nobody deletes; set EMBED_HANDOFF=none")
            if w["service"] == "status-api" and w["env"].get("STATUS_EXPECT_EMBEDDINGS", ("true",))[0] != "false":
                errors.append(f"{variant}: {w['where']}: STATUS_EXPECT_EMBEDDINGS is not false but no embed stage runs: "
                              f"no batch would ever be done")
    classified = sum(1 for s, st in code.items() for v, f in st.items() if local_only_default(f, repo_root))
    summary = (f"{sum(counts.values())} required settings set across {len(workloads)} workloads"
               f" ({sum(len(w['needs']) for w in inits)} variables of {len(inits)} init containers); "
               f"{sum(len(s) for s in code.values())} settings read from the code, "
               f"{classified} of them (per binary) without a production default, all classified")
    return finish(label, errors, summary)


# ---------------------------------------------------------------------------------------------
# Prometheus Operator: alert rules and PodMonitors (k8s/monitoring)

RULE_WORDS = PROMQL_WORDS | {"unless", "deriv", "label_replace", "vector", "absent", "absent_over_time",
                             "sum_over_time", "max_over_time", "min_over_time", "avg_over_time", "changes",
                             "resets", "predict_linear", "histogram_quantile", "scalar", "bool", "group"}


def emitted_metrics(src_dirs):
    """{name: kind} of every metric the Rust sources emit with metrics::counter!/gauge!/histogram!."""
    found = {}
    for d in src_dirs:
        for root, _, files in os.walk(d):
            for n in files:
                if n.endswith(".rs"):
                    with open(os.path.join(root, n)) as f:
                        for kind, name in re.findall(r'metrics::(counter|gauge|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', f.read()):
                            found[name] = kind
    return found


def expr_metrics(expr):
    """Metric names an expression reads (identifiers left once strings, matchers, ranges,
    durations, grouping labels, functions and keywords are removed)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    grouping = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        grouping |= {x.strip() for x in m.group(1).split(",")}
    bare = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?[a-z]*\b", "", bare)
    return {i for i in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if i not in RULE_WORDS and i not in grouping}


def prometheus_rules(path):
    rules = [d for d in load_docs(path) if d.get("kind") == "PrometheusRule"]
    return [r for doc in rules for g in doc["spec"]["groups"] for r in g["rules"]]


def cmd_prometheus_rule(label, alerts_yaml, runbook_md, *src_dirs):
    try:
        rules = prometheus_rules(alerts_yaml)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        return finish(label, [f"cannot read the PrometheusRule: {e!r}"], "")
    errors = []
    emitted = emitted_metrics(src_dirs)
    if not emitted:
        errors.append(f"no metrics found in {', '.join(src_dirs)}")
    with open(runbook_md) as f:
        # GitHub's heading anchors: lower-case, punctuation dropped, spaces to hyphens.
        anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
                   for h in re.findall(r"^#+\s+(.*)$", f.read(), re.M)}
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = [r for r in rules if "alert" in r]
    if not alerts:
        errors.append("no alerts")
    used = set()
    for r in rules:
        what = r.get("alert") or r.get("record")
        for m in expr_metrics(str(r["expr"])):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            used.add(m)
            if m in recorded or m == "up" or emitted.get(m):
                continue
            if base != m and emitted.get(base) == "histogram":
                continue
            errors.append(f"{what}: metric {m} is not emitted by {', '.join(src_dirs)} (nor recorded here, nor `up`)")
        if "alert" not in r:
            continue
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            errors.append(f"{what}: label severity must be critical, warning or info")
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                errors.append(f"{what}: no {key} annotation")
        url = ann.get("runbook_url", "")
        doc, _, anchor = url.partition("#")
        if doc and os.path.normpath(doc) != os.path.normpath(runbook_md):
            errors.append(f"{what}: runbook_url {url} does not point into {runbook_md}")
        elif anchor not in anchors:
            errors.append(f"{what}: runbook_url anchor #{anchor} is no heading of {runbook_md}")
    return finish(label, errors, f"{len(alerts)} alerts, {len(recorded)} recorded series; metrics read: "
                  f"{', '.join(sorted(m for m in used if m not in recorded))}")


def cmd_podmonitors(label, monitoring_yaml, *renders):
    try:
        docs = load_docs(monitoring_yaml)
    except (OSError, yaml.YAMLError) as e:
        return finish(label, [str(e)], "")
    monitors = [d for d in docs if d.get("kind") == "PodMonitor"]
    errors = [] if monitors else [f"no PodMonitor in {monitoring_yaml}"]
    jobs = set()
    for pm in monitors:
        for ep in pm["spec"]["podMetricsEndpoints"]:
            for rl in ep.get("relabelings", []):
                if rl.get("targetLabel") == "job" and not rl.get("sourceLabels"):
                    jobs.add(rl.get("replacement"))
    # The jobs the rules select on (job="x", job=~"x|y") must be ones the PodMonitors set.
    for d in docs:
        if d.get("kind") != "PrometheusRule":
            continue
        for g in d["spec"]["groups"]:
            for r in g["rules"]:
                for op, val in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', str(r["expr"])):
                    for j in (val.split("|") if op == "=~" else [val]):
                        if j not in jobs:
                            errors.append(f"{r.get('alert') or r.get('record')}: selects job {j!r}, which no PodMonitor sets (they set {sorted(jobs)})")
    for render in renders:
        where = os.path.basename(render)
        deps = {d["metadata"]["name"]: d for d in load_docs(render) if d.get("kind") == "Deployment"}
        scraped = {n: [] for n in deps}
        for pm in monitors:
            name = pm["metadata"]["name"]
            sel = pm["spec"]["selector"].get("matchLabels", {})
            targets = [n for n, d in deps.items() if matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
            if not targets:
                errors.append(f"{where}: PodMonitor/{name} selector {sel} matches no Deployment's pods")
            for t in targets:
                scraped[t].append(name)
                ports = {p.get("name") for c in deps[t]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                for ep in pm["spec"]["podMetricsEndpoints"]:
                    if ep.get("port") not in ports:
                        errors.append(f"{where}: PodMonitor/{name} scrapes port {ep.get('port')!r}, not a named port of Deployment/{t} ({sorted(p for p in ports if p)})")
        for n, by in scraped.items():
            if len(by) != 1:
                errors.append(f"{where}: Deployment/{n} is scraped by {len(by)} PodMonitors {by}, not exactly one")
    return finish(label, errors, f"{len(monitors)} PodMonitors (jobs {', '.join(sorted(jobs))}) cover every "
                  f"Deployment of {len(renders)} renders")


def main(argv):
    cmds = {"k8s": cmd_k8s, "dashboard": cmd_dashboard, "grafana-provisioning": cmd_grafana_provisioning,
            "dockerfile": cmd_dockerfile, "compose-files": cmd_compose_files,
            "kafka-version": cmd_kafka_version, "kafka-topics": cmd_kafka_topics,
            "prometheus-rule": cmd_prometheus_rule, "podmonitors": cmd_podmonitors, "settings": cmd_settings}
    if len(argv) < 2 or argv[0] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
