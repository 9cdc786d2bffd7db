"""The attack harness mod around stand-in handlers, fed real Flower messages (no Ray)."""

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from clients.attack import LABEL_MAP_KEY, REVERSED_LABELS, SiteDropout, attack_mod
from fedretrain.attacks import attackers, drops_out
from fedretrain.config import compose, to_yaml
from fedretrain.flower.records import MONITOR_QUERY, declined_reply, instruction_config

Arrays = dict[str, np.ndarray]

SITES = 10
ATTACKERS = sorted(attackers(SITES, 0.2, seed=0))  # [3, 7]
HONEST = next(p for p in range(SITES) if p not in ATTACKERS)
GLOBAL: Arrays = {"w": np.array([1.0, -2.0, 0.5], np.float32), "step": np.array(4, np.int64)}
LOCAL: Arrays = {"w": np.array([1.5, -1.0, 0.0], np.float32), "step": np.array(4, np.int64)}
STATS: Arrays = {"hist": np.arange(6, dtype=np.int64).reshape(2, 3), "x_sum": np.ones(2)}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


@cache
def _config_yaml(*overrides: str) -> str:
    return to_yaml(compose(["runtime.seed=0", *overrides]))


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _instruction(
    config_yaml: str,
    message_type: str = MessageType.TRAIN,
    server_round: int = 1,
    period: int | None = None,
) -> Message:
    config = instruction_config(config_yaml, num_rounds=3, period=period)
    config["server-round"] = server_round
    content = RecordDict({"arrays": _record(GLOBAL), "config": config})
    return Message(content=content, dst_node_id=1, message_type=message_type)


def _context(partition_id: int) -> Context:
    node_config: dict[str, bool | int | float | str] = {
        "partition-id": partition_id,
        "num-partitions": SITES,
    }
    return Context(1, 1, node_config, RecordDict(), {})


class Recorder:
    """A stand-in handler: remembers what it was called with and replies as a site would."""

    def __init__(self, reply: Callable[[Message], Message] | None = None) -> None:
        self.calls: list[tuple[Message, Context]] = []
        self.replies: list[Message] = []
        self._reply = reply or _train_reply

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls.append((msg, context))
        self.replies.append(self._reply(msg))
        return self.replies[-1]


def _train_reply(msg: Message) -> Message:
    metrics = MetricRecord({"num-examples": 10, "train-loss": 0.5})
    return Message(content=RecordDict({"arrays": _record(LOCAL), "metrics": metrics}), reply_to=msg)


def _monitor_reply(msg: Message) -> Message:
    content = RecordDict({"stats": _record(STATS), "site": MetricRecord({"site-id": 0})})
    return Message(content=content, reply_to=msg)


def _arrays(reply: Message, name: str = "arrays") -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records[name].items()}


@pytest.mark.parametrize("site", [HONEST, *ATTACKERS])
@pytest.mark.parametrize("message_type", [MessageType.TRAIN, MessageType.EVALUATE, MONITOR_QUERY])
def test_with_attack_none_the_handler_sees_and_sends_the_very_objects(
    site: int, message_type: str
) -> None:
    handler = Recorder()
    msg, context = _instruction(_config_yaml("attack=none"), message_type), _context(site)
    reply = attack_mod(msg, context, handler)
    assert reply is handler.replies[0]
    assert handler.calls == [(msg, context)]
    assert handler.calls[0][0] is msg and handler.calls[0][1] is context


def test_sign_flip_sends_global_minus_the_local_step_for_an_attacker_only() -> None:
    config = _config_yaml("attack=sign_flip", "attack.fraction=0.2", "attack.scale=1.0")
    honest_handler, attacker_handler = Recorder(), Recorder()
    honest = attack_mod(_instruction(config), _context(HONEST), honest_handler)
    assert honest is honest_handler.replies[0]

    reply = attack_mod(_instruction(config), _context(ATTACKERS[0]), attacker_handler)
    sent = _arrays(reply)
    expected = GLOBAL["w"] - (LOCAL["w"] - GLOBAL["w"])
    np.testing.assert_array_equal(sent["w"], expected)
    assert sent["w"].dtype == np.float32
    np.testing.assert_array_equal(sent["step"], LOCAL["step"])  # integer buffers untouched
    assert reply.content.metric_records["metrics"]["num-examples"] == 10
    np.testing.assert_array_equal(_arrays(attacker_handler.replies[0])["w"], LOCAL["w"])


def test_num_examples_lie_changes_only_the_claimed_count() -> None:
    config = _config_yaml("attack=num_examples_lie", "attack.fraction=0.2")
    handler = Recorder()
    reply = attack_mod(_instruction(config), _context(ATTACKERS[1]), handler)
    metrics = reply.content.metric_records["metrics"]
    assert dict(metrics) == {"num-examples": 1_000_000_000, "train-loss": 0.5}
    np.testing.assert_array_equal(_arrays(reply)["w"], LOCAL["w"])
    assert handler.replies[0].content.metric_records["metrics"]["num-examples"] == 10


def test_label_flip_hands_an_attacker_a_reversed_label_map_from_its_period() -> None:
    config = _config_yaml("attack=label_flip", "attack.fraction=0.2", "attack.from_period=2")
    for site, period, flipped in [
        (ATTACKERS[0], 2, True),
        (ATTACKERS[0], 3, True),
        (ATTACKERS[0], 1, False),  # before attack.from_period it behaves
        (HONEST, 2, False),
    ]:
        handler, context = Recorder(), _context(site)
        attack_mod(_instruction(config, period=period), context, handler)
        seen = handler.calls[0][1]
        assert (seen.node_config.get(LABEL_MAP_KEY) == REVERSED_LABELS) is flipped
        assert LABEL_MAP_KEY not in context.node_config  # the caller's context is left alone
        if flipped:
            assert seen.state is context.state
            assert {**seen.node_config, LABEL_MAP_KEY: None} == {
                **context.node_config,
                LABEL_MAP_KEY: None,
            }


def test_dropout_raises_before_the_handler_runs_as_the_draw_says() -> None:
    config = _config_yaml("attack=dropout")
    for site in range(SITES):
        for server_round in range(1, 6):
            handler = Recorder()
            msg = _instruction(config, server_round=server_round)
            if drops_out(0, site, server_round, 0.3):
                with pytest.raises(SiteDropout, match=f"site {site} dropped out"):
                    attack_mod(msg, _context(site), handler)
                assert handler.calls == []
            else:
                assert attack_mod(msg, _context(site), handler) is handler.replies[0]


def test_a_declined_round_passes_through_an_attacker_untouched() -> None:
    config = _config_yaml("attack=nan_update", "attack.fraction=0.2")
    handler = Recorder(lambda msg: declined_reply(msg, "no training data in period 0"))
    reply = attack_mod(_instruction(config), _context(ATTACKERS[0]), handler)
    assert reply is handler.replies[0]


def test_bad_stats_corrupts_an_attackers_monitor_reply_only() -> None:
    config = _config_yaml("attack=bad_stats", "attack.fraction=0.2")
    monitor = _instruction(config, MONITOR_QUERY)
    honest_handler = Recorder(_monitor_reply)
    assert attack_mod(monitor, _context(HONEST), honest_handler) is honest_handler.replies[0]

    handler = Recorder(_monitor_reply)
    reply = attack_mod(monitor, _context(ATTACKERS[0]), handler)
    stats = _arrays(reply, "stats")
    np.testing.assert_array_equal(stats["hist"], STATS["hist"] - 1001)
    assert np.isnan(stats["x_sum"]).all()
    assert list(reply.content.keys()) == ["stats", "site"]
    np.testing.assert_array_equal(_arrays(handler.replies[0], "stats")["hist"], STATS["hist"])

    trained = attack_mod(_instruction(config), _context(ATTACKERS[0]), Recorder())
    np.testing.assert_array_equal(_arrays(trained)["w"], LOCAL["w"])  # training left honest


def test_installed_on_a_client_app_the_mod_wraps_its_handlers() -> None:
    app = ClientApp(mods=[attack_mod])
    handler = Recorder()
    app.train()(handler)
    config = _config_yaml("attack=scale", "attack.fraction=0.2", "attack.scale=10.0")
    reply = app(_instruction(config), _context(ATTACKERS[0]))
    expected = GLOBAL["w"] + 10.0 * (LOCAL["w"] - GLOBAL["w"])
    np.testing.assert_allclose(_arrays(reply)["w"], expected, rtol=1e-6)
    assert len(handler.calls) == 1


def test_the_train_handler_reads_labels_through_the_node_configs_label_map() -> None:

    from clients.app import _train_data
    from fedretrain.tasks.dataset import ArrayDataset

    data = ArrayDataset(np.zeros((4, 1), np.float32), np.array([0, 1, 2, 2]), num_classes=3)
    assert _train_data(data, _context(0)) is data
    flipped = _train_data(data, Context(1, 1, {LABEL_MAP_KEY: REVERSED_LABELS}, RecordDict(), {}))
    assert flipped.y.tolist() == [2, 1, 0, 0] and flipped.x is data.x
    with pytest.raises(ValueError, match="the only label map is 'reversed'"):
        _train_data(data, Context(1, 1, {LABEL_MAP_KEY: "shuffled"}, RecordDict(), {}))
