"""The closed loop after deployment: the simulated customers and their delayed responses
(``simulator``, ``history``, ``interactions``, ``responses``), the loop's config, monitoring
(aggregate metrics, drift, off-policy value, performance estimates), its alerts, and the choice
of the model to deploy (``selection``). Uses ``core``, ``training`` and ``warehouse``."""
