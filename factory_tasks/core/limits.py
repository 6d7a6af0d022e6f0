"""Bounds of the numbers a factory run can be given. The DAGs' Param schemas and the stages
that use each value declare the same range, so a trigger with an absurd value is refused when
it is made (and by the stage, for a caller that skips the schema) instead of overflowing deep
inside a task."""

from __future__ import annotations

#: experiments in flight at once (the grid's ``max_parallel`` and the DAG param)
MAX_PARALLEL = 1000
#: how long reviewers may take to pick an experiment: one week
MAX_REVIEW_WINDOW_MINUTES = 7 * 24 * 60
#: the gate's margins, in the ranking metric's units or money per customer
MAX_MARGIN = 1000.0
#: a deployment's replicas, and each replica's vCPU and memory
MAX_REPLICAS = 100
MAX_REPLICA_CPU = 64.0
MAX_REPLICA_MEMORY_GB = 512.0
#: the deployment's exploration (share of customers offered a uniformly random offer): above a
#: half, most customers would get random offers (the endpoint itself accepts up to < 1)
MAX_EXPLORATION_EPSILON = 0.5
#: an A/B test's challenger share: the challenger decides for at most half of the customers
#: until the test promotes it (a riskier split is a deploy, through the gate)
MAX_CHALLENGER_SHARE = 0.5
