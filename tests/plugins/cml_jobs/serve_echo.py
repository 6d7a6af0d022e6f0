"""Model entry point for the deploy operator's tests, deployed by the local workspace.

``predict`` echoes its request with the deployment's ``MF_MODEL_VERSION``; a request with
``"fail": true`` gets the structured error answer the factory's entry point gives bad input.
``build_check`` (called when a replica starts) raises ``MF_TEST_START_FAIL`` when it is set,
as an entry point does when its model file cannot be loaded.
"""

import os


def build_check():
    if os.environ.get("MF_TEST_START_FAIL"):
        raise RuntimeError(os.environ["MF_TEST_START_FAIL"])
    return {"ok": True}


def predict(args):
    if args.get("fail"):
        return {"error": {"field": "fail", "message": "asked to fail"}}
    return {"echo": args, "version": os.environ.get("MF_MODEL_VERSION")}
