"""The serving policy: which model decides for a customer (its *arm*) and which offer is made,
with the exact probability of that offer (its *propensity*).

The rule, per customer (``docs/deploy.md``, *The policy*):

1. **Arm.** With a challenger at share ``s`` (0 < s < 1): a customer with a ``customer_id`` is
   in the challenger arm when ``u = blake2b(test_id, customer_id) -> [0, 1)`` is below ``s``
   (:func:`arm_hash`): sticky for the test's life, the same in every request, replica and
   process (a hash, never the random generator); a customer without an id gets a fresh
   uniform draw per request. Without a challenger every customer is in the champion arm.
2. **Greedy pick.** The arm's model scores the three offers; its next best offer is the argmax
   of the expected values (ties to the first offer in ``OFFERS`` order), as today.
3. **Exploration.** With probability ``epsilon`` the offer made is drawn uniformly from the
   three offers (it may be the greedy pick), else it is the greedy pick. So, given the arm,
   ``P(offer | customer, arm) = (1 - epsilon) * [offer == greedy pick] + epsilon / 3``
   (:func:`offer_propensities`); the three sum to 1. The closed loop's caller logs the offer
   made and this propensity as the endpoint answers them (``loop.interactions``).

Randomness comes from one ``numpy.random.Generator`` per :class:`Policy` (one per replica
process), seedable for tests, drawn under a lock; with no challenger and ``epsilon = 0`` nothing
is drawn and every answer is the champion's greedy pick with propensity 1.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np

from factory_tasks.core.schema import ARM_CHALLENGER as CHALLENGER
from factory_tasks.core.schema import ARM_CHAMPION as CHAMPION
from factory_tasks.core.schema import ARMS, OFFERS, epsilon_greedy_propensities

__all__ = ["ARMS", "CHALLENGER", "CHAMPION", "Policy", "PolicyDraws", "arm_hash", "offer_propensities"]

#: the longest test id (it salts the sticky hash)
TEST_ID_MAX_LENGTH = 128
_N_OFFERS = len(OFFERS)
_TWO_TO_MINUS_53 = 2.0 ** -53


def arm_hash(test_id: str, customer_id: str) -> float:
    """A customer's stable uniform number in ``[0, 1)`` for a test: the first 53 bits of
    ``blake2b(test_id NUL customer_id)`` (UTF-8), so it is the same in every process."""
    digest = hashlib.blake2b(f"{test_id}\x00{customer_id}".encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * _TWO_TO_MINUS_53


#: ``(n, 3)`` P(each offer is made | customer, arm) given each customer's greedy pick
offer_propensities = epsilon_greedy_propensities


@dataclass(frozen=True)
class PolicyDraws:
    """What the policy decided for a batch before scoring: each customer's arm (1 = challenger)
    and, for ``epsilon > 0``, whether it explores and the uniform offer index it would make."""

    challenger: np.ndarray  # bool (n,)
    explored: np.ndarray  # bool (n,)
    random_offer: np.ndarray  # int64 (n,), used where explored


class Policy:
    """Champion, optional challenger share, epsilon-exploration on top (see the module doc).

    ``challenger_share`` is the share of customers whose offer the challenger decides
    (0 = no challenger arm); ``test_id`` salts the sticky hash (a new test, a new split).
    ``seed`` seeds the process's generator (None: fresh entropy).
    """

    def __init__(self, *, challenger_share: float = 0.0, epsilon: float = 0.0, test_id: str = "",
                 seed: int | None = None):
        for name, value in (("challenger_share", challenger_share), ("epsilon", epsilon)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be a number with 0 <= {name} < 1, got {value!r}")
        if challenger_share > 0 and not test_id:
            raise ValueError("a challenger share needs a test id (it salts the sticky arm hash)")
        self.challenger_share = float(challenger_share)
        self.epsilon = float(epsilon)
        self.test_id = test_id
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    @property
    def draws_nothing(self) -> bool:
        """No challenger and no exploration: every answer is the champion's greedy pick."""
        return self.challenger_share == 0.0 and self.epsilon == 0.0

    def describe(self) -> dict[str, object]:
        return {"test_id": self.test_id or None, "challenger_share": self.challenger_share, "epsilon": self.epsilon}

    def draw(self, customer_ids: list[str | None]) -> PolicyDraws:
        """The arms (hash of the id, or a uniform draw without one) and the exploration draws
        of a batch, in request order."""
        n = len(customer_ids)
        share, epsilon = self.challenger_share, self.epsilon
        challenger = np.zeros(n, dtype=bool)
        if share > 0.0:
            anonymous = [i for i, cid in enumerate(customer_ids) if cid is None]
            for i, cid in enumerate(customer_ids):
                if cid is not None:
                    challenger[i] = arm_hash(self.test_id, cid) < share
        else:
            anonymous = []
        if epsilon == 0.0 and not anonymous:
            return PolicyDraws(challenger, np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64))
        with self._lock:  # one generator call per request: (arm, explore, offer) uniforms per customer
            u = self._rng.random((n, 3))
        if anonymous:
            challenger[anonymous] = u[anonymous, 0] < share
        # floor(3u) of a 53-bit uniform: each offer with probability 1/3 within 2**-53
        random_offer = (u[:, 2] * _N_OFFERS).astype(np.int64)
        return PolicyDraws(challenger, u[:, 1] < epsilon, random_offer)

    def decide(self, greedy: np.ndarray, draws: PolicyDraws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offer made (n,), its propensity (n,), all three propensities (n, 3)) given each
        customer's greedy pick under its arm's model."""
        greedy = np.asarray(greedy, dtype=np.int64)
        made = np.where(draws.explored, draws.random_offer, greedy)
        every = offer_propensities(greedy, self.epsilon)
        return made, every[np.arange(len(made)), made], every
