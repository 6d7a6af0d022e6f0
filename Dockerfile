# One image for every Airflow component, the Celery workers, the local CML workspace and the
# dashboards. The Airflow image's version is the apache-airflow pin of constraints.txt.
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/model-factory/var \
 && chown -R airflow:root /opt/model-factory
USER airflow

# /opt/model-factory is airflow's (pip install -e writes the egg-info there), and so is var/,
# which the compose file mounts the factory-var volume on (a new volume takes its owner).
WORKDIR /opt/model-factory
COPY --chown=airflow:root setup.cfg pyproject.toml constraints.txt README.md ./
COPY --chown=airflow:root factory_tasks ./factory_tasks
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root local ./local
COPY --chown=airflow:root dashboards ./dashboards
# The project, plus what docker-compose.yaml's services need: the Celery provider with Celery's
# Redis transport (CeleryExecutor, the Redis broker, Flower) and psycopg2 (the PostgreSQL
# metadata DB and Celery result backend). Every one of them is pinned in constraints.txt.
RUN pip install --no-cache-dir -c constraints.txt -e . \
      "apache-airflow-providers-celery==3.26.0" "celery[redis]==5.6.3" "flower==2.2.0" \
      "redis==6.4.0" "psycopg2-binary==2.9.13"
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root jobs ./jobs
COPY --chown=airflow:root config ./config
