"""The deployed model's side: the entry point a CML model deployment calls (``endpoint``), the
request contract (``requests``), scoring (``scoring``), the serving policy — champion, sticky
challenger share, epsilon-exploration, exact propensities (``policy``) — loading the models'
files, the policy's configuration and choosing the scorer (``loading``), and the compiled ONNX
path that answers a request in about a millisecond (``compiled``). Uses ``core``, ``training``
and, for its build check's example customers, ``loop``."""
