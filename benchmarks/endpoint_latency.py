"""Serving speed: the deployed next-best-offer endpoint over HTTP vs the pipeline in-process.

For each default family (the estimators of config/grid.yaml, with its first grid point): fit
the pipeline on simulated rows, save it as the retrain job does (skops + metadata + a checked
ONNX copy when it compiles), deploy it on the local workspace through the provider's hook (the
entry point ``jobs/serve_next_best_offer.py``, ``--replicas`` replicas), and measure in the same
run:

* baseline: the same fitted pipeline's ``predict_proba`` in-process for one customer x three
  offers (what a caller would pay without the endpoint), and for 100 customers;
* the endpoint: single-customer and 100-customer requests at concurrency 1 and 8, a fixed
  number of requests each, over keep-alive HTTP with a small asyncio client (so the client's
  own cost stays low on a 2-core machine); every answer is checked, any error counts.

Prints p50 / p99 latency, throughput and the ratios HTTP / in-process. The last line sums it
up for the default deployment (``--default-family``), exactly as
``endpoint: p50 ratio <r> (HTTP / in-process), <n> req/s at concurrency 8, <e> errors``.
Targets: ratio <= 1.0, >= 1,000 req/s, 0 errors over 10,000 requests.

**Two models** (``--challenger-share S``, issue 21): the default family is deployed as the
champion with a challenger (``--challenger-family``, default the same family refitted on other
rows with another seed: a retrain) decided for a share ``S`` of customers, and
``--epsilon`` exploration on top (the serving policy of ``docs/deploy.md``). Single-customer
requests then cycle through 256 customers with distinct ids so both arms answer; every answer is
checked (its arm and model version, propensities summing to 1), and the arms' shares are
printed. The baseline is the faster of the two pipelines in-process (the stricter ratio).
Targets there: ratio <= 0.5, >= 2,000 req/s at concurrency 8, 0 errors.

    .venv/bin/python benchmarks/endpoint_latency.py [--requests 10000] [--families random_forest]
    .venv/bin/python benchmarks/endpoint_latency.py --challenger-share 0.5 --epsilon 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def in_process_ms(pipeline, customers, repeat: int) -> list[float]:
    from factory_tasks.core.schema import OFFERS
    from factory_tasks.training.features import counterfactual_proba

    customers = customers.assign(offer=OFFERS[0])  # replaced by each offer in turn
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        counterfactual_proba(pipeline, customers)
        times.append((time.perf_counter() - t0) * 1000)
    return times


class RawClient:
    """One keep-alive HTTP/1.1 connection: POST a prepared body, read one response."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]):
        self.host, self.port, self.path, self.headers = host, port, path, headers

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def request_bytes(self, body: bytes) -> bytes:
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in self.headers.items()), "", ""]
        return "\r\n".join(head).encode() + body

    async def post(self, payload: bytes) -> tuple[int, bytes]:
        self.writer.write(payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


async def load(url: str, headers: dict, bodies: list[bytes], *, n: int, concurrency: int, check) -> dict:
    """``n`` requests over ``concurrency`` connections, each worker cycling through ``bodies``."""
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    remaining = n

    async def worker(offset: int) -> None:
        nonlocal remaining, errors
        client = RawClient(parts.hostname, parts.port, parts.path or "/model", headers)
        await client.open()
        payloads = [client.request_bytes(body) for body in bodies]
        sent = offset
        try:
            while remaining > 0:
                remaining -= 1
                payload = payloads[sent % len(payloads)]
                sent += 1
                t0 = time.perf_counter()
                status, raw = await client.post(payload)
                latencies.append((time.perf_counter() - t0) * 1000)
                if status != 200 or not check(json.loads(raw)):
                    errors += 1
        finally:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k * 37) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "rps": n / wall, "errors": errors}


def deploy(cml, model_name: str, model_dir: Path, replicas: int, version: str, policy_env: dict | None = None):
    from factory_tasks.core.names import (
        MODEL_ARTIFACT_ENV,
        MODEL_DIR_ENV,
        MODEL_ENTRY_POINT,
        MODEL_FUNCTION,
        MODEL_VERSION_ENV,
    )

    model = cml.get_or_create_model(model_name)
    build = cml.create_model_build(model.id, MODEL_ENTRY_POINT, MODEL_FUNCTION, comment="endpoint benchmark")
    deadline = time.monotonic() + 300
    while not (build := cml.get_model_build(model.id, build.id)).status.is_terminal:
        if time.monotonic() > deadline:
            raise TimeoutError("build did not finish")
        time.sleep(0.2)
    if not build.status.is_successful:
        raise RuntimeError(f"build {build.status.value}")
    env = {MODEL_ARTIFACT_ENV: str(model_dir / "model.skops"), MODEL_DIR_ENV: str(model_dir),
           MODEL_VERSION_ENV: version, **(policy_env or {})}
    deployment = cml.create_model_deployment(model.id, build.id, cpu=1, memory_gb=2, replicas=replicas, environment=env)
    while not (deployment := cml.get_model_deployment(model.id, build.id, deployment.id)).status.is_terminal:
        if time.monotonic() > deadline:
            raise TimeoutError("deployment did not finish")
        time.sleep(0.2)
    if not deployment.status.is_successful:
        raise RuntimeError(f"deployment {deployment.status.value}")
    return model, build, deployment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="simulated training rows per model")
    parser.add_argument("--requests", type=int, default=10_000, help="single-customer requests at concurrency 8")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--families", nargs="*", help="grid families to measure (default: all of config/grid.yaml)")
    parser.add_argument("--default-family", default="random_forest",
                        help="the family the last line sums up (the default grid's slowest to score in-process)")
    parser.add_argument("--challenger-share", type=float, default=0.0,
                        help="two models: deploy the default family as champion with a challenger on this share")
    parser.add_argument("--challenger-family", help="the challenger's family (default: the champion's, refitted)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="the deployment's exploration epsilon")
    args = parser.parse_args(argv)
    two_models = args.challenger_share > 0
    if two_models and not args.families:
        args.families = [args.default_family]

    from cml_provider.hooks.cml import CmlHook
    from cml_workspace.server_process import running_workspace

    from factory_tasks.core.names import (
        CHALLENGER_ARTIFACT_ENV,
        CHALLENGER_DIR_ENV,
        CHALLENGER_SHARE_ENV,
        CHALLENGER_VERSION_ENV,
        EXPLORATION_EPSILON_ENV,
    )
    from factory_tasks.core.schema import DEFAULT_ECONOMICS
    from factory_tasks.loop.policy_check import customer_requests
    from factory_tasks.loop.simulator import simulate_customers, simulate_interactions
    from factory_tasks.serving.compiled import save_compiled
    from factory_tasks.training.artifacts import save_model
    from factory_tasks.training.features import build_pipeline, feature_frame
    from factory_tasks.training.grid import load_grid

    config = load_grid(REPO / "config" / "grid.yaml", check_fit=False)
    families = args.families or list(config.families)
    data = simulate_interactions(args.rows, seed=11)
    one = simulate_customers(1, seed=12)
    hundred = simulate_customers(100, seed=13)
    single_bodies = [json.dumps({"customers": customer_requests(one)})]
    if two_models:  # distinct ids, so both arms answer (a customer's arm is a hash of its id)
        many = customer_requests(simulate_customers(256, seed=15), prefix="bench")
        single_bodies = [json.dumps({"customers": [c]}) for c in many]
    batch_body = json.dumps({"customers": customer_requests(hundred)})
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mf-endpoint-") as tmp, running_workspace(
            Path(tmp) / "ws", cpus=2, memory_gb=16, code_dir=REPO, project="endpoint-benchmark") as ws:
        cml = CmlHook.from_url(ws.url, ws.api_key, project_name="endpoint-benchmark")
        for name in families:
            family = config.families[name]
            params = next(family.grid_points())
            pipeline = build_pipeline(family.estimator, params, random_state=0).fit(feature_frame(data), data["conversion"])
            model_dir = Path(tmp) / "models" / name
            version = f"bench-{name}"
            save_model(pipeline, model_dir, {"model_version": version, "economics": DEFAULT_ECONOMICS})
            compiled, note = save_compiled(pipeline, model_dir, simulate_customers(200, seed=14))
            policy_env, versions, pipelines = {}, {"champion": version}, [pipeline]
            if two_models:
                c_family = config.families[args.challenger_family or name]
                c_data = simulate_interactions(args.rows, seed=21)
                c_pipeline = build_pipeline(c_family.estimator, next(c_family.grid_points()), random_state=1).fit(
                    feature_frame(c_data), c_data["conversion"])
                c_dir, c_version = Path(tmp) / "models" / f"{name}-challenger", f"bench-{name}-challenger"
                save_model(c_pipeline, c_dir, {"model_version": c_version, "economics": DEFAULT_ECONOMICS})
                c_compiled, c_note = save_compiled(c_pipeline, c_dir, simulate_customers(200, seed=14))
                note += f"; challenger {c_family.estimator}: {'ONNX' if c_compiled else 'skops'}: {c_note}"
                policy_env = {CHALLENGER_ARTIFACT_ENV: str(c_dir / "model.skops"), CHALLENGER_DIR_ENV: str(c_dir),
                              CHALLENGER_VERSION_ENV: c_version, CHALLENGER_SHARE_ENV: str(args.challenger_share),
                              EXPLORATION_EPSILON_ENV: str(args.epsilon)}
                versions["challenger"] = c_version
                pipelines.append(c_pipeline)
            model, _, _ = deploy(cml, f"bench-{name}", model_dir, args.replicas, version, policy_env)
            key = cml.get_model(model.id).access_key
            headers = {"Authorization": f"Bearer {ws.api_key}"}
            arms_seen: dict[str, int] = {}
            explored_seen = [0]

            def body(request: str) -> bytes:
                return json.dumps({"accessKey": key, "request": json.loads(request)}).encode()

            def ok(answer: dict, n: int = 1) -> bool:
                prediction = answer.get("response", {})
                prediction = prediction.get("prediction", prediction)
                predictions = prediction.get("predictions", [])
                if not (answer.get("success") is True and len(predictions) == n):
                    return False
                for p in predictions:
                    if versions.get(p.get("arm")) != p.get("model_version"):
                        return False
                    if abs(sum(p["offer_propensities"].values()) - 1.0) > 1e-9:
                        return False
                    if p["propensity"] != p["offer_propensities"][p["offer"]]:
                        return False
                    arms_seen[p["arm"]] = arms_seen.get(p["arm"], 0) + 1
                    explored_seen[0] += bool(p["explored"])
                return True

            base_one = min(statistics.median(in_process_ms(pl, one, 300)) for pl in pipelines)
            base_hundred = min(statistics.median(in_process_ms(pl, hundred, 100)) for pl in pipelines)
            url = ws.model_service_url.rstrip("/") + "/model"
            run = lambda bs, n, c, size: asyncio.run(load(url, headers, [body(b) for b in bs], n=n,  # noqa: E731
                                                          concurrency=c, check=lambda a: ok(a, size)))
            run(single_bodies, 200, 2, 1)  # warm-up
            arms_seen.clear()
            explored_seen[0] = 0
            r = {
                "compiled": compiled is not None, "note": note,
                "in_process_1": base_one, "in_process_100": base_hundred,
                "single_c1": run(single_bodies, 2000, 1, 1), "single_c8": run(single_bodies, args.requests, 8, 1),
                "batch_c1": run([batch_body], 300, 1, 100), "batch_c8": run([batch_body], 1000, 8, 100),
            }
            results[name] = r
            print(f"\n{name} ({family.estimator}, {'ONNX' if r['compiled'] else 'skops'}: {note})")
            print(f"  in-process predict_proba{' (the faster model)' if two_models else ''}: 1 customer x 3 offers "
                  f"{r['in_process_1']:.3f} ms, 100 customers {r['in_process_100']:.3f} ms (median)")
            if two_models:
                total = sum(arms_seen.values())
                print(f"  policy: challenger share {args.challenger_share:g}, epsilon {args.epsilon:g}; answers by arm "
                      + ", ".join(f"{a} {k / total:.3f}" for a, k in sorted(arms_seen.items()))
                      + f"; explored {explored_seen[0] / total:.3f} of {total:,} customers")
            for label, base in (("single", r["in_process_1"]), ("batch", r["in_process_100"])):
                for c in (1, 8):
                    m = r[f"{label}_c{c}"]
                    print(f"  HTTP {label:6} c={c}: p50 {m['p50']:.3f} ms, p99 {m['p99']:.3f} ms, "
                          f"{m['rps']:,.0f} req/s, {m['errors']} errors; p50 ratio {m['p50'] / base:.3f}")
    default = results.get(args.default_family) or next(iter(results.values()))
    ratio = default["single_c1"]["p50"] / default["in_process_1"]
    errors = sum(m["errors"] for r in results.values() for k, m in r.items() if k.startswith(("single", "batch")))
    mode = f" [two models: challenger share {args.challenger_share:g}, epsilon {args.epsilon:g}]" if two_models else ""
    print(f"endpoint: p50 ratio {ratio:.3f} (HTTP / in-process), {default['single_c8']['rps']:.0f} req/s at "
          f"concurrency 8, {errors} errors{mode}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
