"""The closed loop after deployment: the simulated customers and their delayed responses
(``simulator``, ``history``, ``interactions``, ``responses``), the loop's config, monitoring
(a run's ``windows`` and ``cohorts``, then aggregate metrics, drift, off-policy value and
performance estimates in ``monitoring``), its alerts, and the choice of the model to deploy
(``selection``). Uses ``core``, ``training`` and ``warehouse``."""
