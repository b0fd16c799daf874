"""A small fake Kubernetes API server for tests: enough of the real one for `tandem operator` (and kube-rs
clients in general) to list, watch, read, create, patch and delete objects, and to review tokens.

- Objects live in an in-memory store keyed by API path prefix (`/api/v1`, `/apis/<group>/<version>`), plural,
  namespace and name. Every write bumps one global resourceVersion and is appended to an event log, which
  watches (`?watch=true&resourceVersion=N`) replay from N and then follow: a chunked JSON stream of
  `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}` lines, kept open until `timeoutSeconds`, or until the
  server stops.
- Lists honour `labelSelector` (equality terms) and `fieldSelector` (`metadata.name`, `metadata.namespace`).
- PATCH understands server-side apply and JSON merge patches (both merged as a JSON merge patch; apply creates
  missing objects), on objects and on their `status` subresource.
- `POST /apis/authentication.k8s.io/v1/tokenreviews` authenticates the tokens registered with
  `add_token(...)` for the audiences given there.
- Every request is recorded (`requests`, `find_requests(...)`) so tests can assert what a client did;
  requests nothing here handles are answered 404 and listed in `unhandled`.
- Callers must send `Authorization: Bearer <token>` with the token of `kubeconfig(...)`; others get 401.

Test code changes the store with `apply(obj)` / `delete(...)`, which watchers see at once.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

# kind -> (API path prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Pod": ("/api/v1", "pods", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Event": ("/apis/events.k8s.io/v1", "events", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "Component": ("/apis/dapr.io/v1alpha1", "components", True),
    "Configuration": ("/apis/dapr.io/v1alpha1", "configurations", True),
    "HTTPEndpoint": ("/apis/dapr.io/v1alpha1", "httpendpoints", True),
    "Resiliency": ("/apis/dapr.io/v1alpha1", "resiliencies", True),
    "Subscription": ("/apis/dapr.io/v2alpha1", "subscriptions", True),
}
# (prefix, plural) -> (apiVersion, kind)
BY_PLURAL: dict[tuple[str, str], tuple[str, str]] = {
    (prefix, plural): (prefix.removeprefix("/api/").removeprefix("/apis/"), kind)
    for kind, (prefix, plural, _) in KINDS.items()
}
NAMESPACED: dict[tuple[str, str], bool] = {(p, pl): ns for _, (p, pl, ns) in KINDS.items()}

WATCH_MAX_SECONDS = 300


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in self.query.items())
        return f"{self.method} {self.path}{'?' + q if q else ''} -> {self.status}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes a key; lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def status_doc(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "reason": reason, "message": message, "code": code}


def selector_matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeApiServer:
    def __init__(self, token: str = "operator-token"):
        self.token = token
        self._lock = threading.Condition()
        self._rv = 100
        # (prefix, plural) -> {(namespace, name): object}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        # (prefix, plural) -> [(rv, type, object)]
        self._log: dict[tuple[str, str], list[tuple[int, str, dict]]] = {}
        self._tokens: dict[str, dict] = {}
        self.requests: list[Recorded] = []
        self.unhandled: list[Recorded] = []
        self._stopping = False
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ---------------------------------------------------------------------------------------------------
    # Lifecycle
    # ---------------------------------------------------------------------------------------------------

    def start(self) -> "FakeApiServer":
        api = self

        class Handler(_Handler):
            server_api = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Writes a kubeconfig (JSON is YAML) pointing at this server with its bearer token."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(doc, indent=2))
        return path

    # ---------------------------------------------------------------------------------------------------
    # Tokens
    # ---------------------------------------------------------------------------------------------------

    def add_token(self, token: str, username: str, audiences: list[str],
                  extra: Optional[dict[str, list[str]]] = None) -> None:
        """TokenReviews of `token` for one of `audiences` authenticate it as `username`."""
        with self._lock:
            self._tokens[token] = {"username": username, "audiences": audiences, "extra": extra or {}}

    def _review(self, body: dict) -> dict:
        spec = body.get("spec") or {}
        token, wanted = spec.get("token", ""), spec.get("audiences") or []
        with self._lock:
            known = self._tokens.get(token)
        out = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": spec}
        if known is None:
            out["status"] = {"authenticated": False, "error": "invalid bearer token"}
        elif wanted and not set(wanted) & set(known["audiences"]):
            out["status"] = {"authenticated": False, "error": "token audiences do not match"}
        else:
            user = {"username": known["username"], "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, known["username"])),
                    "groups": ["system:serviceaccounts", "system:authenticated"]}
            if known["extra"]:
                user["extra"] = known["extra"]
            out["status"] = {"authenticated": True, "user": user,
                             "audiences": [a for a in wanted if a in known["audiences"]] or known["audiences"]}
        return out

    # ---------------------------------------------------------------------------------------------------
    # The store, for test code
    # ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _type_of(obj: dict) -> tuple[str, str]:
        kind = obj["kind"]
        if kind not in KINDS:
            raise ValueError(f"fake API server does not know kind {kind}")
        prefix, plural, _ = KINDS[kind]
        return prefix, plural

    def apply(self, obj: dict) -> dict:
        """Creates or replaces `obj` (generation moves when anything but status/metadata changed)."""
        key = self._type_of(obj)
        meta = obj.get("metadata") or {}
        with self._lock:
            return self._put(key, meta.get("namespace", ""), meta["name"], copy.deepcopy(obj))

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        prefix, plural, _ = KINDS[kind]
        with self._lock:
            return self._remove((prefix, plural), namespace, name) is not None

    def get(self, kind: str, namespace: str, name: str) -> Optional[dict]:
        prefix, plural, _ = KINDS[kind]
        with self._lock:
            obj = self._objects.get((prefix, plural), {}).get((namespace, name))
            return copy.deepcopy(obj)

    def objects(self, kind: str, namespace: Optional[str] = None) -> list[dict]:
        prefix, plural, _ = KINDS[kind]
        with self._lock:
            return [copy.deepcopy(o) for (ns, _), o in sorted(self._objects.get((prefix, plural), {}).items())
                    if namespace is None or ns == namespace]

    def find_requests(self, method: Optional[str] = None, path_contains: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and path_contains in r.path]

    @staticmethod
    def secret(namespace: str, name: str, data: dict[str, str]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}

    # ---------------------------------------------------------------------------------------------------
    # Internals (called with self._lock held)
    # ---------------------------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _put(self, key: tuple[str, str], namespace: str, name: str, obj: dict) -> dict:
        api_version, kind = BY_PLURAL[key]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        store = self._objects.setdefault(key, {})
        old = store.get((namespace, name))
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if NAMESPACED[key]:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if old is None:
            meta["uid"] = meta.get("uid") or str(uuid.uuid4())
            meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            gen = old["metadata"].get("generation", 1)
            meta["generation"] = gen + 1 if strip(old) != strip(obj) else gen
        meta["resourceVersion"] = str(self._next_rv())
        store[(namespace, name)] = obj
        self._log.setdefault(key, []).append((self._rv, "ADDED" if old is None else "MODIFIED", copy.deepcopy(obj)))
        self._lock.notify_all()
        return copy.deepcopy(obj)

    def _remove(self, key: tuple[str, str], namespace: str, name: str) -> Optional[dict]:
        old = self._objects.get(key, {}).pop((namespace, name), None)
        if old is not None:
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(self._next_rv())
            self._log.setdefault(key, []).append((self._rv, "DELETED", old))
            self._lock.notify_all()
        return old

    def _list(self, key: tuple[str, str], namespace: Optional[str], q: dict[str, str]) -> list[dict]:
        items = []
        for (ns, name), obj in sorted(self._objects.get(key, {}).items()):
            if self._matches(obj, namespace, q):
                items.append(copy.deepcopy(obj))
        return items

    @staticmethod
    def _matches(obj: dict, namespace: Optional[str], q: dict[str, str]) -> bool:
        meta = obj.get("metadata") or {}
        if namespace and meta.get("namespace") != namespace:
            return False
        if q.get("labelSelector") and not selector_matches(meta.get("labels") or {}, q["labelSelector"]):
            return False
        for term in filter(None, (q.get("fieldSelector") or "").split(",")):
            k, _, v = term.partition("=")
            field_ = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(k.strip())
            if field_ != v.strip().lstrip("="):
                return False
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_api: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # --- plumbing -------------------------------------------------------------------------------------

    def _body(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def _send(self, code: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self._record.status = code
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, code: int, reason: str, message: str) -> None:
        self._send(code, status_doc(code, reason, message))

    def _handle(self, method: str) -> None:
        api = self.server_api
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        self._record = Recorded(method, parts.path, query, self.headers.get("Content-Type", ""), body)
        with api._lock:
            api.requests.append(self._record)
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            self._fail(401, "Unauthorized", "Unauthorized")
            return
        try:
            if not self._route(method, parts.path.rstrip("/"), query, body):
                with api._lock:
                    api.unhandled.append(self._record)
                self._fail(404, "NotFound", f"the fake API server does not serve {method} {parts.path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # --- routing ------------------------------------------------------------------------------------

    def _route(self, method: str, path: str, q: dict[str, str], body: Any) -> bool:
        api = self.server_api
        if path == "/version" and method == "GET":
            self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})
            return True
        segs = path.strip("/").split("/")
        if segs[:1] == ["api"] and len(segs) >= 2:
            prefix, rest = "/api/" + segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            prefix, rest = f"/apis/{segs[1]}/{segs[2]}", segs[3:]
        else:
            return False
        if prefix == "/apis/authentication.k8s.io/v1" and rest == ["tokenreviews"] and method == "POST":
            self._send(201, api._review(body or {}))
            return True
        namespace: Optional[str] = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return False
        key = (prefix, rest[0])
        if key not in BY_PLURAL:
            return False
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub not in (None, "status") or len(rest) > 3:
            return False
        ns = namespace or ""
        if name is None:
            if method == "GET" and q.get("watch") in ("true", "1"):
                self._watch(key, namespace, q)
                return True
            if method == "GET":
                with api._lock:
                    items, rv = api._list(key, namespace, q), api._rv
                api_version, kind = BY_PLURAL[key]
                self._send(200, {"apiVersion": api_version, "kind": kind + "List",
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})
                return True
            if method == "POST":
                obj = body if isinstance(body, dict) else {}
                meta = obj.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if not meta.get("name"):
                    self._fail(422, "Invalid", "metadata.name is required")
                    return True
                with api._lock:
                    if (ns, meta["name"]) in api._objects.get(key, {}):
                        self._fail(409, "AlreadyExists", f"{rest[0]} {meta['name']} already exists")
                        return True
                    created = api._put(key, ns, meta["name"], copy.deepcopy(obj))
                self._send(201, created)
                return True
            return False
        with api._lock:
            current = copy.deepcopy(api._objects.get(key, {}).get((ns, name)))
        if method == "GET":
            if current is None:
                self._fail(404, "NotFound", f'{rest[0]} "{name}" not found')
            else:
                self._send(200, current)
            return True
        if method == "DELETE":
            with api._lock:
                old = api._remove(key, ns, name)
            if old is None:
                self._fail(404, "NotFound", f'{rest[0]} "{name}" not found')
            else:
                self._send(200, old)
            return True
        if method == "PUT":
            obj = body if isinstance(body, dict) else {}
            if sub == "status":
                if current is None:
                    self._fail(404, "NotFound", f'{rest[0]} "{name}" not found')
                    return True
                current["status"] = obj.get("status")
                obj = current
            with api._lock:
                existed = (ns, name) in api._objects.get(key, {})
                want = (obj.get("metadata") or {}).get("resourceVersion")
                have = current and current["metadata"]["resourceVersion"]
                if existed and want and want != have:
                    self._fail(409, "Conflict", "the object has been modified; please apply your changes to the "
                                                "latest version and try again")
                    return True
                stored = api._put(key, ns, name, copy.deepcopy(obj))
            self._send(200 if existed else 201, stored)
            return True
        if method == "PATCH":
            patch = body if isinstance(body, dict) else {}
            ctype = self.headers.get("Content-Type", "")
            if "json-patch+json" in ctype:
                self._fail(415, "UnsupportedMediaType", "the fake API server does not implement JSON patches")
                return True
            is_apply = "apply-patch" in ctype
            if current is None and (sub == "status" or not is_apply):
                self._fail(404, "NotFound", f'{rest[0]} "{name}" not found')
                return True
            if sub == "status":
                merged = dict(current)
                merged["status"] = merge_patch(current.get("status"), patch.get("status") or {})
            else:
                patch = {k: v for k, v in patch.items() if k != "status"}
                merged = merge_patch(current or {}, patch)
            with api._lock:
                stored = api._put(key, ns, name, merged)
            self._send(201 if current is None else 200, stored)
            return True
        return False

    # --- watch --------------------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, key: tuple[str, str], namespace: Optional[str], q: dict[str, str]) -> None:
        api = self.server_api
        self._record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        timeout = min(float(q.get("timeoutSeconds") or WATCH_MAX_SECONDS), WATCH_MAX_SECONDS)
        deadline = time.monotonic() + timeout
        since_text = q.get("resourceVersion") or "0"
        pending: list[tuple[str, dict]] = []
        with api._lock:
            if since_text == "0":
                # "Any version": the current state as ADDED events, then changes.
                pending = [("ADDED", o) for o in api._list(key, namespace, q)]
                since = api._rv
            else:
                since = int(since_text)
        try:
            while True:
                for type_, obj in pending:
                    self._chunk(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
                pending = []
                with api._lock:
                    while True:
                        if api._stopping:
                            return
                        log = api._log.get(key, [])
                        news = [(rv, t, o) for rv, t, o in log if rv > since]
                        if news:
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        api._lock.wait(min(left, 1.0))
                    for rv, t, o in news:
                        since = rv
                        if api._matches(o, namespace, q):
                            pending.append((t, copy.deepcopy(o)))
                if not pending and time.monotonic() >= deadline:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            self.close_connection = True
