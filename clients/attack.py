"""The attack harness as a Flower mod: some simulated sites misbehave on purpose.

:mod:`clients.app`'s handlers know nothing of attacks; this mod wraps them. Flower builds the
ClientApp at import, before any run config exists, so the mod is always installed and reads
``attack`` from the run config inside each message: with ``attack.kind=none`` and no dropout it
hands the message straight to the handler and returns the handler's reply untouched.

For an attacking site (chosen per run by the seed, :func:`fedretrain.attacks.attackers`) it

- raises :class:`SiteDropout` before a train handler runs (``attack.dropout``, any site);
- for ``slow``, answers each train message ``attack.delay_s`` late, honestly (a site slower
  than ``validation.reply_timeout_s``);
- for ``label_flip``, hands the train handler a node config whose ``label-map`` is
  ``reversed``, so the site trains on labels y -> K-1-y;
- rewrites a train reply's update after the handler (``nan``, ``inf``, ``scale``,
  ``sign_flip``, ``gaussian``: :func:`fedretrain.attacks.poison`) and, for
  ``num_examples_lie``, its ``num-examples``;
- for ``bad_stats``, corrupts a monitor reply's statistics
  (:func:`fedretrain.attacks.corrupt_stats`); for ``bad_scores``, its per-model scores
  (:func:`fedretrain.attacks.corrupt_scores`, adaptation=clustered).

A train update is poisoned with the generator seeded by (seed, site, round), the one the
handler seeds its batch order from, so an attack is repeatable.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedretrain.attacks import (
    AttackKind,
    attackers,
    corrupt_scores,
    corrupt_stats,
    drops_out,
    poison,
)
from fedretrain.config import AttackConfig, from_yaml
from fedretrain.flower.records import (
    DATA_DIR_KEY,
    MODEL_SCORES_KEY,
    MONITOR_QUERY,
    NUM_EXAMPLES_KEY,
    SITE_ID_KEY,
    Instruction,
)

LABEL_MAP_KEY = "label-map"  # node config: how the train handler reads its site's labels
REVERSED_LABELS = "reversed"  # the one label map: y -> K-1-y


class SiteDropout(RuntimeError):
    """The attack harness made this site skip the round."""


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: the run's ``attack`` applied around the ClientApp's handlers."""
    if not msg.has_content() or "config" not in msg.content.config_records:
        return call_next(msg, context)
    instruction = Instruction.from_record(msg.content.config_records["config"])
    attack, seed = _attack_of(instruction.config_yaml)
    if attack.kind is AttackKind.none and attack.dropout <= 0:
        return call_next(msg, context)
    message_type = msg.metadata.message_type
    if message_type == MessageType.TRAIN:
        return _train(msg, context, call_next, instruction, attack, seed)
    if message_type == MONITOR_QUERY:
        return _monitor(msg, context, call_next, attack, seed)
    return call_next(msg, context)


@lru_cache(maxsize=4)  # every message carries the run config; parse it once per worker
def _attack_of(config_yaml: str) -> tuple[AttackConfig, int]:
    cfg = from_yaml(config_yaml)
    return cfg.attack, cfg.runtime.seed


def _train(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    instruction: Instruction,
    attack: AttackConfig,
    seed: int,
) -> Message:
    site = _site_id(context)
    attacking = _is_attacker(attack, seed, site, context)
    attacking = attacking and (instruction.period or 0) >= attack.from_period
    if drops_out(seed, site, instruction.server_round, attack.dropout):
        raise SiteDropout(f"site {site} dropped out (attack.dropout={attack.dropout})")
    if not attacking:
        return call_next(msg, context)
    if attack.kind is AttackKind.slow:  # a site slower than the server waits for
        time.sleep(attack.delay_s)
        return call_next(msg, context)
    if attack.kind is AttackKind.label_flip:
        context = _with_node_config(context, LABEL_MAP_KEY, REVERSED_LABELS)
    reply = call_next(msg, context)
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return reply  # the site declined the round: nothing to poison
    rng = np.random.default_rng(np.random.SeedSequence([seed, site, instruction.server_round]))
    return _poisoned(msg, reply, attack, rng)


def _poisoned(
    msg: Message, reply: Message, attack: AttackConfig, rng: np.random.Generator
) -> Message:
    """What an attacking site sends in place of its honest train ``reply`` to ``msg``."""
    reference = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    honest = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    sent = poison(reference, honest, attack.kind, rng, attack.scale, attack.noise_std)
    content = RecordDict(dict(reply.content.items()))  # a new record: the reply stays as it was
    content["arrays"] = ArrayRecord({k: Array(v) for k, v in sent.items()})
    if attack.kind is AttackKind.num_examples_lie:
        metrics = dict(reply.content.metric_records["metrics"])
        metrics[NUM_EXAMPLES_KEY] = attack.claimed_examples
        content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


def _monitor(
    msg: Message, context: Context, call_next: ClientAppCallable, attack: AttackConfig, seed: int
) -> Message:
    reply = call_next(msg, context)
    if attack.kind not in (AttackKind.bad_stats, AttackKind.bad_scores):
        return reply
    if not _is_attacker(attack, seed, _site_id(context), context):
        return reply
    records = reply.content.array_records if not reply.has_error() else {}
    content = RecordDict(dict(reply.content.items())) if records else None
    if attack.kind is AttackKind.bad_stats and content is not None and "stats" in records:
        bad = corrupt_stats({k: v.numpy() for k, v in records["stats"].items()})
        content["stats"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in bad.items()})
    elif (
        attack.kind is AttackKind.bad_scores and content is not None and MODEL_SCORES_KEY in records
    ):
        table = corrupt_scores(records[MODEL_SCORES_KEY]["table"].numpy())
        content[MODEL_SCORES_KEY] = ArrayRecord({"table": Array(table)})
    else:
        return reply
    return Message(content=content, reply_to=msg)


def _site_id(context: Context) -> int:
    """The site id the handlers give this node: its site id when deployed, else its partition."""
    if context.node_config.get(DATA_DIR_KEY):
        return int(cast(int, context.node_config.get(SITE_ID_KEY, 0)))
    return int(cast(int, context.node_config["partition-id"]))


def _is_attacker(attack: AttackConfig, seed: int, site: int, context: Context) -> bool:
    if attack.kind is AttackKind.none:
        return False
    num_partitions = int(cast(int, context.node_config["num-partitions"]))
    return site in attackers(num_partitions, attack.fraction, seed)


def _with_node_config(context: Context, key: str, value: str) -> Context:
    """``context`` with one more node-config entry; the run's state is shared, not copied."""
    node_config = {**context.node_config, key: value}
    return Context(
        context.run_id,
        context.node_id,
        node_config,
        context.state,
        context.run_config,
        context.series_id,
    )
