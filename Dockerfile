# One image for every Airflow component, the local CML workspace and the dashboards.
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
USER airflow

WORKDIR /opt/model-factory
COPY --chown=airflow:root setup.cfg pyproject.toml constraints.txt README.md ./
COPY --chown=airflow:root factory_tasks ./factory_tasks
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root cml_workspace ./cml_workspace
COPY --chown=airflow:root stack ./stack
COPY --chown=airflow:root dashboards ./dashboards
RUN pip install --no-cache-dir -c constraints.txt -e .
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root jobs ./jobs
COPY --chown=airflow:root config ./config
