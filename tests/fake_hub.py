"""A small Hub-compatible HTTP server on 127.0.0.1, for driving the real `huggingface_hub` client.

It implements what `memoir push` and `memoir pull` use, for model repos: create a repo, model card
validation, preupload (every file "regular", i.e. sent inline), commit (NDJSON), tags, refs, repo
info, the file tree, and file resolution (HEAD and GET). Repos live in memory; commits are whole
file maps. Private repos answer only requests carrying one of the server's tokens, as the Hub does (401).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str | None] = field(default_factory=lambda: {"main": None})
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)


class FakeHub:
    """Start with `with FakeHub(tokens={"hf_good"}) as hub:`; `hub.endpoint` is its base URL."""

    def __init__(self, tokens: set[str] = frozenset({"hf_test_token"})) -> None:
        self.tokens = set(tokens)
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.cards: list[dict] = []  # the YAML metadata of every model card validated
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        # --- plumbing -------------------------------------------------------------------

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, error_code: str | None = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data, error_code: str | None = None) -> None:
            body = json.dumps(data).encode()
            self._send(status, body, {"Content-Type": "application/json"}, error_code)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            return auth.startswith("Bearer ") and auth[len("Bearer ") :] in hub.tokens

        def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
            """The repo if this request may see it; otherwise the error is already sent."""
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorised()):
                status = 404 if repo is None and self._authorised() else 401  # as the Hub answers
                self._json(status, {"error": "Repository not found"}, "RepoNotFound")
                return None
            if write and not self._authorised():
                self._json(401, {"error": "Invalid credentials"})
                return None
            return repo

        def _commit_at(self, repo_id: str, revision: str) -> Commit | None:
            """The commit a branch, tag or commit id names; otherwise the error is already sent."""
            repo = self._repo(repo_id)
            if repo is None:
                return None
            commit = repo.resolve(revision)
            if commit is None:
                self._json(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
            return commit

        # --- routes ---------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            with hub.lock:
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id = "/".join(parts[2:4])
                    rest = parts[4:]
                    if rest == ["refs"]:
                        return self._refs(repo_id)
                    if rest and rest[0] == "tree":
                        return self._tree(repo_id, rest[1])
                    if not rest or rest[0] == "revision":
                        return self._info(repo_id, "/".join(rest[1:]) if rest else "main")
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            self._json(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"POST {path}")
            parts = path.strip("/").split("/")
            body = self._body()
            with hub.lock:
                if parts == ["api", "repos", "create"]:
                    return self._create(json.loads(body))
                if parts == ["api", "validate-yaml"]:
                    return self._validate_card(json.loads(body)["content"])
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo_id, action, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                    if action == "preupload":
                        return self._preupload(repo_id, json.loads(body))
                    if action == "commit":
                        return self._commit(repo_id, revision, body)
                    if action == "tag":
                        return self._tag(repo_id, revision, json.loads(body))
            self._json(404, {"error": f"no route {path}"})

        def _create(self, payload: dict) -> None:
            if not self._authorised():
                return self._json(401, {"error": "Invalid credentials in Authorization header"})
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:
                return self._json(
                    409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"}
                )
            hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def _validate_card(self, content: str) -> None:
            """The model card's YAML metadata must parse, with the types the Hub expects."""
            import yaml

            match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                metadata = yaml.safe_load(match[1]) if match else None
            except yaml.YAMLError as error:
                return self._json(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
            problems = [] if isinstance(metadata, dict) else ["no YAML metadata block"]
            if isinstance(metadata, dict):
                problems += [
                    f"'{key}' must be a string"
                    for key in ("library_name", "license", "base_model")
                    if key in metadata and not isinstance(metadata[key], str)
                ]
                if not isinstance(metadata.get("tags", []), list):
                    problems.append("'tags' must be a list")
            if problems:
                return self._json(400, {"errors": [{"message": p} for p in problems]})
            hub.cards.append(metadata)
            self._json(200, {"errors": [], "warnings": []})

        def _info(self, repo_id: str, revision: str) -> None:
            commit = self._commit_at(repo_id, revision)
            if commit is None:
                return
            self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit.oid,
                    "private": hub.repos[repo_id].private,
                    "siblings": [{"rfilename": name} for name in sorted(commit.files)],
                    "tags": [],
                },
            )

        def _refs(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in repo.branches.items() if oid
            ]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": oid} for n, oid in repo.tags.items()]
            self._json(200, {"branches": branches, "tags": tags, "converts": []})

        def _tree(self, repo_id: str, revision: str) -> None:
            commit = self._commit_at(repo_id, revision)
            if commit is None:
                return
            self._json(
                200,
                [
                    {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                    for name, data in sorted(commit.files.items())
                ],
            )

        def _preupload(self, repo_id: str, payload: dict) -> None:
            if self._repo(repo_id, write=True) is None:
                return
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in payload["files"]
            ]
            self._json(200, {"files": files, "commitOid": None})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = lines[0]["value"]
            parent = repo.branches.get(revision)
            files = dict(repo.commits[parent].files) if parent else {}
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    return self._json(400, {"error": f"unsupported operation {line['key']}"})
            digest = hashlib.sha1(json.dumps([parent, header["summary"], sorted(files)]).encode())
            for name in sorted(files):
                digest.update(files[name])
            oid = digest.hexdigest()
            repo.commits[oid] = Commit(oid, parent, header["summary"], files)
            repo.branches[revision] = oid
            self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True})

        def _tag(self, repo_id: str, revision: str, payload: dict) -> None:
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return
            commit = repo.resolve(revision)
            if commit is None:
                return self._json(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
            if payload["tag"] in repo.tags:
                return self._json(409, {"error": f"Tag {payload['tag']} already exists"})
            repo.tags[payload["tag"]] = commit.oid
            self._json(200, {})

        def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
            commit = self._commit_at(repo_id, revision)
            if commit is None:
                return
            if filename not in commit.files:
                return self._json(404, {"error": "Entry not found"}, "EntryNotFound")
            data = commit.files[filename]
            self._send(
                200,
                data,
                {
                    "X-Repo-Commit": commit.oid,
                    "ETag": f'"{_blob_id(data)}"',
                    "Content-Length": str(len(data)),
                    "Content-Type": "application/octet-stream",
                },
            )

    return Handler


def _blob_id(data: bytes) -> str:
    """git's id of a file's content, which the Hub reports as its oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
