"""Models and builds over real HTTP: CRUD, lists, and builds that really import the entry
point (asynchronously, in a fresh interpreter, after the project's ``cdsw-build.sh``)."""

from __future__ import annotations

import json
import re

ECHO = """
def predict(args):
    return args
"""


def test_model_create_get_and_its_fields(models):
    model = models.model("nbo", description="next best offer")
    assert re.fullmatch(r"[a-z0-9]{32}", model["access_key"])
    assert model["crn"] == f"crn:cdp:ml:local:workspace:model/{model['id']}"
    assert model["auth_enabled"] is True
    assert model["name"] == "nbo" and model["description"] == "next best offer"
    assert model["project_id"] == models.project_id
    assert model["created_at"].endswith("Z")
    assert model["default_resources"] == {"cpu_millicores": "1000", "memory_mb": "2048", "nvidia_gpus": "0"}
    got = models.http.get(f"{models.models}/{model['id']}")
    assert got.status_code == 200 and got.json() == model
    open_model = models.model("open", disable_authentication=True)
    assert open_model["auth_enabled"] is False
    assert open_model["access_key"] != model["access_key"]


def test_model_names_are_unique_in_a_project(models):
    models.model("twice")
    resp = models.http.post(models.models, json={"name": "twice"})
    assert resp.status_code == 409 and resp.json()["code"] == 6
    assert models.http.post(models.models, json={"name": ""}).status_code == 400


def test_model_list_paginates_filters_and_sorts(models):
    made = [models.model(f"m-{i}")["id"] for i in range(3)] + [models.model("other")["id"]]
    first = models.http.get(models.models, params={"page_size": 2}).json()
    assert [m["id"] for m in first["models"]] == made[:2] and first["next_page_token"]
    rest = models.http.get(models.models, params={"page_size": 2, "page_token": first["next_page_token"]}).json()
    assert [m["id"] for m in rest["models"]] == made[2:] and rest["next_page_token"] == ""
    filtered = models.http.get(models.models, params={"search_filter": json.dumps({"name": "m-"})}).json()
    assert [m["id"] for m in filtered["models"]] == made[:3]
    newest = models.http.get(models.models, params={"sort": "-created_at", "page_size": 1}).json()
    assert newest["models"][0]["id"] == made[-1]
    bad = models.http.get(models.models, params={"search_filter": json.dumps({"nope": "x"})})
    assert bad.status_code == 400 and bad.json()["code"] == 3


def test_model_delete_forgets_it_and_its_builds(models):
    path = models.entry_point("echo.py", ECHO)
    model = models.model()
    build = models.wait_build(models.build(model, path))
    assert models.http.delete(f"{models.models}/{model['id']}").status_code == 200
    gone = models.http.get(f"{models.models}/{model['id']}")
    assert gone.status_code == 404 and gone.json()["code"] == 5
    assert models.http.get(models.build_path(build)).status_code == 404
    assert models.http.delete(f"{models.models}/{model['id']}").status_code == 404
    assert models.http.get(f"/api/v2/projects/nope/models").status_code == 404


def test_a_build_returns_at_once_then_is_built(models):
    path = models.entry_point("models/echo.py", ECHO)
    model = models.model()
    build = models.build(model, path, comment="first [marker-1]")
    assert build["status"] in {"queued", "pushing"}  # not terminal: the check runs in the background
    assert build["crn"] == f"crn:cdp:ml:local:workspace:build/{build['id']}"
    assert (build["file_path"], build["function_name"], build["comment"]) == ("models/echo.py", "predict",
                                                                              "first [marker-1]")
    done = models.wait_build(build)
    assert done["status"] == "built", done
    assert done["built_at"] and "predict" in done["status_message"]
    listed = models.http.get(f"{models.models}/{model['id']}/builds", params={"sort": "-created_at"}).json()
    assert [b["id"] for b in listed["model_builds"]] == [build["id"]] and listed["next_page_token"] == ""
    log = (models.ws.root / "builds" / f"{build['id']}.log").read_text()
    assert "entry point check" in log


def test_a_build_of_a_file_with_a_syntax_error_fails_with_the_error(models):
    path = models.entry_point("broken.py", "def predict(args:\n    return args\n")
    build = models.wait_build(models.build(models.model(), path))
    assert build["status"] == "build failed"
    assert "SyntaxError" in build["status_message"] and "broken.py" in build["status_message"]
    log = (models.ws.root / "builds" / f"{build['id']}.log").read_text()
    assert "Traceback" in log and "SyntaxError" in log


def test_a_build_without_the_function_fails(models):
    path = models.entry_point("nofunc.py", "def score(args):\n    return args\nNOT_CALLABLE = 3\n")
    model = models.model()
    missing = models.wait_build(models.build(model, path, "predict"))
    assert missing["status"] == "build failed"
    assert "nofunc.py defines no 'predict'" in missing["status_message"]
    not_callable = models.wait_build(models.build(model, path, "NOT_CALLABLE"))
    assert not_callable["status"] == "build failed" and "not a function" in not_callable["status_message"]
    no_file = models.wait_build(models.build(model, "nowhere.py"))
    assert no_file["status"] == "build failed" and "not found" in no_file["status_message"]
    assert models.build(model, path, "not-an-identifier", expect=400)["code"] == 3


def test_a_build_finds_the_entry_point_in_the_code_dir_and_imports_from_it(models):
    # the shared code dir holds helpers/ (stands in for the repository the project comes from)
    code = models.ws.code_dir
    (code / "serve_from_repo.py").write_text("import helpers\n\ndef predict(args):\n    return helpers.GREETING\n")
    build = models.wait_build(models.build(models.model(), "serve_from_repo.py"))
    assert build["status"] == "built", build


def test_a_build_runs_cdsw_build_sh_first(models):
    models.script("cdsw-build.sh", "echo building the image\necho done > built.marker\n")
    build = models.wait_build(models.build(models.model(), models.entry_point("echo.py", ECHO)))
    assert build["status"] == "built", build
    assert (models.files_dir / "built.marker").read_text() == "done\n"
    assert "building the image" in (models.ws.root / "builds" / f"{build['id']}.log").read_text()
    models.script("cdsw-build.sh", "echo cannot install >&2\nexit 3\n")
    failed = models.wait_build(models.build(models.model(), "echo.py"))
    assert failed["status"] == "build failed"
    assert "cdsw-build.sh exited with code 3" in failed["status_message"]


def test_a_nested_git_folder_fails_the_build(models):
    (models.files_dir / "vendored" / ".git").mkdir(parents=True)
    build = models.wait_build(models.build(models.model(), models.entry_point("echo.py", ECHO)))
    assert build["status"] == "build failed" and "nested" in build["status_message"]


def test_only_a_built_build_can_be_deployed(models):
    path = models.entry_point("broken.py", "def predict(:\n")
    build = models.wait_build(models.build(models.model(), path))
    assert build["status"] == "build failed"
    refused = models.deploy(build, expect=400)
    assert refused["code"] == 9 and "not built" in refused["message"]
    assert models.http.get(models.build_path(build) + "/deployments").json() == {
        "model_deployments": [], "next_page_token": ""}
    assert models.http.get(models.build_path({**build, "id": "nope"})).status_code == 404
