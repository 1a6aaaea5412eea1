"""A small, in-memory server speaking the Hugging Face Hub's HTTP protocol, for tests.

It answers what ``huggingface_hub`` (and ``transformers`` through it) needs to create repos, commit
files (``upload_file``, ``upload_folder``, ``push_to_hub``) and download them again
(``hf_hub_download``, ``snapshot_download``, ``from_pretrained``), on 127.0.0.1 only, with
git-like history: every commit gets a 40-hex sha, branches point at commits, and files resolve by
branch name or commit sha.

Every file is announced as ``"regular"`` in the pre-upload answer, so the client sends it base64
inside the commit and never needs xet or LFS.

Usage in a test module::

    from hub_server import hub_endpoint  # noqa: F401  (pytest finds the fixture by name)

    def test_push(hub_endpoint):
        api = hub_endpoint.api            # an HfApi pointed at the server, with the dummy token
        ...

The ``hub_endpoint`` fixture points ``huggingface_hub`` (and the copies of its settings that other
modules took at import time) at the server, uses a temporary cache, turns xet and telemetry off,
sets a dummy token, and puts everything back at teardown.  ``hub_endpoint.env`` holds the
environment variables that point a child process at the server.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


__all__ = ["HubServer", "HubStore", "HubError", "hub_endpoint", "git_blob_sha1"]

DUMMY_TOKEN = "hf_dummy_token_for_local_hub_server"
DEFAULT_USER = "user"

#: Largest request body the server reads (bytes); larger requests get 413.
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Upper bound on the bytes all stored blobs may take together.
MAX_STORED_BYTES = 1024 * 1024 * 1024
#: Upper bound on the number of repos.
MAX_REPOS = 1000
#: Seconds an idle connection is kept before the server closes it.
CONNECTION_TIMEOUT_S = 30
#: Connections served at once (one thread each); more are closed at once.
MAX_CONNECTIONS = 64

# "models" -> "model", and the prefix a repo type takes in web/resolve URLs.
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REPO_SUBRESOURCES = {
    "revision",
    "tree",
    "preupload",
    "commit",
    "paths-info",
    "refs",
    "commits",
    "branch",
}


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob holding ``data`` (what ``git hash-object`` prints)."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answer: status, X-Error-Code and a message (sent as X-Error-Message and JSON)."""

    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.body = body


def _repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


# --------------------------------------------------------------------------------------------- store


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, str]  # path -> blob id (git sha1)
    title: str
    description: str
    timestamp: float


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: float
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    pr_count: int = 0


class HubStore:
    """Repos, commits and blobs, in memory, behind one lock."""

    def __init__(self, max_stored_bytes: int = MAX_STORED_BYTES, max_repos: int = MAX_REPOS):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.stored_bytes = 0
        self.max_stored_bytes = max_stored_bytes
        self.max_repos = max_repos
        self._counter = itertools.count()

    # -- helpers
    def _put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        if oid not in self.blobs:
            if self.stored_bytes + len(data) > self.max_stored_bytes:
                raise HubError(413, "Storage limit of the test hub server reached")
            self.blobs[oid] = data
            self.stored_bytes += len(data)
        return oid

    def _new_commit_sha(self, repo: Repo, parent: str | None, files: dict[str, str], title: str) -> str:
        material = json.dumps(
            [repo.repo_type, repo.repo_id, parent, sorted(files.items()), title, next(self._counter), time.time()]
        )
        return hashlib.sha1(material.encode()).hexdigest()

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_id)
        return repo

    @staticmethod
    def resolve(repo: Repo, revision: str) -> Commit:
        """Branch name or full commit sha -> commit; RevisionNotFound otherwise."""
        sha = repo.branches.get(revision)
        if sha is None and _SHA_RE.match(revision) and revision in repo.commits:
            sha = revision
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    # -- operations
    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> tuple[Repo, bool]:
        """Create a repo with an initial commit holding ``.gitattributes``; returns (repo, created)."""
        with self.lock:
            existing = self.repos.get((repo_type, repo_id))
            if existing is not None:
                return existing, False
            if len(self.repos) >= self.max_repos:
                raise HubError(413, "Repo limit of the test hub server reached")
            now = time.time()
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created=now)
            files = {".gitattributes": self._put_blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")}
            sha = self._new_commit_sha(repo, None, files, "initial commit")
            repo.commits[sha] = Commit(sha, None, files, "initial commit", "", now)
            repo.branches["main"] = sha
            self.repos[(repo_type, repo_id)] = repo
            return repo, True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_id)

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        operations: list[tuple[str, str, bytes | None]],
        title: str,
        description: str = "",
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[Commit, str, int | None]:
        """Apply ``operations`` (kind, path, data) on top of ``revision``; returns (commit, branch, pr number)."""
        with self.lock:
            repo = self.get_repo(repo_type, repo_id)
            base = self.resolve(repo, parent_commit if (create_pr and parent_commit) else revision)
            if create_pr:
                repo.pr_count += 1
                pr_num = repo.pr_count
                branch = f"refs/pr/{pr_num}"
            else:
                pr_num = None
                if revision not in repo.branches:
                    raise HubError(400, f"Can only commit on a branch, not on '{revision}'", "RevisionNotFound")
                branch = revision
                if parent_commit is not None and parent_commit != base.sha:
                    raise HubError(412, f"Parent commit {parent_commit} is not the head of '{revision}' ({base.sha})")
            files = dict(base.files)
            for kind, path, data in operations:
                if kind == "file":
                    files[path] = self._put_blob(data or b"")
                elif kind == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif kind == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:  # pragma: no cover - filtered by the handler
                    raise HubError(400, f"Unsupported operation {kind}")
            sha = self._new_commit_sha(repo, base.sha, files, title)
            repo.commits[sha] = Commit(sha, base.sha, files, title, description, time.time())
            repo.branches[branch] = sha
            return repo.commits[sha], branch, pr_num

    def files_at(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of ``repo_id`` at ``revision``, as ``{path: bytes}``."""
        with self.lock:
            commit = self.resolve(self.get_repo(repo_type, repo_id), revision)
            return {p: self.blobs[oid] for p, oid in commit.files.items()}


# -------------------------------------------------------------------------------------------- handler


def _tree_entries(commit: Commit, blobs: dict[str, bytes], path: str, recursive: bool) -> list[dict[str, Any]]:
    """Files and folders below ``path`` (all levels if ``recursive``), Hub ``tree`` style."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    files: list[dict[str, Any]] = []
    folders: dict[str, list[str]] = {}
    for p, oid in sorted(commit.files.items()):
        if not p.startswith(prefix):
            continue
        rest = p[len(prefix) :]
        parts = rest.split("/")
        # every folder between `prefix` and the file
        for depth in range(1, len(parts)):
            if not recursive and depth > 1:
                break
            folders.setdefault(prefix + "/".join(parts[:depth]), []).append(oid)
        if recursive or len(parts) == 1:
            files.append({"type": "file", "oid": oid, "size": len(blobs[oid]), "path": p})
    entries = [
        {"type": "directory", "oid": hashlib.sha1("".join(oids).encode()).hexdigest(), "path": folder}
        for folder, oids in sorted(folders.items())
    ]
    return entries + files


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/0.1"
    timeout = CONNECTION_TIMEOUT_S
    server: _HubHTTPServer

    # quiet by default; requests are recorded on the server instead
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # ---------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise HubError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(16)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise HubError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.replace("\n", " ")[:500]}
        if err.code:
            headers["X-Error-Code"] = err.code
        body = dict(err.body or {})
        body.setdefault("error", err.message)
        self._json(body, status=err.status, headers=headers)

    def _dispatch(self, method: str) -> None:
        self._status = 0
        store = self.server.store
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        raw_parts = [p for p in split.path.split("/") if p != ""]
        known = True
        try:
            body = self._read_body()  # always drain it, so a kept-alive connection stays in step
            known = self._route(method, raw_parts, query, body, store)
            if not known:
                raise HubError(404, f"Not found: {method} {split.path}")
        except HubError as err:
            self._error(err)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            self._error(HubError(400, f"Bad request: {err!r}"))
        except Exception as err:  # pragma: no cover - keep the server alive, report the bug
            self.server.errors.append(repr(err))
            self._error(HubError(500, f"Internal error: {err!r}"))
        finally:
            self.server.record(method, self.path, self._status, known)

    def _has_token(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _require_token(self) -> None:
        if not self._has_token():
            raise HubError(401, "You must be authenticated to do this (no token sent)")

    # ---------------------------------------------------------------- routes
    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes, store: HubStore) -> bool:
        if not parts:
            return False
        if parts[0] == "api":
            return self._route_api(method, parts[1:], query, body, store)
        # /{ns}/{name}/resolve/{rev}/{path...}, /datasets/{ns}/{name}/resolve/...
        repo_type = "model"
        if parts[0] in ("datasets", "spaces") and len(parts) >= 6 and parts[3] == "resolve":
            repo_type = _API_TYPES[parts[0]]
            parts = parts[1:]
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            revision = unquote(parts[3])
            path = unquote("/".join(parts[4:]))
            self._resolve(store, repo_type, repo_id, revision, path)
            return True
        return False

    def _route_api(self, method: str, parts: list[str], query: dict, body: bytes, store: HubStore) -> bool:
        head = parts[0] if parts else ""
        if head == "whoami-v2" and method == "GET":
            if not self._has_token():
                raise HubError(401, "Invalid credentials in Authorization header")
            self._json(
                {
                    "type": "user",
                    "id": "0" * 24,
                    "name": DEFAULT_USER,
                    "fullname": "Local Test User",
                    "email": None,
                    "emailVerified": False,
                    "isPro": False,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "dummy", "role": "write"}},
                }
            )
            return True
        if head == "validate-yaml" and method == "POST":
            self._json({"errors": [], "warnings": []})
            return True
        if head == "repos" and len(parts) == 2 and parts[1] in ("create", "delete"):
            self._require_token()
            payload = json.loads(body or b"{}")
            name = payload["name"]
            org = payload.get("organization") or DEFAULT_USER
            repo_type = payload.get("type") or "model"
            if repo_type not in _URL_PREFIX:
                raise HubError(400, f"Invalid repo type {repo_type!r}")
            repo_id = f"{org}/{name}"
            if method == "DELETE" and parts[1] == "delete":
                store.delete_repo(repo_type, repo_id)
                self._send(200, b"", content_type="text/plain")
                return True
            if method != "POST" or parts[1] != "create":
                return False
            if not (_NAME_RE.match(name) and _NAME_RE.match(org)):
                raise HubError(400, f"Invalid repo name {repo_id!r}")
            url = f"{self.server.base_url}/{_URL_PREFIX[repo_type]}{repo_id}"
            _, created = store.create_repo(repo_type, repo_id, private=bool(payload.get("private")))
            if not created:
                raise HubError(409, "You already created this repo", body={"url": url})
            self._json({"url": url, "name": repo_id, "id": repo_id})
            return True
        if head in _API_TYPES and len(parts) >= 3:
            repo_type = _API_TYPES[head]
            repo_id = f"{unquote(parts[1])}/{unquote(parts[2])}"
            rest = parts[3:]
            return self._route_repo_api(method, repo_type, repo_id, rest, query, body, store)
        return False

    def _route_repo_api(
        self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes, store: HubStore
    ) -> bool:
        sub = rest[0] if rest else ""
        if rest and sub not in _REPO_SUBRESOURCES:
            return False
        with store.lock:
            repo = store.get_repo(repo_type, repo_id)
            # --- repo info
            if method == "GET" and (not rest or (sub == "revision" and len(rest) >= 2)):
                revision = unquote("/".join(rest[1:])) if rest else "main"
                commit = store.resolve(repo, revision)
                self._json(self._repo_info(repo, commit, store))
                return True
            # --- tree listing
            if method == "GET" and sub == "tree" and len(rest) >= 2:
                commit = store.resolve(repo, unquote(rest[1]))
                path = unquote("/".join(rest[2:]))
                recursive = query.get("recursive", "").lower() in ("1", "true", "yes")
                entries = _tree_entries(commit, store.blobs, path, recursive)
                if path and not entries and path not in commit.files:
                    raise HubError(404, f"Path not found: {path}", "EntryNotFound")
                self._json(entries)
                return True
            # --- paths-info
            if method == "POST" and sub == "paths-info" and len(rest) >= 2:
                commit = store.resolve(repo, unquote(rest[1]))
                wanted = self._form_or_json_paths(body)
                result = []
                for p in wanted:
                    p = p.strip("/")
                    if p in commit.files:
                        oid = commit.files[p]
                        result.append({"type": "file", "oid": oid, "size": len(store.blobs[oid]), "path": p})
                    elif any(f.startswith(p + "/") for f in commit.files):
                        result.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "path": p})
                self._json(result)
                return True
            # --- refs / commits
            if method == "GET" and sub == "refs":
                branches = [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                    for n, s in sorted(repo.branches.items())
                    if not n.startswith("refs/")
                ]
                self._json({"branches": branches, "tags": [], "converts": []})
                return True
            if method == "GET" and sub == "commits" and len(rest) >= 2:
                commit = store.resolve(repo, unquote(rest[1]))
                history = []
                while commit is not None:
                    history.append(
                        {
                            "id": commit.sha,
                            "title": commit.title,
                            "message": commit.description,
                            "authors": [{"user": DEFAULT_USER}],
                            "date": _iso(commit.timestamp),
                        }
                    )
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                self._json(history)
                return True
            if sub == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
                self._require_token()
                name = unquote("/".join(rest[1:]))
                if method == "DELETE":
                    if name not in repo.branches or name == "main":
                        raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                    del repo.branches[name]
                    self._json({})
                    return True
                if name in repo.branches:
                    if json.loads(body or b"{}").get("exist_ok") is True:
                        self._json({})
                        return True
                    raise HubError(409, f"Reference already exists: {name}")
                start = json.loads(body or b"{}").get("startingPoint") or "main"
                repo.branches[name] = store.resolve(repo, start).sha
                self._json({})
                return True
        # --- uploads (outside the read lock's early returns, but they lock the store themselves)
        if method == "POST" and sub == "preupload" and len(rest) >= 2:
            self._require_token()
            with store.lock:
                repo = store.get_repo(repo_type, repo_id)
                revision = unquote(rest[1])
                commit = store.resolve(repo, revision) if revision in repo.branches else None
                payload = json.loads(body or b"{}")
                files = []
                for f in payload.get("files", []):
                    path = f["path"]
                    entry: dict[str, Any] = {"path": path, "uploadMode": "regular", "shouldIgnore": False}
                    if commit is not None and path in commit.files:
                        entry["oid"] = commit.files[path]
                    files.append(entry)
            self._json({"files": files, "commitOid": commit.sha if commit else None})
            return True
        if method == "POST" and sub == "commit" and len(rest) >= 2:
            self._require_token()
            self._commit(store, repo_type, repo_id, unquote(rest[1]), query, body)
            return True
        return False

    @staticmethod
    def _form_or_json_paths(body: bytes) -> list[str]:
        text = body.decode("utf-8")
        if text.lstrip().startswith("{"):
            paths = json.loads(text).get("paths", [])
            return [paths] if isinstance(paths, str) else list(paths)
        return parse_qs(text, keep_blank_values=True).get("paths", [])

    def _repo_info(self, repo: Repo, commit: Commit, store: HubStore) -> dict[str, Any]:
        siblings = [
            {"rfilename": p, "size": len(store.blobs[oid]), "blobId": oid} for p, oid in sorted(commit.files.items())
        ]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": _iso(commit.timestamp),
            "createdAt": _iso(repo.created),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }

    def _commit(self, store: HubStore, repo_type: str, repo_id: str, revision: str, query: dict, body: bytes) -> None:
        header: dict[str, Any] | None = None
        operations: list[tuple[str, str, bytes | None]] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                operations.append(("file", value["path"].strip("/"), base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append((key, value["path"].strip("/"), None))
            elif key == "lfsFile":
                raise HubError(400, "This test hub server takes no LFS files (every file is 'regular')")
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        if header is None:
            raise HubError(400, "Commit payload has no header")
        create_pr = query.get("create_pr", "").lower() in ("1", "true")
        commit, _branch, pr_num = store.commit(
            repo_type,
            repo_id,
            revision,
            operations,
            title=header.get("summary") or "commit",
            description=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
            create_pr=create_pr,
        )
        base = f"{self.server.base_url}/{_URL_PREFIX[repo_type]}{repo_id}"
        self._json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{base}/commit/{commit.sha}",
                "pullRequestUrl": f"{base}/discussions/{pr_num}" if pr_num is not None else None,
                "hookOutput": "",
            }
        )

    def _resolve(self, store: HubStore, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with store.lock:
            repo = store.get_repo(repo_type, repo_id)
            commit = store.resolve(repo, revision)
            oid = commit.files.get(path)
            if oid is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data = store.blobs[oid]
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-cache",
        }
        status = 200
        rng = self.headers.get("Range")
        if rng:
            span = self._parse_range(rng, len(data))
            if span is None:
                headers["Content-Range"] = f"bytes */{len(data)}"
                self._send(416, b"", content_type="application/octet-stream", headers=headers)
                return
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        self._send(status, data, content_type="application/octet-stream", headers=headers)

    @staticmethod
    def _parse_range(value: str, size: int) -> tuple[int, int] | None:
        """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range -> (start, end) inclusive, None if unsatisfiable."""
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return None
        if m.group(1) == "":
            n = int(m.group(2))
            if n == 0:
                return None
            return max(0, size - n), size - 1
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        end = min(end, size - 1)
        if start >= size or start > end:
            return None
        return start, end


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: HubStore):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.store = store
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str, int]] = []
        self.unknown: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._log_lock = threading.Lock()
        self._open: set = set()

    def process_request(self, request, client_address):  # type: ignore[override]
        with self._log_lock:
            full = len(self._open) >= MAX_CONNECTIONS
            if not full:
                self._open.add(request)
        if full:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):  # type: ignore[override]
        # A client that hangs up (or a connection shut at stop) is no server bug; anything else is recorded.
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            self.errors.append(repr(exc))

    def shutdown_request(self, request):  # type: ignore[override]
        with self._log_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Shut down keep-alive connections still open, so their handler threads end now."""
        with self._log_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def record(self, method: str, path: str, status: int, known: bool) -> None:
        with self._log_lock:
            if len(self.requests) < 10_000:
                self.requests.append((method, path, status))
            if not known and len(self.unknown) < 1_000:
                self.unknown.append((method, path))


class HubServer:
    """The server, started in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, store: HubStore | None = None):
        self.store = store or HubStore()
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._httpd = _HubHTTPServer(self.store)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="local-hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_open_connections()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return self._httpd.base_url

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request answered so far."""
        return self._httpd.requests if self._httpd else []

    @property
    def unknown_requests(self) -> list[tuple[str, str]]:
        """(method, path) of requests no route matched (answered 404)."""
        return self._httpd.unknown if self._httpd else []

    @property
    def errors(self) -> list[str]:
        """Unexpected exceptions raised while answering (answered 500)."""
        return self._httpd.errors if self._httpd else []


# -------------------------------------------------------------------------------------------- fixture


class HubEndpoint:
    """What the ``hub_endpoint`` fixture yields."""

    def __init__(self, server: HubServer, cache_dir: str, home_dir: str):
        self.server = server
        self.store = server.store
        self.url = server.url
        self.token = DUMMY_TOKEN
        self.user = DEFAULT_USER
        self.cache_dir = cache_dir
        self.home_dir = home_dir
        #: environment variables that point a child process at this server
        self.env = {
            "HF_ENDPOINT": self.url,
            "HF_HUB_CACHE": cache_dir,
            "HF_HOME": home_dir,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_TOKEN": DUMMY_TOKEN,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    @property
    def api(self):
        """A fresh ``HfApi`` pointed at the server, with the dummy token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url, token=self.token)

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with :attr:`env` on top, for ``subprocess.run(env=...)``."""
        env = dict(os.environ if base is None else base)
        for key in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING"):
            env.pop(key, None)
        env.update(self.env)
        return env

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision, straight from the server's store."""
        return self.store.files_at(repo_type, repo_id, revision)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        """The commit sha ``branch`` points at."""
        with self.store.lock:
            return self.store.get_repo(repo_type, repo_id).branches[branch]

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit shas of the repo, oldest first."""
        with self.store.lock:
            repo = self.store.get_repo(repo_type, repo_id)
            return list(repo.commits)  # insertion order: the order they were made

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return self.server.requests

    @property
    def unknown_requests(self) -> list[tuple[str, str]]:
        return self.server.unknown_requests

    @property
    def errors(self) -> list[str]:
        return self.server.errors


def _patch_hub_settings(monkeypatch: pytest.MonkeyPatch, endpoint: HubEndpoint) -> None:
    """Point huggingface_hub/transformers of this process at ``endpoint``; ``monkeypatch`` undoes it all."""
    from huggingface_hub import constants

    url = endpoint.url
    for key in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(key, raising=False)
    for key, value in endpoint.env.items():
        monkeypatch.setenv(key, value)

    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", endpoint.cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if hasattr(constants, "HF_URL_HOSTS"):
        monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}))
    if hasattr(constants, "AGENT_HARNESSES_PATH"):
        monkeypatch.setattr(
            constants, "AGENT_HARNESSES_PATH", os.path.join(endpoint.home_dir, ".agent_harnesses.json")
        )

    # Copies bound at import time (``from ..constants import ENDPOINT`` and the like).
    import importlib

    for mod_name, attrs in {
        "huggingface_hub.utils._git_credential": {"ENDPOINT": url},
        "huggingface_hub.cli.auth": {"ENDPOINT": url},
        "huggingface_hub.utils._cache_manager": {"HF_HUB_CACHE": endpoint.cache_dir},
        "huggingface_hub": {"HUGGINGFACE_CO_URL_TEMPLATE": template},
    }.items():
        try:
            mod = importlib.import_module(mod_name)
        except Exception:  # module missing in this version: nothing to patch
            continue
        for attr, value in attrs.items():
            if attr in vars(mod):
                monkeypatch.setattr(mod, attr, value)

    # The module-level HfApi behind huggingface_hub.create_repo, upload_file, ... took the endpoint at import.
    hf_api_mod = importlib.import_module("huggingface_hub.hf_api")
    default_api = getattr(hf_api_mod, "api", None)
    if default_api is not None and hasattr(default_api, "endpoint"):
        monkeypatch.setattr(default_api, "endpoint", url)

    # transformers caches an HfApi (with the endpoint of the time) in transformers.utils.hub._hf_api.
    try:
        tf_hub = importlib.import_module("transformers.utils.hub")
    except Exception:
        tf_hub = None
    if tf_hub is not None:
        if hasattr(tf_hub, "_hf_api"):
            monkeypatch.setattr(tf_hub, "_hf_api", None)
        for attr, value in {"HF_HUB_CACHE": endpoint.cache_dir, "TRANSFORMERS_CACHE": endpoint.cache_dir}.items():
            if attr in vars(tf_hub):
                monkeypatch.setattr(tf_hub, attr, value)


@pytest.fixture
def hub_endpoint(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A local Hub server, with huggingface_hub/transformers pointed at it for the test.

    Yields a :class:`HubEndpoint` (``.url``, ``.api``, ``.token``, ``.cache_dir``, ``.env``,
    ``.subprocess_env()``, ``.files()``, ``.head()``, ``.commits()``, ``.requests``,
    ``.unknown_requests``, ``.errors``, ``.store``, ``.server``).  Everything patched is restored
    and the server stopped at teardown.
    """
    base = tmp_path_factory.mktemp("local_hub")
    cache_dir = str(base / "hub-cache")
    home_dir = str(base / "hf-home")
    os.makedirs(cache_dir, exist_ok=True)
    os.makedirs(home_dir, exist_ok=True)
    server = HubServer().start()
    try:
        endpoint = HubEndpoint(server, cache_dir, home_dir)
        _patch_hub_settings(monkeypatch, endpoint)
        yield endpoint
    finally:
        # Stops the server; ``monkeypatch`` (torn down after this fixture) then restores every
        # setting, including ``transformers.utils.hub._hf_api``, which may now cache an HfApi
        # pointed at this (dead) server.
        server.stop()
