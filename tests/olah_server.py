"""A read-only Hub mirror written by others (`olah`, MIT) on 127.0.0.1, serving local git repositories offline.

    with OlahMirror(tmp_path) as mirror:
        mirror.add_repo("org/name", folder)          # commits the folder's files as a git repository
        env = mirror.env(cache_dir)                   # HF_ENDPOINT etc. for a child process

olah answers `resolve` and the file metadata that `from_pretrained` / `snapshot_download` need; `model_info`,
uploads and repo creation are not served (uploads stay tested against `hub_server.py`).

One correction is made to olah 0.5.4, in the process that runs it (`_LAUNCH`): for a file that a mirrored repository
lacks it answers 401 "Repository not found" where the Hub answers 404 "Entry not found", and clients then stop at
their first probe of an optional file (`adapter_config.json`, `processor_config.json`). The launcher turns that one
answer into olah's own `error_entry_not_found()`; everything else is olah as released.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


_LAUNCH = """
import sys
import olah.server
import olah.server_file_routes as routes
from olah.errors import error_entry_not_found
from olah.server_access import build_repo_ref
from olah.server_mirror import has_local_mirror


def missing_entries_are_404(route):
    async def patched(app, repo_type, org, repo, commit, file_path, request, *args, **kwargs):
        response = await route(app, repo_type, org, repo, commit, file_path, request, *args, **kwargs)
        if response.status_code == 401 and has_local_mirror(app, build_repo_ref(repo_type, org, repo)):
            return error_entry_not_found()
        return response
    return patched


for module in (routes, olah.server):
    module.file_head_common = missing_entries_are_404(routes.file_head_common)
    module.file_get_common = missing_entries_are_404(routes.file_get_common)
sys.argv = ["olah-cli", *sys.argv[1:]]
sys.exit(olah.server.cli())
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OlahMirror:
    def __init__(self, root):
        self.root = os.fspath(root)
        self.mirror_dir = os.path.join(self.root, "mirror")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def add_repo(self, repo_id: str, folder) -> None:
        """Copies `folder` into the mirror as the git repository `repo_id` (one commit on `main`)."""
        target = os.path.join(self.mirror_dir, "models", *repo_id.split("/"))
        shutil.copytree(folder, target)
        git = ["git", "-C", target, "-c", "user.name=mirror", "-c", "user.email=mirror@localhost"]
        for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "upload"]):
            subprocess.run(git[:3] + command if command[0] == "init" else git + command, check=True)

    def start(self):
        os.makedirs(self.mirror_dir, exist_ok=True)
        config = os.path.join(self.root, "olah.toml")
        with open(config, "w", encoding="utf-8") as file:
            file.write(
                "[basic]\n"
                f'host = "127.0.0.1"\nport = {self.port}\n'
                f'repos-path = "{os.path.join(self.root, "repos")}"\n'
                f'mirrors-path = ["{self.mirror_dir}"]\n'
                f'mirror-netloc = "127.0.0.1:{self.port}"\nmirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
                "[accessibility]\noffline = true\n"
            )
        self.log = open(os.path.join(self.root, "olah.log"), "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, "-c", config],
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
                return self
            except urllib.error.HTTPError:  # any answer means it listens
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(os.path.join(self.root, "olah.log")) as file:
                        raise RuntimeError("olah did not start:\n" + file.read()[-2000:]) from None
                time.sleep(0.3)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def env(self, cache_dir) -> dict:
        """The environment of a child process that downloads from the mirror only."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
        env.pop("PYTHONPATH", None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_CACHE=os.fspath(cache_dir),
            HF_HOME=os.path.join(os.fspath(cache_dir), "home"),
            HF_MODULES_CACHE=os.path.join(os.fspath(cache_dir), "modules"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        return env

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
