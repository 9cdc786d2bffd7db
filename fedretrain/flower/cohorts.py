"""Many simulated sites per Flower node: one message carries a cohort of sites.

Flower's simulation engine runs one ClientApp call per message, and each call costs tens of
milliseconds of scheduling, (de)serialisation and context handling (about 60 ms per site at 10
sites, 118-163 ms at 1,000), while a small site's own work is a few milliseconds. So in simulation
the sites are not Flower nodes: ``runtime.workers`` nodes each serve a cohort of sites, the way
pfl-research's workers do.

Both ends sit around unchanged code:

- on the server, :class:`CohortGrid` stands between the strategy and Flower's grid. It shows one
  node per site, so sampling, reply validation, robust
  aggregation, the DP audit and ``rejections.csv`` act per site as before (site ``s`` is node
  ``1000000 + s``); it packs the messages
  of one call into one message per worker node and unpacks each reply into the sites' replies;
- at the node, :func:`cohort_mod` (the ClientApp's outermost mod) unpacks a cohort and runs each
  site's message through the other mods and the handler as if it had come alone, with the site's
  own node config (``partition-id``), and packs the replies. A site whose handler raises fails
  alone, with Flower's wording of the error.

A site computes exactly what it would as a node of its own: its data, its seeds and its ledger
are keyed by its partition id, never by the node that ran it.

Messages with the same content object (a strategy hands every sampled site the same record) are
packed once: a cohort's global model travels once, not once per site.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Sequence
from typing import cast

from flwr.app import ConfigRecord, Context, Error, Message, Metadata, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

SITE_NODE_BASE = 1_000_000  # site s is node 1000000 + s (node 0 means "no node" in our records)
COHORT_KEY = "cohort"  # a packed message's config record: which part belongs to which site
_SEP = "/"  # a packed record's name: "<part>/<original name>"


def pack(contents: Sequence[RecordDict], sites: Sequence[int], num_sites: int) -> RecordDict:
    """One message's content for ``sites``, site ``sites[i]`` getting ``contents[i]``; the
    same content object is packed once.

    >>> from flwr.app import MetricRecord
    >>> shared = RecordDict({"metrics": MetricRecord({"lr": 0.1})})
    >>> packed = pack([shared, shared], [3, 7], num_sites=10)
    >>> sorted(packed)
    ['0/metrics', 'cohort']
    >>> [(site, dict(c.metric_records["metrics"])) for site, c in unpack(packed)]
    [(3, {'lr': 0.1}), (7, {'lr': 0.1})]
    """
    parts: list[RecordDict] = []
    index: dict[int, int] = {}
    which = []
    for content in contents:
        if id(content) not in index:
            index[id(content)] = len(parts)
            parts.append(content)
        which.append(index[id(content)])
    packed = RecordDict()
    for part, content in enumerate(parts):
        for name, record in content.items():
            packed[f"{part}{_SEP}{name}"] = record
    packed[COHORT_KEY] = ConfigRecord(
        {"sites": [int(s) for s in sites], "parts": which, "num-sites": num_sites}
    )
    return packed


def unpack(packed: RecordDict) -> list[tuple[int, RecordDict]]:
    """Each site's content from a :func:`pack`ed message, in the order they were packed."""
    spec = packed.config_records[COHORT_KEY]
    parts = _split(packed)
    sites, which = cast(list[int], spec["sites"]), cast(list[int], spec["parts"])
    return [(int(s), parts.get(int(p), RecordDict())) for s, p in zip(sites, which, strict=True)]


def _split(packed: RecordDict) -> dict[int, RecordDict]:
    """A packed content's records by the number before their name's ``/`` (a part or a site),
    under their original names."""
    parts: dict[int, RecordDict] = {}
    for name, record in packed.items():
        if name != COHORT_KEY:
            prefix, _, original = name.partition(_SEP)
            parts.setdefault(int(prefix), RecordDict())[original] = record
    return parts


def num_sites_of(packed: RecordDict) -> int:
    return int(cast(int, packed.config_records[COHORT_KEY]["num-sites"]))


def is_cohort(message: Message) -> bool:
    return message.has_content() and COHORT_KEY in message.content.config_records


def pack_replies(replies: Sequence[tuple[int, Message]]) -> RecordDict:
    """The sites' replies as one content: each successful site's records under its id, each
    failed site's error code and reason in the cohort record."""
    packed = RecordDict()
    failed, codes, reasons = [], [], []
    for site, reply in replies:
        if reply.has_error():
            failed.append(site)
            codes.append(int(reply.error.code))
            reasons.append(reply.error.reason or "")
            continue
        for name, record in reply.content.items():
            packed[f"{site}{_SEP}{name}"] = record
    packed[COHORT_KEY] = ConfigRecord(
        {
            "sites": [site for site, _ in replies],
            "failed": failed,
            "codes": codes,
            "reasons": reasons,
        }
    )
    return packed


def unpack_replies(reply: Message, asked: Sequence[Message]) -> list[Message]:
    """The replies of the sites ``asked`` (their own messages, addressed to their ids), from
    their node's reply: a failed node fails every site it served, with its reason."""
    if reply.has_error():
        return [Message(Error(reply.error.code, reply.error.reason), reply_to=m) for m in asked]
    spec = reply.content.config_records[COHORT_KEY]
    errors = {
        int(site): Error(int(code), str(reason))
        for site, code, reason in zip(
            cast(list[int], spec["failed"]),
            cast(list[int], spec["codes"]),
            cast(list[str], spec["reasons"]),
            strict=True,
        )
    }
    contents = _split(reply.content)
    out = []
    for message in asked:
        site = int(message.metadata.dst_node_id) - SITE_NODE_BASE
        if site in errors:
            out.append(Message(errors[site], reply_to=message))
        else:
            out.append(Message(contents.get(site, RecordDict()), reply_to=message))
    return out


def cohort_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: a cohort's sites, each through the rest of the ClientApp on its own.

    A message that is not a cohort (a deployed site, or a simulation with a node per site) goes
    straight on.
    """
    if not is_cohort(msg):
        return call_next(msg, context)
    num_sites = num_sites_of(msg.content)
    replies = []
    for site, content in unpack(msg.content):
        alone = Message(metadata=_addressed_to(msg.metadata, site), content=content)  # type: ignore[call-overload]
        own = Context(
            run_id=context.run_id,
            node_id=SITE_NODE_BASE + site,
            node_config={**context.node_config, "partition-id": site, "num-partitions": num_sites},
            state=RecordDict(),
            run_config=context.run_config,
        )
        try:
            reply = call_next(alone, own)
        except Exception as err:  # noqa: BLE001 - one site's failure is its own, as a node's is
            log.debug("site %d failed:\n%s", site, traceback.format_exc())
            reply = Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, flower_reason(err)), reply_to=alone
            )
        replies.append((site, reply))
    return Message(pack_replies(replies), reply_to=msg)


def flower_reason(err: BaseException) -> str:
    """An exception as Flower's simulation engine words a ClientApp's error, so that a site's
    failure reads the same whether it ran alone or in a cohort
    (:func:`fedretrain.flower.records.error_summary` takes the site's words out of it).

    >>> from fedretrain.flower.records import error_summary
    >>> error_summary(flower_reason(ValueError("bad shape")))
    'bad shape'
    >>> flower_reason(ValueError("bad shape")).splitlines()[1]
    "Exception ValueError occurred. Message: bad shape'>"
    """
    name = type(err).__name__
    return (
        "<class 'flwr.clientapp.exception.ClientAppException'>:"
        f"<'\nException {name} occurred. Message: {err}'>"
    )


def _addressed_to(metadata: Metadata, site: int) -> Metadata:
    return Metadata(
        run_id=metadata.run_id,
        message_id=metadata.message_id,
        src_node_id=metadata.src_node_id,
        dst_node_id=SITE_NODE_BASE + site,
        reply_to_message_id=metadata.reply_to_message_id,
        group_id=metadata.group_id,
        created_at=metadata.created_at,
        ttl=metadata.ttl,
        message_type=metadata.message_type,
        src_task_id=metadata.src_task_id,
        dst_task_id=metadata.dst_task_id,
    )


class CohortGrid(Grid):
    """A simulation's grid as the strategy sees it: one node per site.

    Parameters
    ----------
    grid : Grid
        Flower's grid, with ``workers`` nodes.
    num_sites : int
        The simulated sites; site ``s`` is node :data:`SITE_NODE_BASE` ``+ s`` here and runs
        at worker node ``s % workers`` (in the order of the workers' ids).
    workers : int
        The nodes Flower runs (``runtime.workers``).

    A reply timeout is a site's: a worker gets it once per site of its cohort, since it runs
    them one after another.
    """

    def __init__(self, grid: Grid, num_sites: int, workers: int) -> None:
        self.grid = grid
        self.num_sites = num_sites
        self.workers = workers

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self.grid.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self.grid.run

    def create_message(  # noqa: PLR0913 - Flower's signature
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Every site, once every worker node is up; none before."""
        up = len(list(self.grid.get_node_ids()))
        sites = range(SITE_NODE_BASE, SITE_NODE_BASE + self.num_sites)
        return list(sites) if up >= self.workers else []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError(
            "a cohort grid packs the messages of one call together: use send_and_receive"
        )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError(
            "a cohort grid packs the messages of one call together: use send_and_receive"
        )

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """The sites' replies to ``messages``, sent as one message per worker node and kind."""
        nodes = sorted(self.grid.get_node_ids())
        groups: dict[tuple[int, str], list[Message]] = {}
        for message in messages:
            site = int(message.metadata.dst_node_id) - SITE_NODE_BASE
            if not 0 <= site < self.num_sites:
                raise ValueError(
                    f"no site at node {message.metadata.dst_node_id}: this simulation's "
                    f"{self.num_sites} sites are nodes {SITE_NODE_BASE}.."
                )
            node = nodes[site % len(nodes)]
            groups.setdefault((node, message.metadata.message_type), []).append(message)
        if not groups:
            return []
        packed = [
            Message(
                pack(
                    [m.content for m in group],
                    [m.metadata.dst_node_id - SITE_NODE_BASE for m in group],
                    self.num_sites,
                ),
                dst_node_id=node,
                message_type=kind,
                group_id=group[0].metadata.group_id,
            )
            for (node, kind), group in groups.items()
        ]
        longest = max(len(group) for group in groups.values())
        replies = self.grid.send_and_receive(
            packed, timeout=None if timeout is None else timeout * longest
        )
        out = []
        for reply in replies:
            key = (int(reply.metadata.src_node_id), reply.metadata.message_type)
            if key in groups:  # a worker that timed out sends nothing: its sites have no reply
                out.extend(unpack_replies(reply, groups.pop(key)))
        return out
