"""The alerter's leader lease: who of several aggregators sends the alerts (docs/HA.md).

Pure: no I/O, no clock reads; every method takes `now` (a monotonic clock: trio's in the
shell, aggregator/scaleout/leader.py). The lease is one key in a JetStream key-value bucket
whose entries expire after the bucket's TTL unless rewritten:

- **Acquire: create-if-absent.** A follower reads the key every `poll` seconds; when it is
  absent (never written, deleted by a leader that stopped, or expired), it creates it. Of
  several followers racing, the server lets exactly one create win.
- **Renew by revision.** The leader rewrites the key every TTL/3 with the revision it last
  wrote (`update(last=revision)`): the write fails if anyone else wrote since, i.e. the key
  expired and another aggregator created it. Then the old leader is a follower at once.
- **Fencing.** The key cannot expire on the server before `sent + ttl`, `sent` being when the
  leader sent its last successful write (the server starts the TTL when it stores it, later).
  So the leader may act only while `now < sent + ttl - margin` (`may_send`); a leader that
  could not renew in time (NATS unreachable, a stall of its own) stops sending before anyone
  else can have taken over, and becomes a follower. The shell checks `may_send` before
  every notification.
- **Reclaim.** A leader that lost its connection but finds its own key still there (same
  holder and run, the revision it wrote) takes it back by revision instead of waiting for
  it to expire.

The key's value (`Holder`) names the leader: the aggregator's name, its stream origin, and a
per-run token (a restarted aggregator is another run).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LEASE_KEY", "Holder", "Lease", "LeaseOp", "Role"]

log = logging.getLogger(__name__)

#: The lease's key in the bucket.
LEASE_KEY = "alerter"


class Role(StrEnum):
    FOLLOWER = "follower"
    LEADER = "leader"


class LeaseOp(StrEnum):
    """What the shell is to do next."""

    READ = "read"  # kv_get the key, then `on_read`
    CREATE = "create"  # kv_create the key with `holder`, then `on_created`
    CLAIM = "claim"  # kv_update the key at `claim_revision` (reclaim our own), then `on_created`
    RENEW = "renew"  # kv_update the key at `revision`, then `on_renewed`
    WAIT = "wait"  # nothing to do before `next_at`


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lease (the key's JSON value)."""

    name: str
    origin: str
    run: str

    def encode(self) -> bytes:
        return json.dumps(
            {"name": self.name, "origin": self.origin, "run": self.run}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder | None:
        """None for a value that is not a holder (another program's key)."""
        try:
            doc = json.loads(data)
            return cls(str(doc["name"]), str(doc["origin"]), str(doc["run"]))
        except (ValueError, KeyError, TypeError):
            return None


class Lease:
    """The lease's state machine for one aggregator (`me`)."""

    def __init__(self, me: Holder, ttl: float, *, poll: float | None = None) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.me = me
        self.ttl = ttl
        #: The leader renews this often.
        self.renew_every = ttl / 3
        #: A follower reads the key this often (takeover within ttl + poll of a death).
        self.poll = poll if poll is not None else min(1.0, ttl / 3)
        #: `may_send` stops this long before the lease could have expired.
        self.margin = min(1.0, ttl / 10)
        self.role = Role.FOLLOWER
        self.revision: int | None = None  # of our last write, while leader
        self.valid_until = -math.inf  # the lease cannot expire before this (while leader)
        self.leader: Holder | None = None  # the holder last seen (ourselves while leader)
        self.next_at = -math.inf
        self.claim_revision: int | None = None
        self.terms = 0  # how often this aggregator became leader
        self.lost = 0  # how often it stopped being leader without stopping itself

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def may_send(self, now: float) -> bool:
        """Whether this aggregator may notify now (leader, lease surely not expired)."""
        return self.role is Role.LEADER and now < self.valid_until - self.margin

    # -- what to do --------------------------------------------------------------------------

    def step(self, now: float) -> LeaseOp:
        """The next operation at `now`; a leader past its fence steps down first."""
        if self.role is Role.LEADER and now >= self.valid_until - self.margin:
            self._step_down(now, "expired")
        if now < self.next_at:
            return LeaseOp.WAIT
        return LeaseOp.RENEW if self.role is Role.LEADER else LeaseOp.READ

    # -- what happened -----------------------------------------------------------------------

    def on_read(self, value: bytes | None, revision: int | None, now: float) -> LeaseOp:
        """The key's value and revision (None: absent); CREATE, CLAIM or WAIT follows."""
        if value is None or revision is None:
            self.leader = None
            return LeaseOp.CREATE
        holder = Holder.decode(value)
        self.leader = holder
        if holder == self.me:
            self.claim_revision = revision
            return LeaseOp.CLAIM
        self.next_at = now + self.poll
        return LeaseOp.WAIT

    def on_created(self, revision: int | None, sent_at: float, now: float) -> None:
        """The answer to CREATE or CLAIM sent at `sent_at`: our revision, or None (lost)."""
        self.claim_revision = None
        if revision is None:
            self.next_at = now  # someone else was first: read who
            return
        self.role = Role.LEADER
        self.revision = revision
        self.valid_until = sent_at + self.ttl
        self.leader = self.me
        self.terms += 1
        self.next_at = sent_at + self.renew_every
        log.info("lease_acquired holder=%s revision=%d", self.me.name, revision)
        if now >= self.valid_until - self.margin:  # the answer came too late to act on
            self._step_down(now, "late")

    def on_renewed(self, revision: int | None, sent_at: float, now: float) -> None:
        """The answer to RENEW sent at `sent_at`: the new revision, or None (someone else
        wrote the key: it had expired)."""
        if self.role is not Role.LEADER:
            return
        if revision is None:
            self._step_down(now, "taken")
            return
        self.revision = revision
        self.valid_until = sent_at + self.ttl
        self.next_at = sent_at + self.renew_every
        if now >= self.valid_until - self.margin:
            self._step_down(now, "late")

    def on_unavailable(self, now: float) -> None:
        """NATS did not answer: try again soon; a leader keeps its role until its fence."""
        self.next_at = now + min(self.poll, self.renew_every)
        if self.role is Role.LEADER and now >= self.valid_until - self.margin:
            self._step_down(now, "unavailable")

    def on_stop(self) -> None:
        """This aggregator stops (it deletes its key when leader): never send again."""
        self.role = Role.FOLLOWER
        self.valid_until = -math.inf
        self.revision = None

    def _step_down(self, now: float, why: str) -> None:
        self.role = Role.FOLLOWER
        self.valid_until = -math.inf
        self.revision = None
        self.lost += 1
        self.leader = None  # unknown until the next read
        self.next_at = now
        log.warning("lease_lost holder=%s reason=%s", self.me.name, why)
