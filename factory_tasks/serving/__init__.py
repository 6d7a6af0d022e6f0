"""The deployed model's side: the entry point a CML model deployment calls (``endpoint``), the
request contract (``requests``), scoring (``scoring``), loading the model's files and choosing
the scorer (``loading``), and the compiled ONNX path that answers a request in about a
millisecond (``compiled``). Uses ``core``, ``training`` and, for its build check's example
customers, ``loop``."""
