"""The command line: where the API key comes from, one server per root."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from cml_workspace.server_process import PACKAGE_PARENT, WorkspaceBusyError, running_workspace


def _env_without_key() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CML_WORKSPACE_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def test_serve_refuses_to_start_without_an_api_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cml_workspace", "serve", "--root", str(tmp_path)],
                          env=_env_without_key(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "CML_WORKSPACE_API_KEY" in proc.stderr and "--api-key-file" in proc.stderr


def test_api_key_file_and_one_server_per_root(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("key-from-file\n")
    root = tmp_path / "ws"
    # the handle puts another key in the environment: the file wins
    with running_workspace(root, project="", extra_args=["--api-key-file", str(key_file)]) as ws:
        url = f"{ws.url}/api/v2/projects"
        assert httpx.get(url, headers={"Authorization": "Bearer key-from-file"}).status_code == 200
        assert httpx.get(url, headers=ws.headers).status_code == 401
        with pytest.raises(WorkspaceBusyError, match="another workspace server") as busy:
            with running_workspace(root, project=""):
                pass
        # one line naming the holder and the root, not the refused server's traceback
        assert str(busy.value) == f"another workspace server (pid {ws.pid} on {ws.url}) is using {ws.root}"
        assert httpx.get(f"{ws.url}/health").status_code == 200  # the first one is unharmed
