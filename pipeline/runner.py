"""The distributor: a pool of Ray actors, each holding a `ShardColorizer`, fed whole shards.

The driver passes shard descriptions and receives statistics; it never touches pixels.
Each actor has at most `in_flight` shards queued (so it never idles between shards, and
memory stays bounded). A shard whose actor died (or which raised) is retried, on another
actor where there is one, up to `max_attempts`; after that it is reported as failed and the
run goes on with the rest.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from pipeline.shards import Shard
from pipeline.worker import ColorizeOptions, ShardColorizer

log = logging.getLogger(__name__)
ACTOR_NAME = "colorizer-{run}-{index}"  # unique per run: runs may share a cluster


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start Ray locally, in-process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=os.environ.get("ARCHIVE_COLORIZE_RAY_TEMP"),
    )


def default_actor_count() -> int:
    """One actor per GPU in the cluster, else one (it uses every CPU thread it is given)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus if gpus > 0 else 1


@dataclass
class ActorSpec:
    model: str
    options: ColorizeOptions
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int | None = None
    s3_endpoint_url: str | None = None
    max_restarts: int = 3

    @classmethod
    def for_cluster(
        cls, model: str, options: ColorizeOptions, actors: int | None, **kw: Any
    ) -> ActorSpec:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        n = actors or default_actor_count()
        if gpus:
            return cls(model, options, n, cpus_per_actor=1, gpus_per_actor=1, **kw)
        # CPU: share the CPUs between actors but leave room for Ray's own tasks (a full claim
        # on every CPU starves them); torch uses `threads` regardless of the reservation.
        per_actor = max(0.5, min(1.0, cpus / n - 0.25))
        kw.setdefault("threads", max(1, int(cpus // n)))
        return cls(model, options, n, cpus_per_actor=per_actor, gpus_per_actor=0, **kw)


def start_actors(spec: ActorSpec, run: str) -> list[Any]:
    actor_cls = ray.remote(ShardColorizer)
    return [
        actor_cls.options(
            name=ACTOR_NAME.format(run=run, index=i),
            num_cpus=spec.cpus_per_actor,
            num_gpus=spec.gpus_per_actor,
            max_restarts=spec.max_restarts,
            max_task_retries=0,  # our own retry below decides where a shard goes next
        ).remote(
            spec.model,
            spec.options,
            threads=spec.threads,
            s3_endpoint_url=spec.s3_endpoint_url,
        )
        for i in range(spec.actors)
    ]


@dataclass
class RunOutcome:
    done: list[dict[str, Any]] = field(default_factory=list)  # stats of committed shards
    failed: list[dict[str, Any]] = field(default_factory=list)  # {shard, error, attempts}
    retries: int = 0


def run_shards(
    shards: Sequence[Shard],
    dest: str,
    actors: Sequence[Any],
    *,
    in_flight: int = 2,
    max_attempts: int = 3,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Process `shards` on `actors`; returns what was committed and what failed."""
    outcome = RunOutcome()
    queue: deque[tuple[Shard, int, int | None]] = deque((s, 1, None) for s in shards)
    running: dict[Any, tuple[Shard, int, int]] = {}  # ref -> (shard, attempt, actor index)
    load = [0] * len(actors)
    while queue or running:
        while queue:
            shard, attempt, avoid = queue[0]
            choices = [i for i in range(len(actors)) if load[i] < in_flight]
            if not choices:
                break
            preferred = [i for i in choices if i != avoid] or choices
            actor_i = min(preferred, key=lambda i: load[i])
            queue.popleft()
            ref = actors[actor_i].process.remote(shard, dest, attempt)
            running[ref] = (shard, attempt, actor_i)
            load[actor_i] += 1
        ready, _ = ray.wait(list(running), num_returns=1)
        ref = ready[0]
        shard, attempt, actor_i = running.pop(ref)
        load[actor_i] -= 1
        try:
            stats = ray.get(ref)
        except (RayActorError, RayError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if attempt < max_attempts:
                log.warning(
                    "shard %s failed (attempt %d): %s; retrying", shard.name, attempt, reason
                )
                outcome.retries += 1
                queue.append((shard, attempt + 1, actor_i))
            else:
                log.error("shard %s failed %d times: %s", shard.name, attempt, reason)
                outcome.failed.append({"shard": shard.name, "error": reason, "attempts": attempt})
            continue
        outcome.done.append(stats)
        if on_shard is not None:
            on_shard(stats)
    return outcome


def stop_actors(actors: Sequence[Any]) -> None:
    for actor in actors:
        ray.kill(actor)
