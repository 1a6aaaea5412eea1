"""Push and pull for real, over HTTP, against the local Hub server of ``hub_server.py``."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
from http.client import HTTPConnection
from urllib.parse import urlsplit

import huggingface_hub
import pytest
from hub_server import HubEndpoint, HubServer, _patch_hub_settings, git_blob_sha1, hub_endpoint  # noqa: F401
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


# Requests the clients make that the server answers with a plain 404 on purpose.
EXPECTED_UNKNOWN = {("GET", "/api/agent-harnesses")}


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch):
    """Fail any connection this process opens to anything but 127.0.0.1 / ::1."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def _assert_clean(hub: HubEndpoint) -> None:
    assert hub.errors == []
    assert set(hub.unknown_requests) <= EXPECTED_UNKNOWN, hub.unknown_requests


def _tree(tmp_path, files: dict[str, bytes]):
    for rel, data in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return tmp_path


def _raw(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """One plain HTTP request (stdlib only): (status, headers, body)."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ huggingface_hub


def test_fixture_points_clients_at_server(hub_endpoint):
    assert hub_endpoint.url.startswith("http://127.0.0.1:")
    assert constants.ENDPOINT == hub_endpoint.url
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(hub_endpoint.url + "/")
    assert constants.HF_HUB_CACHE == hub_endpoint.cache_dir
    assert huggingface_hub.hf_api.api.endpoint == hub_endpoint.url
    assert hub_endpoint.env["HF_ENDPOINT"] == hub_endpoint.url
    assert hub_endpoint.api.whoami()["name"] == hub_endpoint.user


def test_create_repo_twice(hub_endpoint):
    api = hub_endpoint.api
    url = api.create_repo("user/twice")
    assert url == f"{hub_endpoint.url}/user/twice"
    assert url.repo_id == "user/twice"
    assert api.create_repo("user/twice", exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("user/twice")
    assert info.value.response.status_code == 409
    # the module-level function goes to the server too
    assert huggingface_hub.create_repo("user/twice", exist_ok=True) == url
    ds = api.create_repo("user/twice", repo_type="dataset")
    assert ds == f"{hub_endpoint.url}/datasets/user/twice"
    _assert_clean(hub_endpoint)


def test_upload_then_download_same_bytes(hub_endpoint, tmp_path):
    api = hub_endpoint.api
    api.create_repo("user/files")
    files = {
        "a.txt": b"hello hub\n",
        "sub/b.bin": bytes(range(256)) * 40,
        "sub/deeper/c.json": json.dumps({"x": 1}).encode(),
    }
    info = api.upload_folder(folder_path=_tree(tmp_path / "src", files), repo_id="user/files")
    assert len(info.oid) == 40
    api.upload_file(path_or_fileobj=b"single file", path_in_repo="single.txt", repo_id="user/files")

    expected = {**files, "single.txt": b"single file"}
    for name, data in expected.items():
        with open(hf_hub_download("user/files", name), "rb") as f:
            assert f.read() == data
    snap = snapshot_download("user/files")
    for name, data in expected.items():
        with open(f"{snap}/{name}", "rb") as f:
            assert f.read() == data
    assert set(api.list_repo_files("user/files")) == set(expected) | {".gitattributes"}

    # the listing carries git blob ids and sizes
    tree = {e.path: e for e in api.list_repo_tree("user/files", recursive=True)}
    assert tree["sub/b.bin"].blob_id == git_blob_sha1(files["sub/b.bin"])
    assert tree["sub/b.bin"].size == len(files["sub/b.bin"])
    assert {e.path for e in api.list_repo_tree("user/files", path_in_repo="sub")} == {"sub/b.bin", "sub/deeper"}
    info = api.get_paths_info("user/files", ["a.txt", "sub", "missing"])
    assert sorted(i.path for i in info) == ["a.txt", "sub"]

    # the same for a dataset repo (resolve URLs get the `datasets/` prefix)
    api.create_repo("user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="t.csv", repo_id="user/data", repo_type="dataset")
    path = hf_hub_download("user/data", "t.csv", repo_type="dataset")
    assert open(path, "rb").read() == b"a,b\n1,2\n"
    assert any(p.startswith("/datasets/user/data/resolve/") for _, p, _ in hub_endpoint.requests)
    _assert_clean(hub_endpoint)


def test_second_commit_moves_main_and_old_sha_still_resolves(hub_endpoint):
    api = hub_endpoint.api
    api.create_repo("user/history")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="w.txt", repo_id="user/history")
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="w.txt", repo_id="user/history")
    assert first.oid != second.oid
    assert api.model_info("user/history").sha == second.oid == hub_endpoint.head("user/history")
    assert api.model_info("user/history", revision=first.oid).sha == first.oid

    assert open(hf_hub_download("user/history", "w.txt"), "rb").read() == b"v2"
    assert open(hf_hub_download("user/history", "w.txt", revision=first.oid), "rb").read() == b"v1"
    assert open(f"{snapshot_download('user/history', revision=first.oid)}/w.txt", "rb").read() == b"v1"
    commits = [c.commit_id for c in api.list_repo_commits("user/history")]
    assert commits[:2] == [second.oid, first.oid]

    # uploading identical content is a no-op (preupload reports the remote oid)
    same = api.upload_file(path_or_fileobj=b"v2", path_in_repo="w.txt", repo_id="user/history")
    assert same.oid == second.oid

    # a stale parent_commit is refused, as on the Hub (412)
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_file(path_or_fileobj=b"v3", path_in_repo="w.txt", repo_id="user/history", parent_commit=first.oid)
    assert info.value.response.status_code == 412

    # deletions, branches, pull requests
    api.create_branch("user/history", branch="dev", revision=first.oid)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="d.txt", repo_id="user/history", revision="dev")
    assert hub_endpoint.files("user/history", "dev")["w.txt"] == b"v1"
    assert "d.txt" not in hub_endpoint.files("user/history")
    api.delete_file("w.txt", repo_id="user/history")
    assert "w.txt" not in api.list_repo_files("user/history")
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="p.txt", repo_id="user/history", create_pr=True)
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert hub_endpoint.files("user/history", "refs/pr/1")["p.txt"] == b"pr"
    assert open(hf_hub_download("user/history", "p.txt", revision="refs/pr/1"), "rb").read() == b"pr"
    _assert_clean(hub_endpoint)


def test_concurrent_commits_all_land(hub_endpoint):
    from concurrent.futures import ThreadPoolExecutor

    api = hub_endpoint.api
    api.create_repo("user/busy")

    def push(i: int) -> str:
        return api.upload_file(path_or_fileobj=b"%d" % i, path_in_repo=f"f{i}.txt", repo_id="user/busy").oid

    with ThreadPoolExecutor(8) as pool:
        shas = list(pool.map(push, range(8)))
    assert len(set(shas)) == 8
    files = hub_endpoint.files("user/busy")
    assert all(files[f"f{i}.txt"] == b"%d" % i for i in range(8))
    assert len(hub_endpoint.commits("user/busy")) == 9  # + the initial commit
    _assert_clean(hub_endpoint)


def test_resolve_headers_and_ranges(hub_endpoint):
    api = hub_endpoint.api
    api.create_repo("user/raw")
    data = bytes(range(200))
    sha = api.upload_file(path_or_fileobj=data, path_in_repo="dir/r.bin", repo_id="user/raw").oid
    url = f"{hub_endpoint.url}/user/raw/resolve/main/dir/r.bin"
    status, headers, body = _raw(url, "HEAD")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == sha
    assert headers["ETag"] == f'"{git_blob_sha1(data)}"'
    assert headers["Content-Length"] == "200"
    status, headers, body = _raw(url, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    assert headers["Content-Range"] == "bytes 10-19/200"
    assert _raw(url, headers={"Range": "bytes=190-"})[2] == data[190:]
    assert _raw(url, headers={"Range": "bytes=-5"})[2] == data[-5:]
    assert _raw(url, headers={"Range": "bytes=500-"})[0] == 416
    # writes need a token
    assert _raw(f"{hub_endpoint.url}/api/repos/create", "POST", body=b'{"name": "x"}')[0] == 401
    for path, code in [
        ("/user/raw/resolve/main/nope", "EntryNotFound"),
        ("/user/nope/resolve/main/x", "RepoNotFound"),
        ("/user/raw/resolve/nobranch/dir/r.bin", "RevisionNotFound"),
    ]:
        status, headers, _ = _raw(hub_endpoint.url + path, "HEAD")
        assert (status, headers["X-Error-Code"]) == (404, code), path


def test_errors_users_rely_on(hub_endpoint):
    api = hub_endpoint.api
    api.create_repo("user/errs")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/errs")

    with pytest.raises(RepositoryNotFoundError, match="Repository Not Found"):
        hf_hub_download("user/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("user/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/does-not-exist")

    with pytest.raises(EntryNotFoundError, match="Entry Not Found"):
        hf_hub_download("user/errs", "missing.txt")
    with pytest.raises(EntryNotFoundError):
        api.delete_file("missing.txt", repo_id="user/errs")

    with pytest.raises(RevisionNotFoundError, match="Revision Not Found"):
        hf_hub_download("user/errs", "x.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/errs", "x.txt", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("user/errs", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("user/errs", revision="no-such-branch")
    assert huggingface_hub.file_exists("user/errs", "x.txt")
    assert not huggingface_hub.file_exists("user/errs", "y.txt")
    assert huggingface_hub.repo_exists("user/errs")
    assert not huggingface_hub.repo_exists("user/nope")
    _assert_clean(hub_endpoint)


def test_fixture_restores_everything(tmp_path):
    from transformers.utils import hub as tf_hub

    before = (
        constants.ENDPOINT,
        constants.HUGGINGFACE_CO_URL_TEMPLATE,
        constants.HF_HUB_CACHE,
        huggingface_hub.hf_api.api.endpoint,
        tf_hub._hf_api,
    )
    with HubServer() as server, pytest.MonkeyPatch.context() as mp:
        hub = HubEndpoint(server, str(tmp_path / "c"), str(tmp_path / "h"))
        _patch_hub_settings(mp, hub)
        assert constants.ENDPOINT == server.url
        url = server.url
    after = (
        constants.ENDPOINT,
        constants.HUGGINGFACE_CO_URL_TEMPLATE,
        constants.HF_HUB_CACHE,
        huggingface_hub.hf_api.api.endpoint,
        tf_hub._hf_api,
    )
    assert after == before
    # and the server is gone
    with pytest.raises(ConnectionError):
        _raw(url + "/api/whoami-v2")


# --------------------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_clip():
    import torch
    from transformers import CLIPModel

    from mpiqe_hf.testing_utils import hub_clip_config

    torch.manual_seed(0)
    return CLIPModel(hub_clip_config()).eval()


def _weights_digest(state_dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_transformers_push_and_from_pretrained(hub_endpoint, tiny_clip, tmp_path):
    import torch
    from transformers import CLIPConfig, CLIPModel

    commit = tiny_clip.push_to_hub("user/tiny-clip")
    assert commit.oid == hub_endpoint.head("user/tiny-clip")
    stored = hub_endpoint.files("user/tiny-clip")
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)

    loaded = CLIPModel.from_pretrained("user/tiny-clip")
    expected, got = tiny_clip.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert CLIPConfig.from_pretrained("user/tiny-clip").projection_dim == 512

    # a child process pointed at the server with HF_ENDPOINT (read at import) loads the same weights
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        from huggingface_hub import constants
        assert constants.ENDPOINT == {hub_endpoint.url!r}, constants.ENDPOINT
        from transformers import CLIPModel
        sd = CLIPModel.from_pretrained("user/tiny-clip", cache_dir={str(tmp_path / "child-cache")!r}).state_dict()
        h = hashlib.sha256()
        for key in sorted(sd):
            h.update(key.encode())
            h.update(sd[key].detach().cpu().contiguous().numpy().tobytes())
        print("DIGEST", h.hexdigest())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=hub_endpoint.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"DIGEST {_weights_digest(expected)}" in out.stdout
    _assert_clean(hub_endpoint)


def test_transformers_errors(hub_endpoint, tiny_clip):
    from transformers import CLIPModel

    with pytest.raises(OSError, match="is not a local folder and is not a valid model identifier") as info:
        CLIPModel.from_pretrained("user/not-there")
    assert isinstance(info.value.__cause__, RepositoryNotFoundError)

    tiny_clip.push_to_hub("user/tiny-clip-errs")
    with pytest.raises(OSError, match="is not a valid git identifier") as info:
        CLIPModel.from_pretrained("user/tiny-clip-errs", revision="v9")
    assert isinstance(info.value.__cause__, RevisionNotFoundError)

    with pytest.raises(OSError, match="does not appear to have a file named"):
        CLIPModel.from_pretrained("user/tiny-clip-errs", subfolder="nowhere")
    _assert_clean(hub_endpoint)


def test_loopback_guard_refuses_other_hosts():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(AssertionError, match="tried to reach"):
            sock.connect(("192.0.2.1", 80))
    finally:
        sock.close()
