"""The experiments explorer: data store (store.py), views (views/), the warehouse it records
promotions in (warehouse.py); app in dashboards/experiments_app.py."""
