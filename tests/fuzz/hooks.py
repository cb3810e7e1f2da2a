"""Schemathesis 4.x hooks and checks for fuzzing Wisp's API (see README.md here).

Loaded by `st` through `SCHEMATHESIS_HOOKS=<path of this file>`; the checks are enabled by
name: `--checks not_a_server_error,ignored_auth,wisp_status_body,wisp_tenancy`.

Environment:
  WISP_FUZZ_TOKEN       the bearer token of the run (schemathesis.toml sends it)
  WISP_FUZZ_NAMESPACE   the run uses a token confined to this namespace: the checks then
                        enforce its confinement (unset: an admin run)
  WISP_FUZZ_NAMESPACES  existing namespaces to aim path parameters at
                        (default "default,team-a,team-b")
  WISP_FUZZ_NAMES       names of existing objects to aim `{name}` at (default "fuzz-probe")
  WISP_FUZZ_DIGESTS     digests of blobs other principals uploaded, to aim `{digest}` at
  WISP_FUZZ_UPLOADED    digests of blobs the run's principal uploaded before the run (the
                        tenancy check lets it read those; generated pods run the first)

Generated cases are steered (deterministically, by a hash of the generated case, so a seed
reproduces a run) towards places that exist: most of the time the path parameter
`namespace` becomes the fuzzed namespace, sometimes another existing one and sometimes
stays what the generator made; `{name}` sometimes becomes an object that exists; a blob
upload sometimes carries a body that matches its digest. Counts that make controllers
create objects (replicas, completions, parallelism, scaling) are clamped so that one
generated Deployment cannot ask for 2^31 pods on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import schemathesis

API = "/apis/wisp.dev/v1"

# The run's own token (the config file sends it): its id (the first 16 hex digits of its
# SHA-256) is kept out of DELETE /tokens/{id}, or an admin run would revoke itself early on
# and spend the rest of its time on 401s.
TOKEN = os.environ.get("WISP_FUZZ_TOKEN", "")
OWN_TOKEN_ID = hashlib.sha256(TOKEN.encode()).hexdigest()[:16] if TOKEN else ""
NAMESPACE = os.environ.get("WISP_FUZZ_NAMESPACE") or None
NAMESPACES = [n for n in os.environ.get("WISP_FUZZ_NAMESPACES", "default,team-a,team-b").split(",") if n]
OTHER_NAMESPACES = [n for n in NAMESPACES if n != NAMESPACE] or ["default"]
NAMES = [n for n in os.environ.get("WISP_FUZZ_NAMES", "fuzz-probe").split(",") if n]

# Blob bodies a run may upload: a PUT is sometimes rewritten to carry one of them under its
# own digest, so that uploads succeed and later reads of the same digest are meaningful.
BLOB_BODIES = [b"wisp-fuzz-blob-1\n", b"wisp-fuzz-blob-2\n"]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BLOB_DIGESTS = [sha256_digest(b) for b in BLOB_BODIES]
FOREIGN_DIGESTS = [d for d in os.environ.get("WISP_FUZZ_DIGESTS", "").split(",") if d]
# Blobs the run's principal uploaded before the run: pods and templates reference the first.
UPLOADED_BEFORE = [d.lower() for d in os.environ.get("WISP_FUZZ_UPLOADED", "").split(",") if d]
WASM_DIGEST = (UPLOADED_BEFORE or BLOB_DIGESTS)[0]

# Kinds a tenant may read but never write in its own namespace.
CONTROLLER_OR_ADMIN_OWNED = {"endpoints", "resourcequotas", "limitranges"}
# Where each kind keeps the pod spec whose nodeName a tenant may not set.
POD_SPEC_PATHS = {
    "pods": ("spec",),
    "replicasets": ("spec", "template", "spec"),
    "deployments": ("spec", "template", "spec"),
    "jobs": ("spec", "template", "spec"),
    "functions": ("spec", "template", "spec"),
}
# plural -> kind, for the envelope of steered bodies.
KINDS = {
    "namespaces": "Namespace",
    "nodes": "Node",
    "leases": "Lease",
    "pods": "Pod",
    "replicasets": "ReplicaSet",
    "deployments": "Deployment",
    "services": "Service",
    "endpoints": "Endpoints",
    "routes": "Route",
    "functions": "Function",
    "configmaps": "ConfigMap",
    "secrets": "Secret",
    "jobs": "Job",
    "resourcequotas": "ResourceQuota",
    "limitranges": "LimitRange",
}
# Counts that make controllers create objects, clamped to at most this.
MAX_COUNT = 2
COUNT_FIELDS = [
    ("spec", "replicas"),
    ("spec", "completions"),
    ("spec", "parallelism"),
    ("spec", "scaling", "minScale"),
    ("spec", "scaling", "maxScale"),
]


# --------------------------------------------------------------------------------------
# Steering generated cases


def _bucket(case: Any, salt: str) -> int:
    """A stable number in 0..99 drawn from the generated case (not from a process-salted
    hash, so a seed reproduces the run)."""
    b = case.body
    # Not repr() of anything else: schemathesis' NOT_SET would hash its memory address.
    body = repr(b) if b is None or isinstance(b, (bytes, str, int, float, bool, list, dict)) else ""
    key = "|".join(
        [salt, case.method, case.path, repr(sorted(case.path_parameters.items(), key=lambda kv: kv[0]))]
        + [repr(sorted((case.query or {}).items(), key=lambda kv: kv[0])), body]
    )
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "replace")).digest()[:4], "big") % 100


def _pick(bucket: int, weighted: list[tuple[int, Any]], default: Any) -> Any:
    """`weighted` is [(percent, value)]; past the sum of percents, `default`."""
    acc = 0
    for pct, value in weighted:
        acc += pct
        if bucket < acc:
            return value
    return default


def _namespace_choice(bucket: int, generated: Any) -> Any:
    if NAMESPACE:
        # Mostly its own namespace, sometimes another existing one, sometimes the generated
        # value: attempts outside are what the tenancy check is there for.
        others = [(20 // len(OTHER_NAMESPACES), n) for n in OTHER_NAMESPACES]
        return _pick(bucket, [(65, NAMESPACE)] + others, generated)
    share = 75 // len(NAMESPACES)
    return _pick(bucket, [(share, n) for n in NAMESPACES], generated)


def _get_path(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _clamp_counts(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    changed = False
    out = json.loads(json.dumps(body))  # a copy; bodies are JSON
    for path in COUNT_FIELDS:
        parent = _get_path(out, path[:-1])
        if isinstance(parent, dict):
            v = parent.get(path[-1])
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_COUNT:
                parent[path[-1]] = v % (MAX_COUNT + 1)
                changed = True
    return out if changed else body


def _clamp_watch(query: dict[str, Any]) -> dict[str, Any]:
    """A watch (`watch=true`) streams until `timeoutSeconds`: keep it to a second so that it
    does not hold a worker until the request timeout. Values the server must refuse (not a
    number) are kept."""
    if str(query.get("watch")) not in ("true", "1"):
        return query
    t = query.get("timeoutSeconds")
    if t is None or (isinstance(t, (int, str)) and re.fullmatch(r"\+?[0-9]+", str(t)) and int(str(t)) > 1):
        return {**query, "timeoutSeconds": "1"}
    return query


def _pod_spec() -> dict[str, Any]:
    return {"containers": [{"name": "main", "wasm": WASM_DIGEST}]}


def _skeleton(plural: str, ns: str) -> dict[str, Any]:
    """The smallest valid content of an object of this kind (beyond its envelope)."""
    labels = {"app": "fz"}
    template = {"metadata": {"labels": labels}, "spec": _pod_spec()}
    return {
        "pods": {"spec": _pod_spec()},
        "replicasets": {"spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}},
        "deployments": {"spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}},
        "jobs": {"spec": {"template": {"spec": {**_pod_spec(), "restartPolicy": "Never"}}}},
        "functions": {"spec": {"template": template, "scaling": {"maxScale": 1}}},
        "services": {"spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}},
        "routes": {"spec": {"host": f"fz.{ns}.localhost", "backends": [{"service": "fz", "port": 80}]}},
        "endpoints": {"subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 8080}]}]},
        "configmaps": {"data": {"k": "v"}},
        "secrets": {"stringData": {"k": "v"}},
        "leases": {"spec": {"holderIdentity": "fz", "leaseDurationSeconds": 10}},
        "resourcequotas": {"spec": {"hard": {"pods": "20"}}},
        "limitranges": {"spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}}]}},
    }.get(plural, {})


def _overlay(base: Any, extra: Any) -> Any:
    """`base` with the keys of `extra` it lacks, recursively: a valid core keeps its required
    fields while the generated optional ones are still sent."""
    if not isinstance(base, dict) or not isinstance(extra, dict):
        return base
    out = dict(base)
    for k, v in extra.items():
        out[k] = _overlay(out[k], v) if k in out else v
    return out


def _steer_body(case: Any, bucket: int) -> None:
    """Generated object bodies are almost always refused on their envelope (apiVersion, kind,
    metadata.name) before anything deeper is looked at: a third of them keep what was
    generated, a third get a right envelope, a third also a valid core under the generated
    optional fields."""
    if case.method.upper() not in ("POST", "PUT") or not isinstance(case.body, dict) or bucket < 34:
        return
    m = re.fullmatch(re.escape(API) + r"(?:/namespaces/\{namespace\})?/([a-z]+)(/\{name\})?(/status)?", case.path)
    if not m or m.group(1) not in KINDS:
        return
    plural = m.group(1)
    ns = case.path_parameters.get("namespace")
    body = json.loads(json.dumps(case.body))
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    if m.group(2):
        name = case.path_parameters.get("name")
    else:
        name = NAMES[0] if bucket % 5 == 0 and NAMES else f"fz-{bucket:02d}-{_bucket(case, 'n'):02d}"
    meta = {**meta, "name": name}
    if isinstance(ns, str):
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    meta.pop("resourceVersion", None)
    body.update({"apiVersion": "wisp.dev/v1", "kind": KINDS[plural], "metadata": meta})
    if bucket >= 67:
        for key, core in _skeleton(plural, ns if isinstance(ns, str) else "default").items():
            generated = body.get(key)
            body[key] = _overlay(core, generated) if isinstance(generated, dict) else core
    case.body = body


@schemathesis.hook
def map_case(ctx, case):
    params = case.path_parameters or {}
    new = dict(params)
    path = case.path
    if "namespace" in new:
        new["namespace"] = _namespace_choice(_bucket(case, "namespace"), new["namespace"])
    if "name" in new:
        b = _bucket(case, "name")
        if path.startswith(f"{API}/namespaces/{{name}}"):
            # The Namespace object itself.
            new["name"] = _namespace_choice(b, new["name"])
        elif NAMES:
            new["name"] = _pick(b, [(50 // len(NAMES), n) for n in NAMES], new["name"])
    if "digest" in new:
        known = BLOB_DIGESTS + FOREIGN_DIGESTS + UPLOADED_BEFORE
        new["digest"] = _pick(_bucket(case, "digest"), [(60 // len(known), d) for d in known], new["digest"])
    token_id = new.get("id")
    if path == f"{API}/tokens/{{id}}" and isinstance(token_id, str) and len(token_id) >= 8:
        if OWN_TOKEN_ID.startswith(token_id.lower()):
            new["id"] = "0" * 16
    if new != params:
        case.path_parameters = new
    if path == "/blobs/{digest}" and case.method.upper() == "PUT":
        b = _bucket(case, "blob-body")
        if b < 40:
            body = BLOB_BODIES[b % len(BLOB_BODIES)]
            case.body = body
            case.path_parameters = {**case.path_parameters, "digest": sha256_digest(body)}
    if isinstance(case.query, dict) and case.query:
        q = _clamp_watch(case.query)
        if q is not case.query:
            case.query = q
    _steer_body(case, _bucket(case, "body"))
    if case.method.upper() in ("POST", "PUT"):
        body = _clamp_counts(case.body)
        if body is not case.body:
            case.body = body
    return case


# --------------------------------------------------------------------------------------
# What the run saw (shared by the worker threads of this process)

_lock = threading.Lock()
_uploaded: set[str] = set(UPLOADED_BEFORE)  # digests this principal uploaded (a PUT with a 2xx)


def _request_path(response) -> tuple[str, str]:
    """(method, path) of the request as sent; the path stays percent-encoded."""
    req = response.request
    return (req.method or "").upper(), urlsplit(req.url).path


def _segments(path: str) -> list[str]:
    """Decoded segments after the leading slash ('/a/b%2Fc' -> ['a', 'b/c'])."""
    return [unquote(s) for s in path.split("/")[1:]]


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """A blob PUT whose body matches its digest counts as this principal's upload from the
    moment it is sent: another worker may read the blob before `after_call` runs. (Digests of
    other principals' blobs are never sent with their content, so this hides no leak.)"""
    if case.method.upper() != "PUT" or case.path != "/blobs/{digest}":
        return
    body = case.body.encode() if isinstance(case.body, str) else case.body
    digest = str(case.path_parameters.get("digest", "")).lower()
    if isinstance(body, bytes) and sha256_digest(body) == digest:
        with _lock:
            _uploaded.add(digest)


@schemathesis.hook
def after_call(ctx, case, response):
    method, path = _request_path(response)
    segs = _segments(path)
    if method == "PUT" and len(segs) == 2 and segs[0] == "blobs" and 200 <= response.status_code < 300:
        with _lock:
            _uploaded.add(segs[1].lower())


# --------------------------------------------------------------------------------------
# Checks


@schemathesis.check
def wisp_status_body(ctx, response, case):
    """Every 4xx answer carries a Kubernetes-style Status: a JSON object with kind "Status",
    a non-empty message and `code` equal to the HTTP status."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    method, path = _request_path(response)
    if method == "HEAD":
        return None  # no body by definition
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        snippet = response.content[:200].decode("utf-8", "replace")
        raise AssertionError(f"{status} on {method} {path} without a JSON Status body: {snippet!r}") from None
    problems = []
    if not isinstance(body, dict):
        raise AssertionError(f"{status} on {method} {path}: the body is not a JSON object but {type(body).__name__}")
    if body.get("kind") != "Status":
        problems.append(f"kind is {body.get('kind')!r}, not 'Status'")
    msg = body.get("message")
    if not isinstance(msg, str) or not msg.strip():
        problems.append(f"message is {msg!r}, not a non-empty string")
    if body.get("code") != status:
        problems.append(f"code is {body.get('code')!r}, not {status}")
    if problems:
        raise AssertionError(f"{status} on {method} {path}: Status body wrong: " + "; ".join(problems))
    return None


def _foreign_namespaces(body: bytes) -> set[str]:
    """Namespaces of objects in a 2xx body (one object, a list's items, or watch events),
    other than the fuzzed one."""
    docs: list[Any] = []
    try:
        docs.append(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        for line in body.splitlines():  # a watch: one JSON event a line
            try:
                docs.append(json.loads(line))
            except (ValueError, UnicodeDecodeError):
                continue
    objects: list[Any] = []
    for d in docs:
        if not isinstance(d, dict):
            continue
        if isinstance(d.get("items"), list):
            objects.extend(d["items"])
        elif "object" in d and "type" in d:
            objects.append(d["object"])
        else:
            objects.append(d)
    found = set()
    for o in objects:
        ns = _get_path(o, ("metadata", "namespace"))
        if isinstance(ns, str) and ns and ns != NAMESPACE:
            found.add(ns)
    return found


def _tenancy_violation(method: str, path: str, case) -> str | None:
    """Why a 2xx to this request breaks the confinement of a NAMESPACE token, or None."""
    segs = _segments(path)
    if segs[:1] == ["blobs"]:
        if method in ("GET", "HEAD"):
            digest = segs[1].lower() if len(segs) > 1 else ""
            with _lock:
                ok = digest in _uploaded
            if not ok:
                return f"read blob {digest!r}, which this namespace did not upload in this run"
        return None
    if segs[:3] != ["apis", "wisp.dev", "v1"]:
        return None
    rest = segs[3:]
    if rest == ["whoami"] and method == "GET":
        return None
    if rest[:1] == ["tokens"]:
        return "touched tokens (admin only)"
    if rest[:1] != ["namespaces"] or len(rest) < 2:
        return "reached a cluster-scoped path or a list across namespaces"
    if rest[1] != NAMESPACE:
        return f"reached namespace {rest[1]!r}"
    if len(rest) == 2 or (len(rest) == 3 and rest[2] == "status"):
        return None if method == "GET" else "wrote its own Namespace object (cluster-scoped)"
    plural = rest[2]
    if method not in ("GET", "HEAD"):
        if len(rest) >= 5 and rest[4] == "status":
            return f"wrote {plural}/status (the control plane and nodes write status)"
        if plural in CONTROLLER_OR_ADMIN_OWNED:
            return f"wrote {plural} (controller- or admin-owned)"
        if method == "POST" and plural in POD_SPEC_PATHS and isinstance(case.body, dict):
            spec = _get_path(case.body, POD_SPEC_PATHS[plural])
            if isinstance(spec, dict) and spec.get("nodeName") is not None:
                return f"created {plural} with {'.'.join(POD_SPEC_PATHS[plural])}.nodeName set"
        if method in ("POST", "PUT") and plural in POD_SPEC_PATHS and isinstance(case.body, dict):
            spec = _get_path(case.body, POD_SPEC_PATHS[plural])
            containers = spec.get("containers") if isinstance(spec, dict) else None
            for c in containers if isinstance(containers, list) else []:
                wasm = c.get("wasm") if isinstance(c, dict) else None
                if isinstance(wasm, str) and wasm.lower().startswith("sha256:"):
                    with _lock:
                        ok = wasm.lower() in _uploaded
                    if not ok:
                        return f"referenced blob {wasm!r}, which this namespace did not upload in this run"
    return None


@schemathesis.check
def wisp_tenancy(ctx, response, case):
    """With a namespace token (WISP_FUZZ_NAMESPACE): no 2xx outside its namespace, on
    tokens, on cluster-scoped kinds (but a GET of its own Namespace and of /whoami), on
    status or controller/admin-owned writes, on blobs it did not upload; and no object of
    another namespace in any 2xx body. Does nothing in an admin run."""
    if not NAMESPACE or not 200 <= response.status_code < 300:
        return None
    method, path = _request_path(response)
    why = _tenancy_violation(method, path, case)
    if why:
        raise AssertionError(
            f"a token of namespace {NAMESPACE!r} got {response.status_code} on {method} {path}: it {why}"
        )
    if path.startswith("/blobs/"):
        return None
    leaked = _foreign_namespaces(response.content)
    if leaked:
        raise AssertionError(
            f"a token of namespace {NAMESPACE!r} got objects of namespace(s) {sorted(leaked)} "
            f"from {method} {path}"
        )
    return None
