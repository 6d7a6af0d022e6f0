"""Project files: upload without overwrite, list, download, delete, path safety."""

from __future__ import annotations

import pytest


def upload(api, path: str, data: bytes, *, filename: str | None = "blob"):
    # filename=None sends a plain form field (no filename in Content-Disposition): accepted too
    return api.http.post(f"{api.base}/files", files={path: (filename, data, "application/octet-stream")})


def names(api, path: str = ".") -> dict[str, dict]:
    resp = api.http.get(f"{api.base}/files/{path}")
    assert resp.status_code == 200, resp.text
    return {f["path"]: f for f in resp.json()["files"]}


def test_upload_never_overwrites(fresh_project):
    api = fresh_project
    assert upload(api, "results/model.json", b'{"v": 1}').status_code == 200
    second = upload(api, "results/model.json", b'{"v": 2}')
    assert second.status_code == 200
    assert second.json()["files"][0]["path"] == "results/model(1).json"
    upload(api, "results/model.json", b'{"v": 3}')
    upload(api, "results/README", b"no extension")
    upload(api, "results/README", b"again")
    listing = names(api, "results")
    assert set(listing) == {"model.json", "model(1).json", "model(2).json", "README", "README(1)"}
    assert api.read_file("results/model.json") == b'{"v": 1}'
    assert api.read_file("results/model(1).json") == b'{"v": 2}'
    assert api.read_file("results/README(1)") == b"again"


def test_list_root_and_nested(fresh_project):
    api = fresh_project
    upload(api, "a/b/c.txt", b"12345")
    upload(api, "top.txt", b"x")
    root = names(api, ".")
    assert root["a"]["is_dir"] is True
    assert root["top.txt"] == {"path": "top.txt", "is_dir": False, "file_size": "1"}  # int64 as string
    assert names(api, "a/b")["c.txt"]["file_size"] == "5"
    assert set(names(api, "%2E")) == set(root)  # "." percent-encoded, as the cmlapi client sends it
    assert api.http.get(f"{api.base}/files").json()["files"] == api.http.get(f"{api.base}/files/.").json()["files"]
    assert names(api, "a%2Fb") == names(api, "a/b")  # slashes percent-encoded
    assert api.http.get(f"{api.base}/files/nothing/here").status_code == 404


def test_download_nested_and_encoded_paths(fresh_project):
    api = fresh_project
    payload = bytes(range(256)) * 1000
    upload(api, "deep/er/data.bin", payload)
    assert api.read_file("deep/er/data.bin") == payload
    assert api.read_file("deep%2Fer%2Fdata.bin") == payload
    assert api.http.post(f"{api.base}/files/deep/er/data.bin%3Adownload").content == payload
    assert api.http.post(f"{api.base}/files/deep/er/missing.bin:download").status_code == 404
    assert api.http.post(f"{api.base}/files/deep:download").status_code == 400  # a directory


def test_plain_form_field_upload(fresh_project):
    api = fresh_project
    assert upload(api, "notes/hello.txt", b"hello", filename=None).status_code == 200
    assert api.read_file("notes/hello.txt") == b"hello"


def test_delete_file_and_directory(fresh_project):
    api = fresh_project
    upload(api, "tmp/one.txt", b"1")
    upload(api, "tmp/sub/two.txt", b"2")
    assert api.http.delete(f"{api.base}/files/tmp/one.txt").status_code == 200
    assert "one.txt" not in names(api, "tmp")
    upload(api, "tmp/one.txt", b"new")  # after a delete the plain name is free again
    assert api.read_file("tmp/one.txt") == b"new"
    assert api.http.delete(f"{api.base}/files/tmp").status_code == 200
    assert "tmp" not in names(api)
    assert api.http.delete(f"{api.base}/files/tmp").status_code == 404
    assert api.http.delete(f"{api.base}/files/%2E").status_code == 400  # never the project root


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/etc/evil.txt", "..", "a/.."])
def test_upload_outside_the_project_is_rejected(fresh_project, path):
    api = fresh_project
    resp = upload(api, path, b"nope")
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == 3
    assert not (api.files_dir.parent / "escape.txt").exists()


@pytest.mark.parametrize("encoded", ["%2E%2E%2Fworkspace.db", "a%2F%2E%2E%2F%2E%2E%2Fworkspace.db",
                                     "%2Fetc%2Fpasswd", "%2E%2E"])
def test_paths_outside_the_project_are_rejected(fresh_project, encoded):
    api = fresh_project
    for method, suffix in (("POST", ":download"), ("GET", ""), ("DELETE", "")):
        resp = api.http.request(method, f"{api.base}/files/{encoded}{suffix}")
        assert resp.status_code == 400, (method, resp.text)
        assert resp.json()["code"] == 3


def test_symlink_out_of_the_project_is_rejected(fresh_project, tmp_path):
    api = fresh_project
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (api.files_dir / "link").symlink_to(tmp_path)
    assert api.http.post(f"{api.base}/files/link/secret.txt:download").status_code == 400


def test_upload_requires_multipart(fresh_project):
    api = fresh_project
    assert api.http.post(f"{api.base}/files", json={"a.txt": "x"}).status_code == 400
