"""The deployed model's side: the entry point a CML model deployment calls (``endpoint``:
request parsing, model loading and scoring) and the compiled ONNX path that answers a request
in about a millisecond (``compiled``). Uses ``core``, ``training`` and, for its build check's
example customers, ``loop``."""
