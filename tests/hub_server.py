"""A small Hub-compatible HTTP server for tests (stdlib only), bound to 127.0.0.1 on a free port.

It answers the routes that unmodified huggingface_hub, timm (``hf-hub:``) and transformers use to create a repo,
commit files and download them: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
``POST /api/models/{repo}/preupload/{rev}``, ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, files inline in
base64), ``GET /api/models/{repo}/tree/{rev}``, and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``.
``fail_next`` makes the next requests answer a given status (401, 500) to test error paths.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    prs: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.fail_next: list[int] = []  # statuses to answer to the next requests, in order
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _fail(self) -> bool:
                with server.lock:
                    server.requests.append((self.command, self.path))
                    status = server.fail_next.pop(0) if server.fail_next else None
                if status is None:
                    return False
                self._body()
                self._send(status, {"error": f"injected {status}"}, {"X-Error-Message": f"injected {status}"})
                return True

            def do_POST(self):
                if self._fail():
                    return
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                body = self._body()
                if url.path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    with server.lock:
                        if repo_id in server.repos:
                            return self._send(
                                409, {"error": "You already created this model repo", "url": f"{server.url}/{repo_id}"}
                            )
                        server.repos[repo_id] = Repo(private=bool(req.get("private")))
                    return self._send(200, {"url": f"{server.url}/{repo_id}", "name": repo_id})
                if url.path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
                    repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
                    repo = server.repos.get(repo_id)
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    return self._commit(repo_id, repo, body, parse_qs(url.query))
                return self._send(404, {"error": f"no route POST {url.path}"})

            def _commit(self, repo_id: str, repo: Repo, body: bytes, query: dict):
                files = dict(repo.files)
                summary = ""
                for line in body.decode().splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "header":
                        summary = value.get("summary", "")
                    elif item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        files.pop(value["path"], None)
                    else:
                        return self._send(400, {"error": f"unsupported commit item {item['key']}"})
                oid = hashlib.sha1(body).hexdigest()
                with server.lock:
                    if query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
                        number = len(repo.prs) + 1
                        repo.prs[f"refs/pr/{number}"] = files
                        pr_url = f"{server.url}/{repo_id}/discussions/{number}"
                        return self._send(
                            200,
                            {
                                "commitOid": oid,
                                "commitUrl": f"{server.url}/{repo_id}/commit/{oid}",
                                "pullRequestUrl": pr_url,
                            },
                        )
                    repo.files = files
                    repo.commits.append({"oid": oid, "summary": summary})
                return self._send(
                    200, {"commitOid": oid, "commitUrl": f"{server.url}/{repo_id}/commit/{oid}", "pullRequestUrl": None}
                )

            def do_GET(self):
                self._get()

            def do_HEAD(self):
                self._get()

            def _get(self):
                if self._fail():
                    return
                url = urlparse(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                    repo = server.repos.get(f"{parts[2]}/{parts[3]}")
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return self._send(
                        200,
                        [
                            {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                            for p, b in sorted(repo.files.items())
                        ],
                    )
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, rev, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                    repo = server.repos.get(repo_id)
                    if repo is None:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    files = repo.prs.get(rev, repo.files) if rev.startswith("refs/pr/") else repo.files
                    if path not in files:
                        return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    data = files[path]
                    etag = f'"{hashlib.sha256(data).hexdigest()}"'
                    return self._send(
                        200,
                        data,
                        {"ETag": etag, "X-Repo-Commit": repo.head, "Content-Type": "application/octet-stream"},
                    )
                return self._send(404, {"error": f"no route GET {url.path}"})

        return Handler
