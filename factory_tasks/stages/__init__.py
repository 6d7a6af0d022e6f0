"""The stages the DAG tasks call, and the only layer handed a CML client: planning and
collecting the experiment fan-out (``model_factory``, ``fanout``, ``collect``) and the deploy
path (``deploy``). Each stage is a plain function of its inputs and a client typed by the
``Protocol`` of the calls it makes; ``dags/`` wires them to Airflow and ``cml_provider``."""
