"""Model deployments: ``replicas`` real replica processes each, supervised on the event loop.

Life of a deployment (CML's status strings):

``pending``    created (or restart requested); the answer of the create/restart call
``deploying``  its replicas are starting: each imports the entry point and, if the module
               defines ``build_check()``, calls it; a replica is ready only once that passed
``deployed``   every replica is ready: ``POST /model`` with the model's access key reaches it
``failed``     a replica could not start (``status_message`` says which and why), or a
               replica that ended could not be replaced
``stopping`` → ``stopped``  after ``:stop`` (calls in flight may finish for ``--kill-grace``)

A replica whose process ends while deployed is replaced (the call it was serving gets HTTP
500). Deployments that were pending, deploying or deployed when the server stopped are deployed
again when it starts (replicas are the server's children and end with it); ``stopping`` ones
end ``stopped``. All transitions happen on the event loop; the API's threads ask for them
through :meth:`DeploymentSupervisor.call`, so they never race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from .builds import find_entry_point, model_environment
from .config import WorkspaceConfig
from .model_metrics import MetricsStore
from .model_pool import Replica, ReplicaPool, ReplicaStartError, spawn_replica, terminate, wait_exit
from .model_router import ModelRouter
from .store import Doc, Store
from .util import now_ts

log = logging.getLogger("cml_workspace.deployments")


class DeploymentStatus(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE = (DeploymentStatus.PENDING.value, DeploymentStatus.DEPLOYING.value, DeploymentStatus.DEPLOYED.value)


class DeploymentSupervisor:
    def __init__(self, config: WorkspaceConfig, store: Store, router: ModelRouter, metrics: MetricsStore):
        self.config = config
        self.store = store
        self.router = router
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[str, ReplicaPool] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._generation: dict[str, int] = {}
        self._spawn_args: dict[str, dict] = {}
        self._closing = False

    # -- from the API's threads ------------------------------------------------------------------
    def call(self, function: Callable[..., Coroutine], *args: Any, timeout: float = 30.0) -> Any:
        """Run ``function(*args)`` on the event loop and wait for its result."""
        if self.loop is None:
            raise RuntimeError("the model service is not running")
        return asyncio.run_coroutine_threadsafe(function(*args), self.loop).result(timeout)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.config.deployments_dir.mkdir(parents=True, exist_ok=True)
        for model in self.store.list("models"):
            self.router.add_model(model["access_key"], model["id"], bool(model.get("auth_enabled", True)))
        again = 0
        for doc in self.store.list("deployments", statuses=ACTIVE):
            await self.deploy(doc["id"], "deploying again: the workspace restarted")
            again += 1
        for doc in self.store.list("deployments", statuses=[DeploymentStatus.STOPPING.value]):
            self.store.update("deployments", doc["id"], {
                "status": DeploymentStatus.STOPPED.value, "stopped_at": doc.get("stopped_at") or now_ts(),
                "status_message": "stopped (the workspace restarted while it was stopping)", "updated_at": now_ts()})
        if again:
            log.info("%d model deployment(s) deploying again after the restart", again)

    async def close(self) -> None:
        """Server shutdown: end every replica; statuses stay (deployed again at the next start)."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(pool.shutdown(grace=1.0) for pool in pools), return_exceptions=True)

    # -- models (routing table) ------------------------------------------------------------------
    async def add_model(self, model: Doc) -> None:
        self.router.add_model(model["access_key"], model["id"], bool(model.get("auth_enabled", True)))

    async def remove_model(self, model: Doc) -> None:
        self.router.remove_model(model["access_key"])

    # -- transitions (event loop) ----------------------------------------------------------------
    def _bump(self, deployment_id: str) -> int:
        generation = self._generation.get(deployment_id, 0) + 1
        self._generation[deployment_id] = generation
        return generation

    def _set(self, deployment_id: str, generation: int | None, **changes: Any) -> Doc | None:
        """Record a transition, unless a later one (stop, restart) superseded it."""
        if generation is not None and (self._generation.get(deployment_id) != generation or self._closing):
            return None
        changes["updated_at"] = now_ts()
        return self.store.update("deployments", deployment_id, changes)

    def _detach(self, deployment_id: str) -> tuple[asyncio.Task | None, ReplicaPool | None]:
        """Take the deployment's task and pool off duty (no new calls reach the pool)."""
        task = self._tasks.pop(deployment_id, None)
        if task is not None:
            task.cancel()
        pool = self._pools.pop(deployment_id, None)
        if pool is not None:
            pool.close()
            self._unroute(pool)
        return task, pool

    def _unroute(self, pool: ReplicaPool) -> None:
        for route in self.router.routes.values():
            if pool in route.pools:
                route.pools.remove(pool)

    async def deploy(self, deployment_id: str, message: str) -> Doc | None:
        """Create or restart: (re)start the replicas of a deployment. Returns its document."""
        generation = self._bump(deployment_id)
        old_task, old_pool = self._detach(deployment_id)
        doc = self._set(deployment_id, None, status=DeploymentStatus.PENDING.value, status_message=message,
                        stopped_at=None)
        if doc is None:
            return None
        self._tasks[deployment_id] = asyncio.get_running_loop().create_task(
            self._run(deployment_id, generation, old_task, old_pool), name=f"deploy-{deployment_id}")
        return doc

    async def stop(self, deployment_id: str) -> Doc | None:
        doc = self.store.get("deployments", deployment_id)
        if doc is None or doc["status"] == DeploymentStatus.STOPPED.value:
            return doc
        generation = self._bump(deployment_id)
        old_task, old_pool = self._detach(deployment_id)
        doc = self._set(deployment_id, None, status=DeploymentStatus.STOPPING.value, status_message="stopping")
        self._tasks[deployment_id] = asyncio.get_running_loop().create_task(
            self._finish_stop(deployment_id, generation, old_task, old_pool), name=f"stop-{deployment_id}")
        return doc

    async def forget(self, deployment_id: str) -> None:
        """The deployment's model is deleted: end its replicas, whatever its status."""
        self._bump(deployment_id)
        task, pool = self._detach(deployment_id)
        await self._wind_down(task, pool, drain=0.0)

    async def _wind_down(self, task: asyncio.Task | None, pool: ReplicaPool | None, *, drain: float) -> None:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pool is not None:
            await pool.shutdown(grace=self.config.kill_grace_s, drain=drain)

    async def _finish_stop(self, deployment_id: str, generation: int, old_task, old_pool) -> None:
        await self._wind_down(old_task, old_pool, drain=self.config.kill_grace_s)
        self._set(deployment_id, generation, status=DeploymentStatus.STOPPED.value, status_message="stopped",
                  stopped_at=now_ts())
        if self._tasks.get(deployment_id) is asyncio.current_task():
            self._tasks.pop(deployment_id, None)
        log.info("deployment %s stopped", deployment_id)

    async def _run(self, deployment_id: str, generation: int, old_task, old_pool) -> None:
        pool: ReplicaPool | None = None
        try:
            await self._wind_down(old_task, old_pool, drain=self.config.kill_grace_s)
            if self._generation.get(deployment_id) != generation:
                return
            try:
                spawn, pool, route = self._prepare(deployment_id)
            except ReplicaStartError as exc:
                self._set(deployment_id, generation, status=DeploymentStatus.FAILED.value, status_message=str(exc))
                return
            replicas = int(spawn.pop("replicas"))
            self._spawn_args[deployment_id] = spawn
            self._pools[deployment_id] = pool
            self._set(deployment_id, generation, status=DeploymentStatus.DEPLOYING.value,
                      status_message=f"starting {replicas} replica(s)")
            started = await _start_all([spawn_replica(index=i, **spawn) for i in range(replicas)])
            for replica in started:
                pool.add(replica)
            route.pools.append(pool)
            self._set(deployment_id, generation, status=DeploymentStatus.DEPLOYED.value,
                      status_message=f"{replicas} replica(s) ready")
            log.info("deployment %s deployed (%d replica(s))", deployment_id, replicas)
        except ReplicaStartError as exc:
            log.warning("deployment %s failed: %s", deployment_id, exc)
            self._set(deployment_id, generation, status=DeploymentStatus.FAILED.value, status_message=str(exc))
            if pool is not None:
                self._detach_pool(deployment_id, pool)
                await pool.shutdown(grace=self.config.kill_grace_s)
        except asyncio.CancelledError:
            if pool is not None:
                self._detach_pool(deployment_id, pool)
                await pool.shutdown(grace=1.0)
            raise
        finally:
            if self._tasks.get(deployment_id) is asyncio.current_task():
                self._tasks.pop(deployment_id, None)

    def _detach_pool(self, deployment_id: str, pool: ReplicaPool) -> None:
        pool.close()
        self._unroute(pool)
        if self._pools.get(deployment_id) is pool:
            self._pools.pop(deployment_id)

    def _prepare(self, deployment_id: str):
        """The replicas' start arguments, an empty pool, and the model's route."""
        doc = self.store.get("deployments", deployment_id)
        build = self.store.get("builds", doc["build_id"]) if doc else None
        model = self.store.get("models", doc["model_id"]) if doc else None
        if doc is None or build is None or model is None:
            raise ReplicaStartError("the deployment's build or model no longer exists")
        project = self.store.get("projects", doc["project_id"]) or {"id": doc["project_id"]}
        project_dir = self.config.project_files_dir(doc["project_id"])
        entry = find_entry_point(self.config, project_dir, build["file_path"])
        if entry is None:
            raise ReplicaStartError(f"the build's file_path {build['file_path']!r} is gone from the project")
        env = model_environment(self.config, project, cpu=float(doc["cpu"]), memory=float(doc["memory"]),
                                extra=doc.get("environment") or {})
        env.update({
            "CML_MODEL_ID": model["id"], "CML_MODEL_BUILD_ID": build["id"], "CML_MODEL_DEPLOYMENT_ID": doc["id"],
            "CML_MODEL_CRN": model["crn"], "CML_MODEL_BUILD_CRN": build["crn"], "CML_MODEL_DEPLOYMENT_CRN": doc["crn"],
        })
        route = self.router.add_model(model["access_key"], model["id"], bool(model.get("auth_enabled", True)))
        pool = ReplicaPool(deployment_id, (doc["crn"], build["crn"], model["crn"]), self.metrics.buffer,
                           self._replica_lost)
        folder = self.config.deployments_dir / deployment_id
        spawn = {
            "replicas": doc["replicas"], "python": self.config.python, "entry_file": entry,
            "display": build["file_path"], "function_name": build["function_name"], "cwd": project_dir,
            "env": env, "log_dir": folder, "start_timeout": self.config.model_start_timeout_s,
            "grace": self.config.kill_grace_s,
        }
        return spawn, pool, route

    # -- replicas that end while deployed --------------------------------------------------------
    def _replica_lost(self, pool: ReplicaPool, replica: Replica) -> None:
        if self._closing or self._pools.get(pool.deployment_id) is not pool:
            return
        generation = self._generation.get(pool.deployment_id)
        asyncio.get_running_loop().create_task(self._replace(pool, replica, generation))

    async def _replace(self, pool: ReplicaPool, replica: Replica, generation: int | None) -> None:
        deployment_id = pool.deployment_id
        code = await wait_exit(replica.proc, 2.0)
        log.warning("deployment %s: replica %d ended (exit code %s): starting a new one",
                    deployment_id, replica.index, code)
        await terminate(replica, 1.0)
        spawn = self._spawn_args.get(deployment_id)
        if spawn is None or pool.closed:
            return
        try:
            new = await spawn_replica(index=replica.index, **spawn)
        except ReplicaStartError as exc:
            if self._generation.get(deployment_id) == generation and not pool.closed:
                self._set(deployment_id, generation, status=DeploymentStatus.FAILED.value,
                          status_message=f"replica {replica.index} ended (exit code {code}) and could not "
                                         f"be started again: {exc}")
                self._detach_pool(deployment_id, pool)
                await pool.shutdown(grace=self.config.kill_grace_s)
            return
        if pool.closed or self._generation.get(deployment_id) != generation:
            await terminate(new, 1.0)
            return
        pool.replace(replica, new)

    # -- for /health -----------------------------------------------------------------------------
    def usage(self) -> dict:
        pools = list(self._pools.values())
        return {"deployments_serving": sum(1 for p in pools if not p.closed and p.ready_count),
                "replicas_ready": sum(p.ready_count for p in pools)}


async def _start_all(coroutines: list[Coroutine]) -> list[Replica]:
    """Start replicas together; the first failure cancels (and ends) the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        if failed:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.gather(*(terminate(t.result(), 1.0) for t in done if t.exception() is None))
            raise failed[0].exception()
        return [t.result() for t in tasks]
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(terminate(r, 1.0) for r in results if isinstance(r, Replica)))
        raise
