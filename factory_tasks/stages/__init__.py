"""The stages the DAG tasks call, and the only layer handed a CML client: planning and
collecting the experiment fan-out (``model_factory``, ``fanout``, ``collect``), the deploy path
(``deploy``), the closed loop's traffic window (``interactions``), monitoring (``monitoring``)
and the experiments summary (``summary``). Each stage is a plain function of its inputs and a
client typed by the ``Protocol`` of the calls it makes (``cml_client``); ``errors`` says which
failures are the input's fault. ``dags/`` imports only these (and ``core``) and wires them to
Airflow and ``cml_provider``."""
