"""The experiments explorer: data store (store.py), views (views.py); app in dashboards/experiments_app.py."""
