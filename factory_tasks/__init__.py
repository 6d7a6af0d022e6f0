"""Model Factory tasks: plain Python, no Airflow. Each module is one stage of the factory."""

__version__ = "0.1.0"
