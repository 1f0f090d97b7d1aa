"""The distributor: a pool of Ray actors, each holding a `ShardColorizer`, fed whole shards.

The driver passes shard descriptions and receives statistics; it never touches pixels.
Each actor has at most `in_flight` shards queued (so it never idles between shards, and
memory stays bounded). A shard whose actor died (or which raised) is retried, on another
actor where there is one, up to `max_attempts`; after that it is reported as failed and the
run goes on with the rest. An actor that died is given no shard until Ray has restarted it
(a probe of it answers): a shard sent to an actor that is still restarting would fail at
once, and the attempts of a shard could all be spent while it restarts.

Actors are sized per node (`plan_slots`, from `ray.nodes()`): by default one per GPU, else one
per CPU node with that node's threads. Every few seconds the pool looks at the cluster again:
actors of nodes that died are dropped, and nodes that joined get actors of their own.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.archive.shards import Shard
from pipeline.colorize.worker import WORKER_ENV, ColorizeOptions, ShardColorizer

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


@dataclass(frozen=True)
class Slot:
    """Where one actor goes and what it may use: sized from its own node, never from the sum
    over the cluster (`ray.cluster_resources()` adds every node up)."""

    node_id: str
    cpus: float  # reserved with Ray
    gpus: float
    threads: int  # torch threads: the node's CPUs it shares with no other actor of ours


def node_threads(cpus: float) -> int:
    """A node's CPUs minus one for Ray itself (raylet, object transfers) on nodes of 3 or more."""
    return max(1, int(cpus) - 1 if cpus > 2 else int(cpus))


def plan_slots(nodes: list[dict[str, Any]], actors: int | None = None) -> list[Slot]:
    """Actor slots over the alive nodes of `ray.nodes()`. By default one actor per GPU, else
    one per CPU node using that node's threads. `actors` = N spreads N actors round-robin over
    the nodes (GPU nodes first), each sized by the share of its node it gets."""
    alive = [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    alive.sort(key=lambda n: (-n["Resources"].get("GPU", 0), n["NodeID"]))
    if not alive:
        raise RuntimeError("no alive Ray node with a CPU: is the cluster up?")
    if actors is None:
        per_node = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) or 1 for n in alive}
    else:
        per_node = {n["NodeID"]: 0 for n in alive}
        for i in range(actors):
            per_node[alive[i % len(alive)]["NodeID"]] += 1
    slots = []
    for node in alive:
        count = per_node[node["NodeID"]]
        if count == 0:
            continue
        cpus, gpus = node["Resources"]["CPU"], node["Resources"].get("GPU", 0)
        gpu_each = 1.0 if gpus >= count else 0.0
        # leave room for Ray's own tasks on the node (a full claim on every CPU starves them)
        cpu_each = max(0.5, min(1.0, cpus / count - 0.25))
        threads = max(1, node_threads(cpus) // count)
        slots += [Slot(node["NodeID"], cpu_each, gpu_each, threads)] * count
    return slots


def alive_node_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


@dataclass
class ActorSpec:
    model: str
    options: ColorizeOptions
    s3_endpoint_url: str | None = None
    max_restarts: int = 3


def start_actor(spec: ActorSpec, slot: Slot, name: str) -> Any:
    """A `ShardColorizer` pinned to its slot's node (it dies with the node: its shards are
    then retried on the others)."""
    return (
        ray.remote(ShardColorizer)
        .options(
            name=name,
            num_cpus=slot.cpus,
            num_gpus=slot.gpus,
            max_restarts=spec.max_restarts,
            max_task_retries=0,  # our own retry below decides where a shard goes next
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
            runtime_env={"env_vars": dict(WORKER_ENV)},
        )
        .remote(
            spec.model, spec.options, threads=slot.threads, s3_endpoint_url=spec.s3_endpoint_url
        )
    )


class ActorPool:
    """Our actors, one per slot, and where they run. With `grow`, nodes that join the cluster
    mid-run get actors of their own (autoscaling); actors of nodes that died are dropped."""

    def __init__(self, spec: ActorSpec, run: str, actors: int | None = None) -> None:
        self.spec, self.run, self.grow = spec, run, actors is None
        self.actors: list[Any] = []
        self.nodes: list[str] = []
        self.dead: set[int] = set()
        for slot in plan_slots(ray.nodes(), actors):
            self._add(slot)

    def _add(self, slot: Slot) -> None:
        name = ACTOR_NAME.format(run=self.run, index=len(self.actors))
        self.actors.append(start_actor(self.spec, slot, name))
        self.nodes.append(slot.node_id)

    def refresh(self) -> list[int]:
        """Drop actors whose node is gone; start actors on new nodes. Returns new indices."""
        alive = alive_node_ids()
        self.dead |= {i for i, node in enumerate(self.nodes) if node not in alive}
        if not self.grow:
            return []
        known = set(self.nodes)
        joined = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in known]
        before = len(self.actors)
        for slot in plan_slots(joined) if joined else []:
            log.info("node %s joined: starting an actor there", slot.node_id[:8])
            self._add(slot)
        return list(range(before, len(self.actors)))

    def usable(self) -> list[int]:
        return [i for i in range(len(self.actors)) if i not in self.dead]

    def stop(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


@dataclass
class RunOutcome:
    done: list[dict[str, Any]] = field(default_factory=list)  # stats of committed shards
    failed: list[dict[str, Any]] = field(default_factory=list)  # {shard, error, attempts}
    retries: int = 0


def run_shards(
    shards: Sequence[Shard],
    dest: str,
    pool: ActorPool,
    *,
    in_flight: int = 2,
    max_attempts: int = 3,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
    refresh_seconds: float = 5.0,
) -> RunOutcome:
    """Process `shards` on the pool's actors; returns what was committed and what failed."""
    outcome = RunOutcome()
    queue: deque[tuple[Shard, int, int | None]] = deque((s, 1, None) for s in shards)
    running: dict[Any, tuple[Shard, int, int]] = {}  # ref -> (shard, attempt, actor index)
    load = [0] * len(pool.actors)
    recovering: dict[Any, int] = {}  # a probe of an actor that died -> the actor's index
    refreshed = time.monotonic()
    while queue or running:
        if time.monotonic() - refreshed > refresh_seconds:  # nodes joined or died meanwhile?
            load += [0] * len(pool.refresh())
            refreshed = time.monotonic()
            recovering = {r: i for r, i in recovering.items() if i not in pool.dead}
        waiting = set(recovering.values())
        while queue:
            shard, attempt, avoid = queue[0]
            choices = [i for i in pool.usable() if load[i] < in_flight and i not in waiting]
            if not choices:
                break
            preferred = [i for i in choices if i != avoid] or choices
            actor_i = min(preferred, key=lambda i: load[i])
            queue.popleft()
            ref = pool.actors[actor_i].process.remote(shard, dest, attempt)
            running[ref] = (shard, attempt, actor_i)
            load[actor_i] += 1
        if not running and not recovering:  # every actor is gone: wait for a node, or give up
            load += [0] * len(pool.refresh())
            if not pool.usable():
                raise RuntimeError("no alive actor left: every node of the run is gone")
            continue
        ready, _ = ray.wait([*running, *recovering], num_returns=1, timeout=refresh_seconds)
        if not ready:
            continue
        ref = ready[0]
        if ref in recovering:
            _probed(pool, recovering, recovering.pop(ref), ref)
            continue
        shard, attempt, actor_i = running.pop(ref)
        load[actor_i] -= 1
        try:
            stats = ray.get(ref)
        except (RayActorError, RayError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            load += [0] * len(pool.refresh())  # a lost node: drop its actors
            if isinstance(exc, RayActorError) and actor_i not in set(recovering.values()):
                recovering[_probe(pool, actor_i)] = actor_i  # no shards until it is back
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


def _probe(pool: ActorPool, actor_i: int) -> Any:
    """A call that answers once the actor is up (Ray restarts an actor that died)."""
    return pool.actors[actor_i].__ray_ready__.remote()


def _probed(pool: ActorPool, recovering: dict[Any, int], actor_i: int, ref: Any) -> None:
    """An actor's probe answered: it takes shards again, is probed again (still restarting),
    or is dropped (out of restarts, or its node is gone)."""
    try:
        ray.get(ref)
    except ActorUnavailableError:
        if actor_i not in pool.dead:
            time.sleep(0.2)  # restarting: ask again, without a busy loop
            recovering[_probe(pool, actor_i)] = actor_i
    except RayError:
        log.warning("actor %d is gone for good: its shards go to the others", actor_i)
        pool.dead.add(actor_i)
